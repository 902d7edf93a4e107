"""Conversions between A1111's REST bodies and Atelier's requests and results. Pure functions.

A body becomes the same frozen :class:`GenerationRequest` a Gradio click makes; a
:class:`GenerationResult` becomes A1111's ``{images, parameters, info}`` reply. Values are mapped,
never judged: range checks and unknown sampler names are left to ``validate_request`` so the API
and the UI report them alike. The one exception is an unknown ``scheduler``, which has no text
field to travel in and is refused here, naming the field.

Where a value comes from, highest first:
  body field  >  body.override_settings  >  infotext (fields the body left unset)  >  server options
(the last two only for the per-request settings: checkpoint, clip skip, ENSD, RNG, VAE). This is
A1111's order for ``infotext``: it never overrides what the request itself says. The server's
options are not merged here: a field left unset stays None, and the front fills it in when it
prepares the job (``modules.services.server_options``), for the UI's jobs and the API's alike.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, TypeVar

import pydantic

from modules import VERSION_TEXT
from modules.api.schemas import (
    ImagesResponse,
    Img2ImgBody,
    SamplerItem,
    SchedulerItem,
    Txt2ImgBody,
)
from modules.errors import FieldError, ValidationError
from modules.infotext import parse_infotext
from modules.infotext_request import request_from_infotext
from modules.options_table import BY_NAME, OPTIONS
from modules.params import (
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    HiresFix,
    MaskedContent,
    Refiner,
    ResizeMode,
)
from modules.sampler_params import param_problem, parse_param
from modules.samplers import (
    SAMPLERS,
    SCHEDULE_INFO,
    ScheduleType,
    find_schedule,
    resolve_sampler,
)

log = logging.getLogger(__name__)

Body = TypeVar("Body", bound=pydantic.BaseModel)

# A1111 option keys a request may override for itself, and the request field each one sets.
SETTING_FIELDS: Mapping[str, str] = MappingProxyType({o.name: o.field for o in OPTIONS
                                                      if o.field is not None and "." not in o.field})
# Request fields an infotext may fill, and the body fields whose presence means "the client chose".
_INFOTEXT_SOURCES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "prompt": ("prompt",), "negative_prompt": ("negative_prompt",),
    "sampler": ("sampler_name", "sampler_index"), "schedule": ("scheduler",),
    "steps": ("steps",), "cfg_scale": ("cfg_scale",), "seed": ("seed",),
    "width": ("width",), "height": ("height",),
    "variation_seed": ("subseed",), "variation_strength": ("subseed_strength",),
    "seed_resize_from_width": ("seed_resize_from_w",), "seed_resize_from_height": ("seed_resize_from_h",),
    "hires": ("enable_hr",), "refiner": ("refiner_checkpoint",), "tiling": ("tiling",),
    "restore_faces": ("restore_faces",), "distilled_cfg_scale": ("distilled_cfg_scale",), "shift": ("shift",),
})
_IMG2IMG_INFOTEXT_SOURCES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "denoising_strength": ("denoising_strength",), "mask_blur": ("mask_blur",),
})
# Request fields that validation names, and the body field a client set them with: a 422 must
# name what the client sent ("n_iter"), not Atelier's own name for it ("batch_count").
_BODY_FIELDS: Mapping[str, str] = MappingProxyType({
    "sampler": "sampler_name", "schedule": "scheduler", "batch_count": "n_iter",
    "variation_seed": "subseed", "variation_strength": "subseed_strength",
    "seed_resize_from_width": "seed_resize_from_w", "seed_resize_from_height": "seed_resize_from_h",
    "init_image": "init_images", "masked_content": "inpainting_fill", "invert_mask": "inpainting_mask_invert",
    "inpaint_only_masked": "inpaint_full_res", "only_masked_padding": "inpaint_full_res_padding",
    "hr_denoising_strength": "denoising_strength", "checkpoint": "override_settings.sd_model_checkpoint",
    "eta_noise_seed_delta": "override_settings.eta_noise_seed_delta", "rng": "override_settings.randn_source",
})


# --- bodies --------------------------------------------------------------------------------------


def parse_body(model: type[Body], data: object) -> Body:
    """``data`` (decoded JSON) as ``model``; a :class:`ValidationError` naming every bad field otherwise."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        errors = []
        for error in exc.errors():
            where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            errors.append(FieldError(where.lstrip(".") or "body", message))
        raise ValidationError(errors) from exc


def body_field(field: str) -> str:
    """The REST body's name for a field a :class:`ValidationError` names (unchanged when it is one already)."""
    return _BODY_FIELDS.get(field, field)


