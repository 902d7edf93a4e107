"""The A1111-compatible REST face, ``/sdapi/v1``: routes that call the same services as the UI.

No generation logic lives here: bodies become a :class:`GenerationRequest` (``convert``), the
generation service validates and queues it on the one worker, and the result becomes A1111's
reply. Service errors map to status codes in one place (:func:`error_response`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from dataclasses import replace
from typing import Any

import pydantic
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from modules.api import (
    accounts_api,
    agent_scheduler_api,
    download_api,
    extras_api,
    queue_api,
    remote_api,
    schemas,
    scripts_api,
)
from modules.api.convert import (
    decode_base64_image,
    images_response,
    parse_body,
    sampler_items,
    scheduler_items,
    to_generation_request,
)
from modules.api.error_replies import error_response
from modules.api.face_restorer_items import face_restorer_items
from modules.api.saving_api import refuse_unhonoured_overrides, reply_image_bytes
from modules.api.upscaler_items import realesrgan_items, upscaler_items
from modules.cmd_args import Flags
from modules.errors import (
    AtelierError,
    FieldError,
    ValidationError,
)
from modules.infotext import parse_infotext
from modules.model_families import FAMILIES
from modules.params import GenerationRequest, GenerationResult
from modules.server_effects import changes_server, changes_server_when
from modules.services.addons import AddonFile
from modules.services.container import Services
from modules.services.extensions import ExtensionState
from modules.services.image_input import decode_image
from modules.services.images import infotext_of
from modules.services.job_types import Job
from modules.services.model_families_found import module_files
from modules.services.system_memory import memory_report
from modules.services.tokenizer_downloads import TokenizerFetcher
from modules.upscalers import UPSCALERS, UpscalerKind

PREFIX = "/sdapi/v1"
API_PREFIXES = (PREFIX, agent_scheduler_api.PREFIX)  # what the request guard treats as API paths


async def _json_body(request: Request, required: bool = False) -> Any:
    """The decoded JSON body; ``required``: an empty body is an error rather than ``{}``. Its size
    and content type were checked by the request guard while it streamed in."""
    raw = await request.body()
    if not raw.strip():
        if required:  # A1111 answers 422 too; taking every default would start a 512x512, 50-step job
            raise ValidationError([FieldError("body", "is empty; send a JSON object ({} takes every default)")])
        return {}
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise ValidationError([FieldError("body", "is nested too deeply to be a request")]) from exc
    except ValueError as exc:  # bad JSON, bad UTF-8, or an integer past Python's 4300-digit limit
        raise ValidationError([FieldError("body", f"is not valid JSON ({exc.__class__.__name__})")]) from exc


class ApiFace:
    """The routes, bound to the services and the flags they need."""

    def __init__(self, services: Services, flags: Flags) -> None:
        self.services = services
        self.flags = flags

    # --- helpers ------------------------------------------------------------------------------

    async def prepare_body(self, data: object, body_type: type[schemas.Txt2ImgBody],
                           ) -> tuple[schemas.Txt2ImgBody, GenerationRequest]:
        """A decoded txt2img/img2img body and the request it asks for (the queue routes' too)."""
        body = parse_body(body_type, data)
        refuse_unhonoured_overrides(body.override_settings, body.override_settings_restore_afterwards is not False,
                                    self.services.server_options)
        generation = replace(to_generation_request(body), save_images=body.save_images)
        if body.override_settings and not body.override_settings_restore_afterwards:
            # A1111: the overrides become the server's settings (the guard let this through as a
            # change to the server); otherwise they are this job's alone.
            await asyncio.to_thread(self.services.server_options.apply, body.override_settings)
        return body, generation

    async def _generate(self, request: Request, body_type: type[schemas.Txt2ImgBody]) -> JSONResponse:
        body, generation = await self.prepare_body(await _json_body(request, required=True), body_type)
        if body.script_name and body.script_name.strip().lower() not in ("", "none"):
            tab = "img2img" if isinstance(body, schemas.Img2ImgBody) else "txt2img"
            # Every job the script submits is the caller's, as a plain job is.
            result: GenerationResult = await asyncio.to_thread(
                self.services.generation.run_script, body.script_name, tab, generation, body.script_args,
                owner=_user(request))
        else:
            # Off the event loop: preparing decodes images and runs extensions' BEFORE_GENERATE hooks.
            job = await asyncio.to_thread(self.services.generation.submit, generation, _user(request))
            result = await asyncio.wrap_future(job.future)
        reply = images_response(result, body, body.send_images, reply_image_bytes(self.services.options.get()))
        return JSONResponse(reply.model_dump())

    def _progress(self, skip_current_image: bool, user: str | None) -> schemas.ProgressResponse:
        # Another user's job is not shown (unless jobs are shared): to this caller the queue is idle.
        job: Job | None = self.services.queue.visible_current(user)
        if job is None:
            return schemas.ProgressResponse()
        snap = self.services.queue.snapshot(job)
        eta = snap.eta_seconds
        preview = None if skip_current_image else job.context.preview()
        image = None
        if preview is not None:
            buffer = io.BytesIO()
            preview.save(buffer, format="PNG")
            image = base64.b64encode(buffer.getvalue()).decode("ascii")
        state = schemas.ProgressState(
            skipped=snap.skipped, interrupted=snap.interrupted, job="txt2img" if not _is_img2img(job) else "img2img",
            job_count=max(snap.batch_count, 1), job_no=snap.batch_index, sampling_step=snap.step,
            sampling_steps=snap.total_steps, job_timestamp=str(int(job.submitted_at)))
        if snap.part_of is not None:  # a script's job k of n: A1111's X/Y/Z plot says "k out of n"
            number, count = snap.part_of
            batches = max(snap.batch_count, 1)
            state = state.model_copy(update={"job": f"{number} out of {count}", "job_count": count * batches,
                                             "job_no": (number - 1) * batches + snap.batch_index})
        relative = (eta / (snap.elapsed_seconds + eta)) if eta is not None and snap.elapsed_seconds + eta > 0 else 0.0
        return schemas.ProgressResponse(progress=snap.fraction, eta_relative=relative, state=state,
                                        current_image=image, textinfo=None)

    # --- route table --------------------------------------------------------------------------

    def router(self) -> APIRouter:
        r = APIRouter(prefix=PREFIX, tags=["sdapi"])
        s = self.services

        @r.post("/txt2img", response_model=schemas.ImagesResponse)
        @changes_server_when(keeps_overrides)
        async def txt2img(request: Request) -> JSONResponse:
            """Generate images from a prompt. Body: A1111's txt2img fields (unknown fields ignored)."""
            return await self._generate(request, schemas.Txt2ImgBody)

        @r.post("/img2img", response_model=schemas.ImagesResponse)
        @changes_server_when(keeps_overrides)
        async def img2img(request: Request) -> JSONResponse:
            """Rework an init image, optionally inside a mask (inpainting)."""
            return await self._generate(request, schemas.Img2ImgBody)

        @r.post("/png-info", response_model=schemas.PNGInfoResponse)
        async def png_info(request: Request) -> schemas.PNGInfoResponse:
            return _png_info(parse_body(schemas.PNGInfoBody, await _json_body(request)))

        @r.get("/progress", response_model=schemas.ProgressResponse)
        def progress(request: Request, skip_current_image: bool = False) -> schemas.ProgressResponse:
            return self._progress(skip_current_image, _user(request))

        @r.post("/interrupt")
        def interrupt(request: Request) -> dict:
            s.queue.interrupt(user=_user(request))  # only the caller's own job, unless jobs are shared
            return {}

        @r.post("/skip")
        def skip(request: Request) -> dict:
            s.queue.skip(user=_user(request))
            return {}

        @r.get("/options")
        def get_options() -> dict:
            return s.server_options.snapshot()

        @r.post("/options")
        @changes_server
        async def set_options(request: Request) -> Any:
            data = await _json_body(request)
            if not isinstance(data, dict):
                raise ValidationError([FieldError("body", "must be a JSON object of option names to values")])
            await asyncio.to_thread(s.server_options.apply, data)
            return None

        self._register_lists(r)
        self._register_models(r)
        extras_api.register(r, s.extras, _json_body, _user)
        download_api.register(r, s.fetcher, _json_body, TokenizerFetcher(s.paths.tokenizers_dir))
        return r

    def _register_lists(self, r: APIRouter) -> None:
        r.get("/samplers", response_model=list[schemas.SamplerItem])(sampler_items)
        r.get("/schedulers", response_model=list[schemas.SchedulerItem])(scheduler_items)
        addons = self.services.addons
        r.get("/sd-vae", response_model=list[schemas.SDVaeItem])(
            lambda: [schemas.SDVaeItem(model_name=v.name, filename=str(v.path)) for v in addons.vaes.all()])
        r.get("/prompt-styles", response_model=list[schemas.PromptStyleItem])(
            lambda: [schemas.PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt)
                     for s in self.services.styles.all()])
        r.get("/loras")(lambda: [lora_item(item, addons.lora_metadata(item)) for item in addons.loras.all()])
        r.get("/embeddings")(lambda: addons.listing(self.services.models.loaded_model()))
        ext = self.services.extensions
        scripts_api.register(r, ext)  # /scripts and /script-info: selectable and always-on scripts
        r.get("/extensions", response_model=list[schemas.ExtensionItem])(lambda: [
            schemas.ExtensionItem(name=rec.name, version=rec.version, enabled=rec.state is ExtensionState.ENABLED,
                                  state=rec.state.value, error=rec.error or "",
                                  api_version=rec.manifest.api_range if rec.manifest else "",
                                  runs_as_api=rec.setup.api_version if rec.setup else None) for rec in ext.records()])
        upscalers = self.services.upscalers
        r.get("/upscalers")(lambda: upscaler_items(upscalers))
        r.get("/realesrgan-models")(lambda: realesrgan_items(upscalers, self.services.paths.realesrgan_dir))
        r.get("/latent-upscale-modes")(lambda: [{"name": u.name} for u in UPSCALERS if u.kind is UpscalerKind.LATENT])
        r.get("/face-restorers")(lambda: face_restorer_items(self.services.face_restorers))
        # A list clients read at start-up for a feature Atelier does not have: A1111's shape, empty.
        r.get("/hypernetworks")(lambda: [])
        r.get("/cmd-flags")(lambda: self.flags.public_view())
        r.get("/memory", response_model=schemas.MemoryResponse)(lambda: _memory(self.services))
        # Atelier's own: the workers that run jobs (one in process, or Ray workers), as the UI's panel shows them.
        r.get("/workers", response_model=schemas.WorkersResponse)(lambda: schemas.WorkersResponse(
            mode=self.services.queue.mode.value,
            workers=[schemas.WorkerItem(**w.as_dict()) for w in self.services.queue.workers()]))

    def _register_models(self, r: APIRouter) -> None:
        s = self.services

        @r.get("/sd-models", response_model=list[schemas.SDModelItem])
        def sd_models() -> list[schemas.SDModelItem]:
            engine = s.engine.peek()  # families once the engine is up (detection imports torch); none before
            family_of = engine.models.families.family_of if engine is not None else lambda _path: None
            items = []
            for i in s.registry.all():
                family = FAMILIES.get(family_of(i.path) or "")
                items.append(schemas.SDModelItem(title=i.title, model_name=i.model_name, hash=i.shorthash,
                                                 sha256=i.sha256, filename=str(i.path), config=None,
                                                 family=family.key if family else None,
                                                 family_label=family.label if family else None))
            return items + [schemas.SDModelItem(title=m.title, model_name=m.title, filename=m.title, family="remote",
                                                family_label=f"{m.provider.label} (remote)") for m in s.remote.models()]

        @r.get("/sd-modules", response_model=list[schemas.SDModuleItem])
        def sd_modules() -> list[schemas.SDModuleItem]:
            """Forge's list of text encoders (models/text_encoder) and VAEs (models/VAE)."""
            paths = s.paths
            found = module_files(paths.vae_dirs) + module_files(paths.text_encoder_dirs, skip=[paths.tokenizers_dir])
            return [schemas.SDModuleItem(model_name=m.name, filename=str(m.path)) for m in found]

        @r.post("/refresh-checkpoints")
        @changes_server
        def refresh_checkpoints() -> None:
            s.registry.refresh()
            s.remote.refresh()  # the providers' model lists

        @r.post("/refresh-vae")
        @changes_server
        def refresh_vae() -> None:
            s.addons.vaes.refresh()

        @r.post("/refresh-loras")
        @changes_server
        def refresh_loras() -> None:
            s.addons.loras.refresh()

        @r.post("/refresh-embeddings")
        @changes_server
        def refresh_embeddings() -> None:
            s.addons.embeddings.refresh()

        @r.post("/unload-checkpoint")
        @changes_server
        async def unload_checkpoint() -> None:
            engine = await asyncio.wrap_future(s.engine.start())  # at startup: not on the event loop's thread
            await asyncio.wrap_future(engine.generation.unload_model().future)

        @r.post("/reload-checkpoint")
        @changes_server
        async def reload_checkpoint() -> None:
            engine = await asyncio.wrap_future(s.engine.start())
            await asyncio.wrap_future(engine.generation.reload_model().future)


