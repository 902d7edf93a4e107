"""Validating and normalising a :class:`GenerationRequest`, at the edge, before any model work.

:func:`validate_request` reports every bad field at once (a :class:`ValidationError` naming each);
:func:`normalize_request` fixes what the job will run with: random seeds drawn, the sampler's
canonical name, a schedule a combined sampler name implied.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import replace

from modules.errors import FieldError, ValidationError
from modules.model_families import FamilyInfo, Feature
from modules.params import (
    DEFAULT_DISTILLED_CFG_SCALE,
    DISTILLED_CFG_RANGE,
    FRACTION_RANGE,
    HIRES_SCALE_RANGE,
    LATENT_SCALE,
    MAX_SEED,
    MIN_CFG_SCALE,
    SHIFT_RANGE,
    GenerationLimits,
    GenerationRequest,
    HiresFix,
    MaskedContent,
    PreviewMethod,
    Refiner,
    ResizeMode,
    preview_every_problem,
    preview_method_problem,
)
from modules.sampler_params import request_problems as sampler_param_problems
from modules.samplers import RngSource, ScheduleType, flow_refusal, resolve_sampler, sampler_names
from modules.upscalers import find_upscaler, upscaler_names

_NOT_UNICODE = "holds an unpaired surrogate (\\ud800-\\udfff), which is not Unicode text"


def _is_unicode(text: str) -> bool:
    """False for text with lone surrogates (JSON's "\\ud800"): the tokenizer and PNG text cannot take them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(errors: list[FieldError], name: str, value: object, low: float, high: float) -> None:
    number_ok = _is_int(value) or (isinstance(value, float) and math.isfinite(value))
    if not number_ok:
        errors.append(FieldError(name, f"must be a finite number, got {value!r}"))
    elif not low <= value <= high:  # type: ignore[operator]
        errors.append(FieldError(name, f"must be between {low:g} and {high:g}, got {value}"))


def _check_int(errors: list[FieldError], name: str, value: object, low: int, high: int) -> None:
    if not _is_int(value):
        errors.append(FieldError(name, f"must be a whole number, got {value!r}"))
    else:
        _check_range(errors, name, value, low, high)


def _check_size(errors: list[FieldError], name: str, value: object, limits: GenerationLimits) -> None:
    before = len(errors)
    _check_int(errors, name, value, limits.min_size, limits.max_size)
    if len(errors) == before and value % 8:  # type: ignore[operator]
        errors.append(FieldError(name, f"must be a multiple of 8, got {value}"))


def _check_variations_and_images(errors: list[FieldError], request: GenerationRequest,
                                 limits: GenerationLimits) -> None:
    if not _is_int(request.variation_seed) or not (request.variation_seed == -1 or 0 <= request.variation_seed <= MAX_SEED):
        errors.append(FieldError("variation_seed", f"must be -1 (random) or between 0 and {MAX_SEED}"))
    _check_range(errors, "variation_strength", request.variation_strength, *FRACTION_RANGE)
    if request.eta_noise_seed_delta is not None:
        _check_int(errors, "eta_noise_seed_delta", request.eta_noise_seed_delta, 0, MAX_SEED)
    if request.rng is not None and not isinstance(request.rng, RngSource):
        errors.append(FieldError("rng", f"must be one of {', '.join(r.value for r in RngSource)}"))
    if request.preview_method is not None and not isinstance(request.preview_method, PreviewMethod):
        problem = preview_method_problem(request.preview_method)  # None for a label given as text
        errors.append(FieldError("show_progress_type", problem or f"must be a PreviewMethod, got {request.preview_method!r}"))
    if request.preview_every is not None and (problem := preview_every_problem(request.preview_every)):
        errors.append(FieldError("show_progress_every_n_steps", problem))
    for name in ("init_image", "mask"):
        value = getattr(request, name)
        if value is not None and (not isinstance(value, bytes) or not value):
            errors.append(FieldError(name, "must be an encoded image (PNG, JPEG or WEBP bytes)"))
    if request.mask is not None and request.init_image is None:
        errors.append(FieldError("mask", "a mask needs an init image to paint on"))
    _check_range(errors, "denoising_strength", request.denoising_strength, *FRACTION_RANGE)
    _check_int(errors, "mask_blur", request.mask_blur, 0, limits.max_mask_blur)
    if not isinstance(request.resize_mode, ResizeMode):
        errors.append(FieldError("resize_mode", f"must be one of {', '.join(m.value for m in ResizeMode)}"))
    if not isinstance(request.masked_content, MaskedContent):
        errors.append(FieldError("masked_content", f"must be one of {', '.join(m.value for m in MaskedContent)}"))
    _check_int(errors, "only_masked_padding", request.only_masked_padding, 0, limits.max_size)


def _check_sampler_name(errors: list[FieldError], name: str, value: object) -> None:
    found = resolve_sampler(value) if isinstance(value, str) else None
    if found is None:
        errors.append(FieldError(name, f"unknown sampler {value!r}; valid: {', '.join(sampler_names())}"))


def _check_hires(errors: list[FieldError], request: GenerationRequest, limits: GenerationLimits,
                 upscalers: Sequence[str]) -> None:
    hires = request.hires
    if hires is None:
        return
    if not isinstance(hires, HiresFix):
        errors.append(FieldError("hires", "must be hires fix settings"))
        return
    if request.init_image is not None:
        errors.append(FieldError("hires", "hires fix is for txt2img; img2img already works at the size asked for"))
    before = len(errors)
    _check_range(errors, "hr_scale", hires.scale, *HIRES_SCALE_RANGE)
    for name, value in (("hr_resize_x", hires.resize_width), ("hr_resize_y", hires.resize_height)):
        if value != 0:
            _check_size(errors, name, value, limits)
    if len(errors) == before and all(_is_int(v) for v in (request.width, request.height)) \
            and request.width > 0 and request.height > 0:
        w, h = hires.upscale_size(request.width, request.height)
        if max(w, h) > limits.max_size:
            errors.append(FieldError("hr_scale", f"upscales to {w}x{h}; the largest side allowed is {limits.max_size}"))
    if not isinstance(hires.upscaler, str) or find_upscaler(hires.upscaler, upscalers) is None:
        valid = ", ".join(upscaler_names(upscalers))
        errors.append(FieldError("hr_upscaler", f"unknown upscaler {hires.upscaler!r}; valid: {valid}"))
    _check_int(errors, "hr_second_pass_steps", hires.steps, 0, limits.max_steps)
    _check_range(errors, "hr_denoising_strength", hires.denoising_strength, *FRACTION_RANGE)
    if hires.sampler is not None:
        _check_sampler_name(errors, "hr_sampler_name", hires.sampler)
    if hires.schedule is not None and not isinstance(hires.schedule, ScheduleType):
        errors.append(FieldError("hr_scheduler", f"unknown schedule type {hires.schedule!r}"))
    for name, text in (("hr_prompt", hires.prompt), ("hr_negative_prompt", hires.negative_prompt)):
        if not isinstance(text, str) or len(text) > limits.max_prompt_chars:
            errors.append(FieldError(name, f"must be text of at most {limits.max_prompt_chars} characters"))
        elif not _is_unicode(text):
            errors.append(FieldError(name, _NOT_UNICODE))


def _check_extras(errors: list[FieldError], request: GenerationRequest, limits: GenerationLimits,
                  upscalers: Sequence[str]) -> None:
    """Hires fix, refiner, "resize seed from" and the VAE choice."""
    _check_hires(errors, request, limits, upscalers)
    refiner = request.refiner
    if refiner is not None:
        if not isinstance(refiner, Refiner) or not isinstance(refiner.checkpoint, str) or not refiner.checkpoint:
            errors.append(FieldError("refiner_checkpoint", "must name a checkpoint"))
        else:
            _check_range(errors, "refiner_switch_at", refiner.switch_at, *FRACTION_RANGE)
    for name in ("seed_resize_from_width", "seed_resize_from_height"):
        value = getattr(request, name)
        if not _is_int(value) or not (value <= 0 or LATENT_SCALE <= value <= limits.max_size):
            errors.append(FieldError(name, f"must be 0 (off) or between {LATENT_SCALE} and {limits.max_size}"))
    if request.vae is not None and (not isinstance(request.vae, str) or not request.vae.strip()):
        errors.append(FieldError("sd_vae", "must name a VAE, 'Automatic' or 'None'"))


def validate_request(request: GenerationRequest, limits: GenerationLimits = GenerationLimits(),
                     upscalers: Sequence[str] = ()) -> None:
    """Raise :class:`ValidationError` naming every invalid field; return quietly otherwise.
    ``upscalers``: the upscaler models' names, which hires fix may use besides the built-ins."""
    errors: list[FieldError] = []
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if not isinstance(text, str):
            errors.append(FieldError(name, "must be text"))
        elif len(text) > limits.max_prompt_chars:
            errors.append(FieldError(name, f"is {len(text)} characters; the limit is {limits.max_prompt_chars}"))
        elif not _is_unicode(text):
            errors.append(FieldError(name, _NOT_UNICODE))
    _check_sampler_name(errors, "sampler", request.sampler)
    if not isinstance(request.schedule, ScheduleType):
        valid = ", ".join(s.value for s in ScheduleType)
        errors.append(FieldError("schedule", f"unknown schedule type {request.schedule!r}; valid: {valid}"))
    _check_int(errors, "steps", request.steps, 1, limits.max_steps)
    _check_range(errors, "cfg_scale", request.cfg_scale, MIN_CFG_SCALE, limits.max_cfg_scale)
    _check_range(errors, "distilled_cfg_scale", request.distilled_cfg_scale, *DISTILLED_CFG_RANGE)
    if request.shift is not None:
        _check_range(errors, "shift", request.shift, *SHIFT_RANGE)
    _check_size(errors, "width", request.width, limits)
    _check_size(errors, "height", request.height, limits)
    if not _is_int(request.seed) or not (request.seed == -1 or 0 <= request.seed <= MAX_SEED):
        errors.append(FieldError("seed", f"must be -1 (random) or between 0 and {MAX_SEED}, got {request.seed!r}"))
    _check_int(errors, "batch_count", request.batch_count, 1, limits.max_batch_count)
    _check_int(errors, "batch_size", request.batch_size, 1, limits.max_batch_size)
    if request.clip_skip is not None:
        _check_int(errors, "clip_skip", request.clip_skip, 1, limits.max_clip_skip)
    if not isinstance(request.styles, tuple) or not all(isinstance(s, str) for s in request.styles):
        errors.append(FieldError("styles", "must be a list of style names"))
    if request.checkpoint is not None and not isinstance(request.checkpoint, str):
        errors.append(FieldError("checkpoint", "must be a checkpoint name"))
    _check_variations_and_images(errors, request, limits)
    _check_extras(errors, request, limits, upscalers)
    errors.extend(FieldError(name, problem) for name, problem in sampler_param_problems(request))
    if errors:
        raise ValidationError(errors)


def family_problems(request: GenerationRequest, family: FamilyInfo) -> list[FieldError]:
    """What ``family`` cannot honour at all in a (valid) request, one error per field. Fields a family
    only treats its own way (CFG 1 on FLUX.1 dev: no negative pass, as in Forge) are not problems, nor
    are embedding names in a prompt: as on SD, an embedding that does not fit the model is skipped
    (listed under ``skipped`` by /sdapi/v1/embeddings) and the word stays text."""
    errors: list[FieldError] = []
    label = family.label
    if request.distilled_cfg_scale != DEFAULT_DISTILLED_CFG_SCALE and not family.supports(Feature.DISTILLED_CFG):
        errors.append(FieldError("distilled_cfg_scale", f"{label} has no distilled guidance (FLUX.1 dev and Fill do); "
                                 f"leave it at {DEFAULT_DISTILLED_CFG_SCALE:g}, got {request.distilled_cfg_scale:g}"))
    if request.shift is not None and not family.supports(Feature.SHIFT):
        errors.append(FieldError("shift", f"{label} is not a flow-matching model, so it has no shift; "
                                 "leave it unset"))
    if request.refiner is not None and family.is_flow:
        errors.append(FieldError("refiner_checkpoint", f"{label} cannot hand over to a refiner; leave it unset"))
    for name in ("width", "height"):
        value = getattr(request, name)
        if value % family.size_multiple:
            errors.append(FieldError(name, f"must be a multiple of {family.size_multiple} for {label}, got {value}"))
    if request.hires is not None and not errors:
        size = request.hires.upscale_size(request.width, request.height)
        if any(side % family.size_multiple for side in size):
            errors.append(FieldError("hr_scale", f"upscales to {size[0]}x{size[1]}; {label} needs both sides to be "
                                     f"multiples of {family.size_multiple}"))
    if request.clip_skip is not None and request.clip_skip > 1 and not family.supports(Feature.CLIP_SKIP):
        errors.append(FieldError("clip_skip", f"{label} has no CLIP layers to skip; set it to 1, "
                                 f"got {request.clip_skip}"))
    if family.is_flow:
        _check_flow_schedules(errors, request)
    return errors


def _check_flow_schedules(errors: list[FieldError], request: GenerationRequest) -> None:
    """Schedule types defined for the Stable Diffusion noise levels only (Align Your Steps)."""
    passes = [("scheduler", request.sampler, request.schedule)]
    if request.hires is not None:
        passes.append(("hr_scheduler", request.hires.sampler or request.sampler,
                       request.hires.schedule or request.schedule))
    for field_name, sampler, schedule in passes:
        found = resolve_sampler(sampler)
        refusal = flow_refusal(found[0], schedule) if found is not None else None
        if refusal is not None:
            errors.append(FieldError(field_name, refusal))


def normalize_request(request: GenerationRequest, rng: random.Random | None = None,
                      upscalers: Sequence[str] = ()) -> GenerationRequest:
    """Canonical form of a valid request: sampler by its table name, combined names split, seed fixed.

    ``"DPM++ 2M Karras"`` becomes sampler ``"DPM++ 2M"`` with schedule Karras (unless the request
    already chose a schedule); seed -1 becomes a concrete random seed.
    """
    found = resolve_sampler(request.sampler)
    if found is None:
        raise ValidationError([FieldError("sampler", f"unknown sampler {request.sampler!r}")])
    spec, implied = found
    schedule = request.schedule
    if implied is not None and schedule is ScheduleType.AUTOMATIC:
        schedule = implied
    source = rng or random.SystemRandom()
    seed = request.seed
    if seed == -1:
        seed = source.randint(0, MAX_SEED - request.images_per_job)
    variation_seed = request.variation_seed
    if variation_seed == -1 and request.variation_strength > 0:
        variation_seed = source.randint(0, MAX_SEED - request.images_per_job)
    hires = request.hires
    if hires is not None:
        hires = replace(hires, upscaler=find_upscaler(hires.upscaler, upscalers).name)  # type: ignore[union-attr]
        if hires.sampler is not None:
            hr_found = resolve_sampler(hires.sampler)
            assert hr_found is not None  # validated
            hr_schedule = hires.schedule
            if hr_found[1] is not None and hr_schedule in (None, ScheduleType.AUTOMATIC):
                hr_schedule = hr_found[1]
            hires = replace(hires, sampler=hr_found[0].name, schedule=hr_schedule)
    resize_w, resize_h = (max(0, v) for v in (request.seed_resize_from_width, request.seed_resize_from_height))
    if not (resize_w and resize_h):
        resize_w = resize_h = 0  # off: A1111 ignores it unless both sides are set
    return replace(request, sampler=spec.name, schedule=schedule, seed=seed, variation_seed=variation_seed,
                   hires=hires, seed_resize_from_width=resize_w, seed_resize_from_height=resize_h)
