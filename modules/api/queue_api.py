"""The studio's queue routes, ``/sdapi/v1/queue``: the line of jobs, the history, and jobs queued
without waiting for them (docs/api-queue.md lists every route).

Everything goes through :class:`modules.services.queue_view.QueueView` for the caller as the request
guard identified them, so the rules live in one place: everyone sees the whole line (owner, state,
place, ETA) but another user's job has no id or prompt, and asking for it by id is a 404, never a
403. Moving a job is an admin's (the route is marked as changing the server, so the guard refuses
a user, and the view refuses one too). This module also holds what the agent-scheduler routes
share with it: the caller's identity, queuing a body, and a stored request in A1111's field names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request

from modules.api import schemas
from modules.api.convert import parse_body
from modules.cmd_args import Flags
from modules.errors import FieldError, JobNotFoundError, ValidationError
from modules.identity import Identity, identity_from
from modules.params import GenerationRequest, MaskedContent, ResizeMode
from modules.server_effects import changes_server, deletes_own_files
from modules.services.container import Services
from modules.services.job_store import StoredJob
from modules.services.queue_view import HistoryEntry, QueueEntry, QueueView

PREFIX = "/sdapi/v1/queue"
HISTORY_PAGE = 500  # the most history items one request returns

# How a generation body becomes a request (routes.ApiFace.prepare_body), and how a JSON body is read.
Prepare = Callable[[object, type[schemas.Txt2ImgBody]], Awaitable[tuple[schemas.Txt2ImgBody, GenerationRequest]]]
JsonBody = Callable[..., Awaitable[Any]]

# Request fields whose value A1111's body carries unchanged under another name.
_A1111_NAMES: Mapping[str, str] = {
    "sampler": "sampler_name", "batch_count": "n_iter", "variation_seed": "subseed",
    "variation_strength": "subseed_strength", "seed_resize_from_width": "seed_resize_from_w",
    "seed_resize_from_height": "seed_resize_from_h", "extension_params": "alwayson_scripts",
    "only_masked_padding": "inpaint_full_res_padding", "checkpoint": "sd_model_checkpoint",
}
# Fields that describe how the job was run, not what was asked: left out of ``parameters``.
_INTERNAL = frozenset({"init_image", "mask", "owner", "job_id", "server_defaults", "per_image", "part_of",
                       "applied_styles", "hires", "refiner", "schedule", "masked_content", "resize_mode",
                       "invert_mask", "inpaint_only_masked"})


def viewer_of(request: Request) -> Identity | None:
    """Who is asking, as the request guard recorded it (None: a server without sign-in)."""
    state = request.state
    return identity_from(getattr(state, "atelier_user", None), getattr(state, "atelier_role", None))


async def queued_request(prepare: Prepare, data: object, body_type: type[schemas.Txt2ImgBody]) -> GenerationRequest:
    """A txt2img/img2img body as a job to queue and come back for: its images are always saved (the
    history lists them). A script (``script_name``) and overrides that are to stay the server's
    settings run only through the waiting routes, so queuing never changes the server."""
    body = parse_body(body_type, data)
    if body.script_name and body.script_name.strip().lower() not in ("", "none"):
        raise ValidationError([FieldError("script_name", "scripts are not queued; send the job to "
                                                         "POST /sdapi/v1/txt2img or /img2img")])
    if body.override_settings and body.override_settings_restore_afterwards is False:
        raise ValidationError([FieldError("override_settings_restore_afterwards", "false is not queued (it changes "
                                          "the server's settings); use POST /sdapi/v1/options")])
    _body, generation = await prepare(data, body_type)
    return replace(generation, save_images=True)


def position_of(view: QueueView, viewer: Identity | None, job_id: str) -> int:
    """The job's place in line (0: running or already over)."""
    try:
        entry = view.entry(viewer, job_id)
    except JobNotFoundError:
        return 0
    return entry.position if isinstance(entry, QueueEntry) else 0


