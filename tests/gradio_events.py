"""Driving the UI's events the way a browser (or an attacker) does, over Gradio's own protocol:
POST ``gradio_api/queue/join`` with a function index, then read the event's messages from
``gradio_api/queue/data``; and walking every route the app serves."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from starlette.routing import Mount


def fn_indexes(blocks: Any, qualname: str) -> list[int]:
    """The function indexes of every event whose handler is ``module:qualname`` (tabs repeat them)."""
    found = [i for i, f in blocks.fns.items() if f"{f.fn.__module__}:{f.fn.__qualname__}" == qualname]
    assert found, f"no UI event runs {qualname}"
    return found


def event_name(block_fn: Any) -> str:
    return f"{block_fn.fn.__module__}:{block_fn.fn.__qualname__}"


def join(client: httpx.Client, fn_index: int, data: list[Any], session_hash: str | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash or uuid.uuid4().hex,
            "event_data": None, "trigger_id": None}
    return client.post("/gradio_api/queue/join", json=body, headers=headers or {})


def run_event(client: httpx.Client, fn_index: int, data: list[Any], headers: dict[str, str] | None = None) -> dict:
    """Run one event to its end; the ``process_completed`` message (``success``, ``output``)."""
    session = uuid.uuid4().hex
    joined = join(client, fn_index, data, session, headers)
    assert joined.status_code == 200, joined.text
    with client.stream("GET", f"/gradio_api/queue/data?session_hash={session}", headers=headers or {}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("the event never completed")


def upload(client: httpx.Client, content: bytes, name: str, headers: dict[str, str] | None = None) -> str:
    """Upload a file as the browser does; the server-side path it was stored under."""
    reply = client.post("/gradio_api/upload", files={"files": (name, content)}, headers=headers or {})
    assert reply.status_code == 200, reply.text
    return reply.json()[0]


def file_data(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def routes_of(routes: list, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every route, through FastAPI's included routers and mounted apps."""
    for route in routes:
        if hasattr(route, "original_router"):  # FastAPI's included routers
            yield from routes_of(route.original_router.routes, prefix)
        elif isinstance(route, Mount):
            yield from routes_of(route.routes, prefix + route.path)
        else:
            for method in sorted(getattr(route, "methods", None) or {"GET"}):
                if method != "HEAD":
                    yield method, prefix + route.path
