"""The sd-webui-agent-scheduler extension's API, ``/agent-scheduler/v1``, over the studio's queue.

Scripts written for that extension queue jobs, poll them and fetch their images here unchanged:
its paths, field names (``task_id``, ``pending_tasks``, ``total_pending_tasks``...) and status
strings (pending, running, done, failed, interrupted), its ``{"success", "data"|"message"}``
envelope. Everything goes through :class:`modules.services.queue_view.QueueView` for the caller,
so the studio's rules hold: another user's task is "not found" (404) and never listed, moving a
task is an admin's. What the extension has and this does not serve (callbacks, pause, bookmarks,
renames, import/export, clearing) is listed in docs/api-queue.md.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import mimetypes
import zipfile
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

from modules.api import schemas
from modules.api.queue_api import FileLinks, JsonBody, Prepare, a1111_parameters, links_for, queued_request, viewer_of
from modules.cmd_args import Flags
from modules.errors import FieldError, JobNotFoundError, ValidationError
from modules.identity import Identity
from modules.params import GenerationRequest
from modules.samplers import SAMPLERS
from modules.server_effects import changes_server, deletes_own_files
from modules.services.container import Services
from modules.services.images import infotext_of
from modules.services.job_store import StoredJob, StoredState
from modules.services.queue_view import HistoryEntry, QueueEntry, QueueView

PREFIX = "/agent-scheduler/v1"
HISTORY_SCAN = 1000  # a status filter looks through this many of the newest history items
_STATUS = {StoredState.QUEUED: "pending", StoredState.RUNNING: "running", StoredState.FINISHED: "done",
           StoredState.FAILED: "failed", StoredState.INTERRUPTED: "interrupted",
           StoredState.CANCELLED: "interrupted"}  # the extension has no "cancelled": it ended unfinished
_DROPPED = ("alwayson_scripts", "script_args", "init_images", "mask")  # as the extension leaves them out
_GENERATION = frozenset({"txt2img", "img2img", "inpaint"})
NOT_FOUND = {"success": False, "message": "Task not found"}


def _millis(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


def _params(request: GenerationRequest) -> dict[str, Any]:
    params = {k: v for k, v in a1111_parameters(request).items() if k not in _DROPPED}
    params["checkpoint"] = request.checkpoint
    return params


def _task(job_id: str, kind: str, status: str, request: GenerationRequest, submitted: float, updated: float | None,
          position: int | None, result: str | None, stamp: Callable[[float | None], Any]) -> dict[str, Any]:
    """The extension's TaskModel."""
    return {"id": job_id, "api_task_id": None, "api_task_callback": None, "name": None,
            "type": "txt2img" if kind == "txt2img" else "img2img", "status": status, "params": _params(request),
            "priority": _millis(submitted), "position": position, "result": result, "bookmarked": False,
            "created_at": stamp(submitted), "updated_at": stamp(updated if updated is not None else submitted)}


def _result(job: StoredJob, links: FileLinks) -> str | None:
    """The task's ``result`` text: the saved images (done) or the error (failed)."""
    if job.state is StoredState.FINISHED:
        return json.dumps({"images": [p for f in _images(job) if (p := links.relative(f.path)) is not None]})
    return job.error


def _images(job: StoredJob) -> list[Any]:
    """The job's saved files, images in order, then the grid (as the extension lists what was saved)."""
    return sorted(job.files, key=lambda f: (f.index < 0, f.index))


def _stored_task(job: StoredJob, links: FileLinks, stamp: Callable[[float | None], Any]) -> dict[str, Any]:
    return _task(job.id, job.kind, _STATUS[job.state], job.request, job.submitted_at,
                 job.finished_at or job.started_at, None, _result(job, links), stamp)


def _line_task(view: QueueView, viewer: Identity | None, entry: QueueEntry,
               stamp: Callable[[float | None], Any]) -> dict[str, Any]:
    assert entry.id is not None
    return _task(entry.id, entry.kind, "running" if entry.state == "running" else "pending",
                 view.request_of(viewer, entry.id), entry.submitted_at, entry.started_at, entry.position, None, stamp)