def a1111_parameters(request: GenerationRequest) -> dict[str, Any]:
    """A stored request as A1111's body names it where A1111 has the field (the rest under
    Atelier's own names); input images are left out."""
    params: dict[str, Any] = {}
    for item in dataclasses.fields(request):
        if item.name not in _INTERNAL:
            params[_A1111_NAMES.get(item.name, item.name)] = _plain(getattr(request, item.name))
    params["scheduler"] = request.schedule.api_name
    params["styles"] = list(request.applied_styles or request.styles)
    if request.is_img2img:
        params.update(resize_mode=list(ResizeMode).index(request.resize_mode),
                      inpainting_fill=list(MaskedContent).index(request.masked_content),
                      inpainting_mask_invert=int(request.invert_mask), inpaint_full_res=request.inpaint_only_masked,
                      has_mask=request.mask is not None)
    hires = request.hires
    params["enable_hr"] = hires is not None
    if hires is not None:
        params.update(hr_scale=hires.scale, hr_resize_x=hires.resize_width, hr_resize_y=hires.resize_height,
                      hr_upscaler=hires.upscaler, hr_second_pass_steps=hires.steps,
                      denoising_strength=hires.denoising_strength, hr_sampler_name=hires.sampler,
                      hr_scheduler=hires.schedule.api_name if hires.schedule else None,
                      hr_prompt=hires.prompt, hr_negative_prompt=hires.negative_prompt)
    if request.refiner is not None:
        params.update(refiner_checkpoint=request.refiner.checkpoint, refiner_switch_at=request.refiner.switch_at)
    return params


def _plain(value: object) -> Any:
    """A request value as JSON can hold it."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (bytes, bytearray)):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


@dataclasses.dataclass(frozen=True)
class FileLinks:
    """Where saved files are shown: paths relative to the outputs folder, and the UI's file route."""

    outputs_dir: Path
    ui_prefix: str | None  # the UI's path (--subpath) when the UI is served; None without it

    def relative(self, path: Path) -> str | None:
        try:
            return path.resolve().relative_to(self.outputs_dir.resolve()).as_posix()
        except (OSError, ValueError):
            return None  # not inside the outputs folder: neither named nor linked

    def url(self, path: Path) -> str | None:
        if self.ui_prefix is None or self.relative(path) is None:
            return None
        return f"{self.ui_prefix}/gradio_api/file={quote(str(path.resolve()), safe='/:')}"


def links_for(services: Services, flags: Flags) -> FileLinks:
    return FileLinks(services.paths.outputs_dir, None if flags.nowebui else flags.subpath)


def history_item(job: StoredJob, links: FileLinks) -> dict[str, Any]:
    """One ended job as the history routes show it to its owner or an admin."""
    images = [{"path": rel, "seed": f.seed, "index": f.index, "kind": f.kind, "url": links.url(f.path)}
              for f in job.files if (rel := links.relative(f.path)) is not None]
    return {"id": job.id, "owner": job.owner, "state": job.state.value, "kind": job.kind,
            "prompt": job.request.prompt, "negative_prompt": job.request.negative_prompt,
            "submitted_at": job.submitted_at, "started_at": job.started_at, "finished_at": job.finished_at,
            "error": job.error, "infotext": job.infotext, "images": images,
            "parameters": a1111_parameters(job.request)}


def entry_item(entry: QueueEntry | HistoryEntry, links: FileLinks) -> dict[str, Any]:
    return dataclasses.asdict(entry) if isinstance(entry, QueueEntry) else history_item(entry.job, links)