def decode_base64_image(value: str, field: str) -> bytes:
    """The bytes of a base64 image, raw or as a ``data:image/...;base64,`` URL. Not decoded as an image."""
    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if not header.endswith(";base64"):
            raise ValidationError([FieldError(field, "a data: URL must be base64-encoded (data:image/png;base64,...)")])
    text = "".join(text.split())  # MIME base64 wraps lines
    text += "=" * (-len(text) % 4)  # some clients strip the padding
    try:
        data = base64.b64decode(text, altchars=b"-_" if ("-" in text or "_" in text) else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValidationError([FieldError(field, "is not valid base64 image data")]) from exc
    if not data:
        raise ValidationError([FieldError(field, "is empty; a base64-encoded image is required")])
    return data


# --- body -> request -----------------------------------------------------------------------------


def _sampler_and_schedule(body: Txt2ImgBody) -> tuple[str, ScheduleType, bool]:
    """Sampler text, schedule, and whether the sampler name itself chose the schedule ("DPM++ 2M Karras")."""
    name = body.sampler_name or body.sampler_index
    found = resolve_sampler(name)
    sampler, implied = (found[0].name, found[1]) if found else (name, None)  # unknown: validation names it
    schedule = ScheduleType.AUTOMATIC
    if body.scheduler is not None and body.scheduler.strip():
        chosen = find_schedule(body.scheduler)
        if chosen is None:
            valid = ", ".join(s.api_name for s in ScheduleType)
            raise ValidationError([FieldError("scheduler", f"unknown schedule type {body.scheduler!r}; valid: {valid}")])
        schedule = chosen
    if implied is not None and schedule is ScheduleType.AUTOMATIC:
        return sampler, implied, True
    return sampler, schedule, False


def _override(name: str, value: object) -> object:
    """An ``override_settings`` value as the request field it sets; a ValidationError naming it otherwise."""
    try:
        return BY_NAME[name].parse(value)
    except ValueError as exc:
        raise ValidationError([FieldError(f"override_settings.{name}", str(exc))]) from exc


def _settings(body: Txt2ImgBody) -> dict[str, object]:
    """The per-request settings a body asks for (body field > override_settings), as request field -> value."""
    requested = {field_name: _override(key, body.override_settings[key]) for key, field_name in SETTING_FIELDS.items()
                 if body.override_settings.get(key) is not None}
    server_only = [o.name for o in OPTIONS if o.field is None and o.setting is not None and o.name in body.override_settings]
    if server_only and body.override_settings_restore_afterwards is not False:
        # No job field carries these (upscaler tiles): for one request they would be ignored.
        raise ValidationError([FieldError(f"override_settings.{name}", "is a server setting, not one job's: set it with "
                                          "POST /sdapi/v1/options (or override_settings_restore_afterwards: false)")
                               for name in server_only])
    if body.clip_skip is not None:
        requested["clip_skip"] = body.clip_skip
    requested.update(_body_sampler_params(body))
    return requested


def _body_sampler_params(body: Txt2ImgBody) -> dict[str, float]:
    """A1111's body fields eta (the job's sampler's eta, ancestral or DDIM), s_churn, s_tmin, s_tmax, s_noise."""
    sent = {name: getattr(body, name) for name in ("eta", "s_churn", "s_tmin", "s_tmax", "s_noise")
            if getattr(body, name) is not None}
    try:
        values = {name: parse_param("eta_ancestral" if name == "eta" else name, value) for name, value in sent.items()}
    except ValueError as exc:
        bad = next(name for name, value in sent.items()
                   if param_problem("eta_ancestral" if name == "eta" else name, value) is not None)
        raise ValidationError([FieldError(bad, str(exc))]) from exc
    if "eta" in values:
        eta = values.pop("eta")
        values.update(eta_ancestral=eta, eta_ddim=eta)
    return values


def _apply_infotext(request: GenerationRequest, body: Txt2ImgBody, client_chose: set[str]) -> GenerationRequest:
    """``request`` with the infotext's values for every field the client left unset."""
    parsed = parse_infotext(body.infotext)
    from_text, warnings = request_from_infotext(parsed, base=request)
    for warning in warnings:
        log.info("infotext of an API request: %s", warning)
    sources = dict(_INFOTEXT_SOURCES)
    if isinstance(body, Img2ImgBody):
        sources.update(_IMG2IMG_INFOTEXT_SOURCES)
    fields = [name for name, body_fields in sources.items()
              if name not in client_chose and not body.model_fields_set.intersection(body_fields)]
    # Settings written in every infotext (clip skip, RNG, ENSD, model) describe its image, so they
    # apply unless the request set them; the server's options rank below the infotext.
    fields += [name for name in SETTING_FIELDS.values() if name not in client_chose]
    return replace(request, **{name: getattr(from_text, name) for name in fields})


def _choice(options: type[enum.Enum], index: int, field: str) -> Any:
    members = list(options)
    if not 0 <= index < len(members):
        raise ValidationError([FieldError(field, f"must be 0-{len(members) - 1} "
                                                 f"({', '.join(f'{i} {m.value}' for i, m in enumerate(members))})")])
    return members[index]


def _image_fields(body: Img2ImgBody) -> dict[str, object]:
    if not body.init_images:
        raise ValidationError([FieldError("init_images", "at least one base64-encoded image is required")])
    return {
        "init_image": decode_base64_image(body.init_images[0], "init_images"),
        "mask": decode_base64_image(body.mask, "mask") if body.mask else None,
        "denoising_strength": 0.75 if body.denoising_strength is None else body.denoising_strength,
        "mask_blur": body.mask_blur,
        "resize_mode": _choice(ResizeMode, body.resize_mode, "resize_mode"),
        "masked_content": _choice(MaskedContent, body.inpainting_fill, "inpainting_fill"),
        "invert_mask": bool(body.inpainting_mask_invert),
        "inpaint_only_masked": bool(body.inpaint_full_res),
        "only_masked_padding": body.inpaint_full_res_padding,
    }


def _hires(body: Txt2ImgBody) -> HiresFix | None:
    """A1111's enable_hr fields; its ``denoising_strength`` is the second pass's."""
    if not body.enable_hr or isinstance(body, Img2ImgBody):
        return None  # A1111 ignores enable_hr on img2img
    hr_schedule = None
    if body.hr_scheduler:
        hr_schedule = find_schedule(body.hr_scheduler)
        if hr_schedule is None:
            valid = ", ".join(s.api_name for s in ScheduleType)
            raise ValidationError([FieldError("hr_scheduler", f"unknown schedule type {body.hr_scheduler!r}; valid: {valid}")])
    return HiresFix(
        scale=body.hr_scale, resize_width=body.hr_resize_x, resize_height=body.hr_resize_y,
        upscaler=body.hr_upscaler or "Latent", steps=body.hr_second_pass_steps,
        denoising_strength=0.7 if body.denoising_strength is None else body.denoising_strength,
        sampler=body.hr_sampler_name or None, schedule=hr_schedule,
        prompt=body.hr_prompt, negative_prompt=body.hr_negative_prompt,
        save_first_pass=_save_first_pass(body),
    )


def _save_first_pass(body: Txt2ImgBody) -> bool | None:
    """A1111's save_images_before_highres_fix, when the request overrides it; None: the server's."""
    key = "save_images_before_highres_fix"
    value = body.override_settings.get(key)
    return None if value is None else _override(key, value)  # type: ignore[return-value]


def _refiner(body: Txt2ImgBody) -> Refiner | None:
    if not body.refiner_checkpoint or body.refiner_checkpoint.strip().lower() in ("", "none"):
        return None
    switch_at = 0.8 if body.refiner_switch_at is None else body.refiner_switch_at
    return Refiner(checkpoint=body.refiner_checkpoint.strip(), switch_at=switch_at)


def _extension_params(body: Txt2ImgBody) -> dict[str, Any]:
    """A1111's ``alwayson_scripts: {name: {"args": [...]}}``; ``args`` may also be an object of
    name: value, and ``{name: {param: value}}`` without ``args`` is read by name too."""
    params: dict[str, Any] = {}
    for name, entry in body.alwayson_scripts.items():
        if isinstance(entry, dict) and "args" in entry:
            params[name] = entry["args"] if entry["args"] is not None else []
        elif isinstance(entry, (dict, list)):
            params[name] = entry
        else:
            raise ValidationError([FieldError(f"alwayson_scripts.{name}", 'must be {"args": [...]} or an object')])
    return params


def to_generation_request(body: Txt2ImgBody | Img2ImgBody) -> GenerationRequest:
    """The :class:`GenerationRequest` a REST body asks for; what it leaves to the server stays None.

    Raises :class:`ValidationError` for what cannot even be expressed as a request (unknown
    scheduler, bad base64, bad override value); everything else is ``validate_request``'s to judge.
    """
    # 1. Per-request settings: body field > override_settings (> the server's, at the front).
    requested = _settings(body)
    # 2. The body's own fields.
    sampler, schedule, name_chose_schedule = _sampler_and_schedule(body)
    request = GenerationRequest(
        prompt=body.prompt, negative_prompt=body.negative_prompt, sampler=sampler, schedule=schedule,
        steps=body.steps, cfg_scale=body.cfg_scale, width=body.width, height=body.height, seed=body.seed,
        batch_count=body.n_iter, batch_size=body.batch_size, styles=tuple(body.styles),
        variation_seed=body.subseed, variation_strength=body.subseed_strength,
        seed_resize_from_width=body.seed_resize_from_w, seed_resize_from_height=body.seed_resize_from_h,
        hires=_hires(body), refiner=_refiner(body), extension_params=_extension_params(body),
        tiling=bool(body.tiling), restore_faces=bool(body.restore_faces),
        distilled_cfg_scale=body.distilled_cfg_scale, shift=body.shift, quality=body.quality, style=body.style,
        **requested,  # type: ignore[arg-type]
    )
    # 3. img2img inputs.
    if isinstance(body, Img2ImgBody):
        request = replace(request, **_image_fields(body))  # type: ignore[arg-type]
    # 4. An infotext fills what the client left unset.
    if body.infotext and body.infotext.strip():
        client_chose = set(requested) | ({"schedule"} if name_chose_schedule else set())
        request = _apply_infotext(request, body, client_chose)
    return request


# --- result -> response --------------------------------------------------------------------------


def _echo(body: Txt2ImgBody) -> dict[str, Any]:
    """The request as A1111 echoes it: input images replaced by null unless include_init_images."""
    echo = body.model_dump(mode="json")
    if isinstance(body, Img2ImgBody) and not body.include_init_images:
        echo["init_images"] = None
        echo["mask"] = None
    return echo


def info_object(result: GenerationResult, body: Txt2ImgBody, now: datetime | None = None) -> dict[str, Any]:
    """A1111's ``info`` object (before JSON encoding) for a finished job."""
    request = result.request
    used = result.models  # the checkpoint and VAE the renderer used, as fields
    shown = ([result.grid] if result.grid is not None else []) + list(result.images)
    started = (now or datetime.now()) - timedelta(seconds=result.elapsed_seconds)
    has_variation_seed = request.variation_seed != -1
    info: dict[str, Any] = {
        "prompt": request.prompt,
        "all_prompts": [request.prompts_for(image.index)[0] for image in result.images],
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.prompts_for(image.index)[1] for image in result.images],
        "seed": request.seed,
        "all_seeds": [image.seed for image in result.images],
        "subseed": request.variation_seed,
        "all_subseeds": [request.variation_seed_for(image.index) if has_variation_seed else -1
                         for image in result.images],
        "subseed_strength": request.variation_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": request.sampler,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": request.restore_faces,
        "face_restoration_model": request.face_restoration_model if request.restore_faces else None,
        "sd_model_name": used.checkpoint_name or None,
        "sd_model_hash": used.checkpoint_hash,
        "sd_vae_name": used.vae_name,
        "sd_vae_hash": used.vae_hash,
        "seed_resize_from_w": request.seed_resize_from_width or -1,
        "seed_resize_from_h": request.seed_resize_from_height or -1,
        "denoising_strength": request.denoising_strength if request.is_img2img else
        request.hires.denoising_strength if request.hires else None,
        "extra_generation_params": {},
        "index_of_first_image": 1 if result.grid is not None else 0,
        "infotexts": [image.infotext for image in shown],
        "styles": list(request.applied_styles),
        "job_timestamp": started.strftime("%Y%m%d%H%M%S"),
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": False,
        "version": VERSION_TEXT,
    }
    if result.warnings:  # Atelier's own key, only when there is something to say (an extension skipped ...)
        info["warnings"] = list(result.warnings)
    return info


