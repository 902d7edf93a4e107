"""Atelier's own routes for the standard models it can download (nothing downloads by itself):
``GET /sdapi/v1/downloadable-models`` and ``POST /sdapi/v1/download-model`` (``{"name": ...}``), and
``POST /sdapi/v1/download-component`` (``{"component": "tokenizer:t5xxl"}``): the part a checkpoint's
load error (``MissingComponentError``) names as downloadable."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from modules.api.convert import parse_body
from modules.server_effects import changes_server
from modules.services.model_downloads import ModelFetcher
from modules.services.tokenizer_downloads import TokenizerFetcher

JsonBody = Callable[[Request], Awaitable[Any]]


class DownloadBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str


class ComponentBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    component: str


def model_items(fetcher: ModelFetcher) -> list[dict[str, Any]]:
    """Every model Atelier can download: where it goes, where from, its hash, whether it is there."""
    return [{"name": m.name, "kind": m.kind, "filename": m.filename, "folder": m.folder, "url": m.url,
             "sha256": m.sha256, "size": m.size, "installed": fetcher.installed(m)} for m in fetcher.known]


def register(r: APIRouter, fetcher: ModelFetcher, json_body: JsonBody,
             tokenizers: TokenizerFetcher | None = None) -> None:
    r.get("/downloadable-models")(lambda: model_items(fetcher))

    @r.post("/download-model")
    @changes_server  # a file in the models folder, for everyone
    async def download_model(request: Request) -> dict[str, Any]:
        """Download a standard model (checked against its SHA-256); answers when it is in place."""
        body = parse_body(DownloadBody, await json_body(request))
        model = fetcher.require(body.name)
        path = await asyncio.to_thread(fetcher.download, model.name)
        return {"name": model.name, "path": str(path), "sha256": model.sha256}

    if tokenizers is None:
        return

    @r.post("/download-component")
    @changes_server  # a folder in the models folder, for everyone
    async def download_component(request: Request) -> dict[str, Any]:
        """Download a part a checkpoint needs (a T5 / LLM tokenizer), checked against the hub's hashes."""
        body = parse_body(ComponentBody, await json_body(request))
        source = tokenizers.require(body.component)
        path = await asyncio.to_thread(tokenizers.download, body.component)
        return {"component": f"tokenizer:{source.name}", "path": str(path), "repo_id": source.repo_id}