def _int_param(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise ValidationError([FieldError(name, f"must be a whole number from {low} to {high}")])
    return number


def router(services: Services, flags: Flags, prepare: Prepare, json_body: JsonBody) -> APIRouter:
    """The queue routes, over ``services.queue_view``."""
    r = APIRouter(prefix=PREFIX, tags=["queue"])
    links = links_for(services, flags)

    def view() -> QueueView:
        return services.queue_view

    @r.get("")
    def queue(request: Request) -> dict[str, Any]:
        """Every job in line: running ones, then waiting ones in the order they will start."""
        entries = view().entries(viewer_of(request))
        return {"running": [dataclasses.asdict(e) for e in entries if e.state == "running"],
                "pending": [dataclasses.asdict(e) for e in entries if e.state != "running"],
                "total_pending": sum(1 for e in entries if e.state != "running")}

    async def submit(request: Request, body_type: type[schemas.Txt2ImgBody]) -> dict[str, Any]:
        generation = await queued_request(prepare, await json_body(request, required=True), body_type)
        viewer = viewer_of(request)
        # Off the event loop: preparing decodes images, and the store writes the job before it is accepted.
        job = await asyncio.to_thread(view().submit, viewer, generation)
        return {"id": job.id, "position": await asyncio.to_thread(position_of, view(), viewer, job.id)}

    @r.post("/txt2img")
    async def queue_txt2img(request: Request) -> dict[str, Any]:
        """Queue a txt2img job (the body of POST /sdapi/v1/txt2img); answers at once with its id."""
        return await submit(request, schemas.Txt2ImgBody)

    @r.post("/img2img")
    async def queue_img2img(request: Request) -> dict[str, Any]:
        """Queue an img2img job (the body of POST /sdapi/v1/img2img); answers at once with its id."""
        return await submit(request, schemas.Img2ImgBody)

    _register_history(r, view, links)

    @r.get("/{job_id}")
    def job(request: Request, job_id: str) -> dict[str, Any]:
        """A job in line (its queue entry) or over (its history item)."""
        return entry_item(view().entry(viewer_of(request), job_id), links)

    @r.post("/{job_id}/cancel")
    def cancel(request: Request, job_id: str) -> dict[str, Any]:
        """A waiting job ends unrun; a running one is interrupted."""
        view().cancel(viewer_of(request), job_id)
        return {"id": job_id, "cancelled": True}

    @r.post("/{job_id}/move")
    @changes_server  # an admin's: the guard refuses users, and so does the view
    async def move(request: Request, job_id: str) -> dict[str, Any]:
        """Put a waiting job at ``position`` (1: next)."""
        data = await json_body(request, required=True)
        position = data.get("position") if isinstance(data, dict) else None  # the view judges it
        viewer = viewer_of(request)
        await asyncio.to_thread(view().move, viewer, job_id, position)
        return {"id": job_id, "position": await asyncio.to_thread(position_of, view(), viewer, job_id)}

    return r


def _register_history(r: APIRouter, view: Callable[[], QueueView], links: FileLinks) -> None:
    """The history routes (declared before ``/{job_id}``, which would take ``history`` for an id)."""

    @r.get("/history")
    def history(request: Request, search: str = "", limit: str | None = None,
                offset: str | None = None) -> dict[str, Any]:
        """The caller's ended jobs (an admin's: everyone's), newest first; ``search`` in the prompts."""
        count = _int_param(limit, "limit", 50, 1, HISTORY_PAGE)
        start = _int_param(offset, "offset", 0, 0, 10**9)
        items, total = view().history(viewer_of(request), search[:500], count, start)
        return {"items": [history_item(e.job, links) for e in items], "total": total}

    @r.delete("/history/{job_id}")
    @deletes_own_files  # a user's own; without any sign-in, not from the network
    def delete(request: Request, job_id: str) -> dict[str, Any]:
        """Forget an ended job and delete its files (those inside the outputs folder)."""
        return {"id": job_id, "files_deleted": view().delete(viewer_of(request), job_id)}

    @r.post("/history/{job_id}/run-again")
    def run_again(request: Request, job_id: str) -> dict[str, Any]:
        """Queue the job's request again, as the caller's job."""
        viewer = viewer_of(request)
        job = view().run_again(viewer, job_id)
        return {"id": job.id, "position": position_of(view(), viewer, job.id)}