def keeps_overrides(body: bytes) -> bool:
    """Whether a generation body's ``override_settings`` are to stay the server's settings after it
    (``override_settings_restore_afterwards: false``): then the request changes the server."""
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        return False  # not a request at all: refused as such by the route
    if not isinstance(data, dict) or not data.get("override_settings"):
        return False
    restore = data.get("override_settings_restore_afterwards")
    try:  # read as the body model reads it (pydantic's lax booleans); null means the default, true
        return restore is not None and not pydantic.TypeAdapter(bool).validate_python(restore)
    except pydantic.ValidationError:
        return False  # the route refuses the body itself


def lora_item(item: AddonFile, metadata: dict[str, str]) -> dict[str, Any]:
    """A1111's /loras entry; the alias is the name the LoRA was trained under, when it says."""
    return {"name": item.name, "alias": metadata.get("ss_output_name") or item.name, "path": str(item.path),
            "metadata": metadata}


def _user(request: Request) -> str | None:
    """The user the auth layer let in (HTTP Basic), or None without auth."""
    return getattr(request.state, "atelier_user", None)


def _is_img2img(job: Job) -> bool:
    return bool(getattr(job.spec, "is_img2img", False))


def _png_info(body: schemas.PNGInfoBody) -> schemas.PNGInfoResponse:
    image = decode_image(decode_base64_image(body.image, "image"), "image")
    text = infotext_of(image)
    if not text:
        return schemas.PNGInfoResponse(info="", items={}, parameters={})
    parsed = parse_infotext(text)
    parameters: dict[str, Any] = {"Prompt": parsed.prompt, "Negative prompt": parsed.negative_prompt,
                                  **dict(parsed.params)}
    return schemas.PNGInfoResponse(info=text, items={"parameters": text}, parameters=parameters)