def images_response(result: GenerationResult, body: Txt2ImgBody, send_images: bool,
                    png_bytes_of: Callable[[GeneratedImage], bytes], now: datetime | None = None) -> ImagesResponse:
    """A1111's txt2img/img2img reply: the grid first (when one was saved), then each image, as raw base64."""
    shown: Sequence[GeneratedImage] = ([result.grid] if result.grid is not None else []) + list(result.images)
    images = [base64.b64encode(png_bytes_of(image)).decode("ascii") for image in shown] if send_images else []
    return ImagesResponse(images=images, parameters=_echo(body), info=json.dumps(info_object(result, body, now)))


# --- lists ---------------------------------------------------------------------------------------


def sampler_items() -> list[SamplerItem]:
    """``GET /sdapi/v1/samplers`` from the sampler table."""
    return [SamplerItem(name=spec.name, aliases=list(spec.aliases), options=dict(spec.options)) for spec in SAMPLERS]


def scheduler_items() -> list[SchedulerItem]:
    """``GET /sdapi/v1/schedulers`` from the schedule types."""
    items = []
    for schedule in ScheduleType:
        rho, needs_model = SCHEDULE_INFO[schedule]
        items.append(SchedulerItem(name=schedule.api_name, label=schedule.value, aliases=None,
                                   default_rho=-1.0 if rho is None else rho, need_inner_model=needs_model))
    return items