def _task_of(view: QueueView, viewer: Identity | None, task_id: str, links: FileLinks,
             stamp: Callable[[float | None], Any]) -> dict[str, Any]:
    entry = view.entry(viewer, task_id)
    if isinstance(entry, HistoryEntry):
        return _stored_task(entry.job, links, stamp)
    return _line_task(view, viewer, entry, stamp)


def _data_url(path: Path) -> str:
    kind = mimetypes.guess_type(path.name)[0] or "image/png"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _infotext(path: Path) -> str:
    try:
        with Image.open(path) as image:
            return infotext_of(image) or ""
    except OSError:
        return ""


def _results(job: StoredJob, links: FileLinks, as_zip: bool) -> Any:
    if job.state is not StoredState.FINISHED:
        return {"success": False, "message": f"Task is {_STATUS[job.state]}"}
    files = [f.path for f in _images(job) if links.relative(f.path) is not None and f.path.is_file()]
    if not as_zip:
        return {"success": True, "data": [{"image": _data_url(p), "infotext": _infotext(p)} for p in files]}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in files:
            archive.write(path, path.name)
    return Response(buffer.getvalue(), media_type="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="results-{job.id}.zip"'})


def _history(view: QueueView, viewer: Identity | None, status: str | None, limit: int,
             offset: int) -> tuple[list[StoredJob], int]:
    if status == "bookmarked":
        return [], 0  # no bookmarks here
    if not status or status == "all":
        items, total = view.history(viewer, "", limit, offset)
        return [e.job for e in items], total
    items, _total = view.history(viewer, "", HISTORY_SCAN, 0)
    matching = [e.job for e in items if _STATUS[e.job.state] == status]
    return matching[offset:offset + limit], len(matching)


def _paging(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= 1000 or offset < 0:
        raise ValidationError([FieldError("limit", "limit must be 1-1000 and offset 0 or more")])
    return limit, offset


async def _queue(services: Services, prepare: Prepare, json_body: JsonBody, request: Request,
                 body_type: type[schemas.Txt2ImgBody]) -> dict[str, Any]:
    """Queue a body with the extension's extra fields: ``checkpoint`` and ``vae`` (this job's)."""
    data = await json_body(request, required=True)
    extra: dict[str, Any] = {}
    if isinstance(data, dict):
        data = dict(data)
        extra = {name: data.pop(name, None) for name in ("checkpoint", "vae", "callback_url")}
    if extra.get("callback_url"):
        raise ValidationError([FieldError("callback_url", "callbacks are not supported; poll "
                                                          "GET /agent-scheduler/v1/task/{id} instead")])
    generation = await queued_request(prepare, data, body_type)
    for name in ("checkpoint", "vae"):
        value = extra.get(name)
        if value is not None and not isinstance(value, str):
            raise ValidationError([FieldError(name, "must be a string")])
        if value and value.strip():
            generation = replace(generation, **{name: value.strip()})
    job = await asyncio.to_thread(services.queue_view.submit, viewer_of(request), generation)
    return {"task_id": job.id}


def router(services: Services, flags: Flags, prepare: Prepare, json_body: JsonBody) -> APIRouter:
    r = APIRouter(prefix=PREFIX, tags=["agent-scheduler"])
    links = links_for(services, flags)

    def view() -> QueueView:
        return services.queue_view

    r.get("/samplers")(lambda: [s.name for s in SAMPLERS])
    r.get("/sd-models")(lambda: [c.title for c in services.registry.all()] + services.remote.titles())

    @r.post("/queue/txt2img")
    async def queue_txt2img(request: Request) -> dict[str, Any]:
        return await _queue(services, prepare, json_body, request, schemas.Txt2ImgBody)

    @r.post("/queue/img2img")
    async def queue_img2img(request: Request) -> dict[str, Any]:
        return await _queue(services, prepare, json_body, request, schemas.Img2ImgBody)

    @r.get("/queue")
    def queue(request: Request, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        """The caller's tasks in line (an admin's: all), with their places in the whole line."""
        limit, offset = _paging(limit, offset)
        viewer = viewer_of(request)
        entries = [e for e in view().entries(viewer) if e.kind in _GENERATION]  # not model loads, Extras jobs
        running = next((e.id for e in entries if e.state == "running" and e.id is not None), None)
        visible = [e for e in entries if e.id is not None][offset:offset + limit]
        return {"current_task_id": running, "pending_tasks": [_line_task(view(), viewer, e, _millis) for e in visible],
                "total_pending_tasks": len(entries), "paused": False}

    @r.get("/history")
    def history(request: Request, status: str | None = None, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        limit, offset = _paging(limit, offset)
        jobs, total = _history(view(), viewer_of(request), status, limit, offset)
        return {"tasks": [_stored_task(j, links, _millis) for j in jobs], "total": total}

    _register_task(r, view, links)
    return r


def _register_task(r: APIRouter, view: Callable[[], QueueView], links: FileLinks) -> None:
    """One task's routes; a task the caller may not see is not found (404)."""

    def found(call: Callable[[], Any]) -> Any:
        try:
            return call()
        except JobNotFoundError:
            return JSONResponse(NOT_FOUND, status_code=404)

    @r.get("/task/{task_id}")
    def task(request: Request, task_id: str) -> Any:
        return found(lambda: {"success": True, "data": _task_of(view(), viewer_of(request), task_id, links, _iso)})

    @r.get("/task/{task_id}/position")
    def position(request: Request, task_id: str) -> Any:
        def answer() -> dict[str, Any]:
            data = _task_of(view(), viewer_of(request), task_id, links, _iso)
            return {"success": True, "data": {"status": data["status"], "position": data["position"]}}
        return found(answer)

    @r.get("/task/{task_id}/results")
    def results(request: Request, task_id: str, zip: bool = False) -> Any:
        def answer() -> Any:
            entry = view().entry(viewer_of(request), task_id)
            if isinstance(entry, QueueEntry):
                return {"success": False, "message": f"Task is {'running' if entry.state == 'running' else 'pending'}"}
            return _results(entry.job, links, zip)
        return found(answer)

    @r.delete("/task/{task_id}")
    @deletes_own_files  # a user's own; without any sign-in, not from the network
    def delete(request: Request, task_id: str) -> Any:
        """A task in line is cancelled (interrupted when running); an ended one leaves the history, files too."""
        def answer() -> dict[str, Any]:
            viewer = viewer_of(request)
            entry = view().entry(viewer, task_id)
            if isinstance(entry, QueueEntry):
                view().cancel(viewer, task_id)
                return {"success": True, "message": "Task interrupted" if entry.state == "running" else "Task deleted"}
            view().delete(viewer, task_id)
            return {"success": True, "message": "Task deleted"}
        return found(answer)

    @r.post("/task/{task_id}/requeue")
    def requeue(request: Request, task_id: str) -> Any:
        return found(lambda: {"success": True, "message": "Task requeued",
                              "task_id": view().run_again(viewer_of(request), task_id).id})

    @r.post("/task/{task_id}/run")
    @changes_server  # an admin's: it jumps the line
    def run(request: Request, task_id: str) -> Any:
        return found(lambda: _move(view(), viewer_of(request), task_id, "top"))

    @r.post("/task/{task_id}/move/{over_id}")
    @changes_server
    def move(request: Request, task_id: str, over_id: str) -> Any:
        return found(lambda: _move(view(), viewer_of(request), task_id, over_id))


def _move(view: QueueView, viewer: Identity | None, task_id: str, over_id: str) -> dict[str, Any]:
    """The extension's move: to the ``top``, the ``bottom``, or where task ``over_id`` is."""
    waiting = [e for e in view.entries(viewer) if e.state != "running"]
    if over_id == "top":
        place, message = 1, "Task moved to top"
    elif over_id == "bottom":
        place, message = max(len(waiting), 1), "Task moved to bottom"
    else:
        over = view.entry(viewer, over_id)
        if not isinstance(over, QueueEntry) or over.state == "running":
            return {"success": False, "message": "Task not found"}
        place, message = over.position, "Task moved"
    entry = view.entry(viewer, task_id)
    if not isinstance(entry, QueueEntry) or entry.state == "running":
        return {"success": False, "message": "Task is not pending"}
    view.move(viewer, task_id, place)
    return {"success": True, "message": message}