def _memory(services: Services) -> schemas.MemoryResponse:
    """A1111's /memory shape from the memory report."""
    report = memory_report(services.device)
    ram = {"total": report.ram_total, "free": report.ram_free, "used": report.ram_used,
           "process": report.process_rss} if report.ram_total else {}
    if report.gpu:
        gpu = report.gpu
        cuda: dict[str, Any] = {"system": {"free": gpu["free"], "used": gpu["total"] - gpu["free"], "total": gpu["total"]},
                                "active": {"current": gpu["allocated"], "peak": gpu["peak"]}}
    else:
        cuda = {"error": "CUDA is not available"}
    return schemas.MemoryResponse(ram=ram, cuda=cuda)


def install(app: FastAPI, services: Services, flags: Flags) -> None:
    """Add the /sdapi/v1 routes (the queue's, the accounts' and agent-scheduler's too) and the error
    handlers that turn service errors into JSON."""
    face = ApiFace(services, flags)
    app.include_router(face.router())
    app.include_router(queue_api.router(services, flags, face.prepare_body, _json_body))
    app.include_router(accounts_api.router(services, _json_body))
    app.include_router(remote_api.router(services))
    app.include_router(agent_scheduler_api.router(services, flags, face.prepare_body, _json_body))

    @app.exception_handler(AtelierError)
    async def _atelier_error(request: Request, exc: AtelierError) -> JSONResponse:
        return error_response(exc)

