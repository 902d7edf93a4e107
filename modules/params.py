"""Requests and results of generation, and their validation. No torch here.

A Gradio click and a REST call both become one frozen :class:`GenerationRequest`. It is fully
described by plain values, so a job can be queued, logged, replayed or sent to another worker.
Validation happens at the edge, before any model work, and reports every bad field at once.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from modules.errors import FieldError, ValidationError
from modules.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    RngSource,
    ScheduleType,
    resolve_sampler,
    sampler_names,
)
from modules.upscalers import DEFAULT_UPSCALER, find_upscaler, upscaler_names

MAX_SEED = 2**32 - 1  # A1111 seeds are unsigned 32-bit


class ResizeMode(enum.Enum):
    """How an init image of another size is fitted (A1111's resize_mode 0-3); values are UI labels."""

    JUST_RESIZE = "Just resize"
    CROP_AND_RESIZE = "Crop and resize"
    RESIZE_AND_FILL = "Resize and fill"
    LATENT_UPSCALE = "Just resize (latent upscale)"

    @property
    def index(self) -> int:
        return list(ResizeMode).index(self)


class MaskedContent(enum.Enum):
    """What the masked area starts from (A1111's inpainting_fill 0-3); values as the infotext writes them."""

    FILL = "fill"
    ORIGINAL = "original"
    LATENT_NOISE = "latent noise"
    LATENT_NOTHING = "latent nothing"

    @property
    def index(self) -> int:
        return list(MaskedContent).index(self)


LATENT_SCALE = 8  # pixels per latent cell in every SD VAE
VAE_AUTOMATIC = "Automatic"  # A1111: a VAE named like the checkpoint if there is one, else the checkpoint's own
VAE_NONE = "None"  # the checkpoint's own VAE


@dataclass(frozen=True)
class HiresFix:
    """A1111's hires fix: txt2img at the requested size, then a second img2img pass at a larger one."""

    scale: float = 2.0
    resize_width: int = 0  # 0 and 0: the size comes from ``scale``; one set: the other keeps the ratio
    resize_height: int = 0
    upscaler: str = DEFAULT_UPSCALER
    steps: int = 0  # second-pass steps; 0 = as many as the first pass
    denoising_strength: float = 0.7
    sampler: str | None = None  # None = the first pass's sampler
    schedule: ScheduleType | None = None  # None = the first pass's schedule
    prompt: str = ""  # "" = the first pass's prompt
    negative_prompt: str = ""
    save_first_pass: bool = False  # save the image before the second pass too (A1111's option)

    def upscale_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the first pass is upscaled to (A1111's hr_upscale_to), multiples of 8. With both
        resize sides set it covers the target keeping the aspect ratio; :meth:`final_size` crops it."""
        if not self.resize_width and not self.resize_height:
            w, h = int(width * self.scale), int(height * self.scale)
        elif not self.resize_height:
            w, h = self.resize_width, self.resize_width * height // width
        elif not self.resize_width:
            w, h = self.resize_height * width // height, self.resize_height
        elif width / height < self.resize_width / self.resize_height:
            w, h = self.resize_width, self.resize_width * height // width
        else:
            w, h = self.resize_height * width // height, self.resize_height
        return w // LATENT_SCALE * LATENT_SCALE, h // LATENT_SCALE * LATENT_SCALE

    def final_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize_width and self.resize_height:
            return self.resize_width, self.resize_height
        return self.upscale_size(width, height)


@dataclass(frozen=True)
class Refiner:
    """A1111's refiner: a second checkpoint takes over when ``switch_at`` of the denoising is done."""

    checkpoint: str
    switch_at: float = 0.8


@dataclass(frozen=True)
class GenerationLimits:
    """Bounds a request must respect; a shared instance can lower them for a small GPU."""

    min_size: int = 64
    max_size: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 100
    max_cfg_scale: float = 30.0
    max_clip_skip: int = 12
    max_prompt_chars: int = 30_000
    max_mask_blur: int = 64


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides the pixels of a job. Defaults follow A1111's UI.

    With ``init_image`` it is img2img (the image's encoded bytes, PNG or JPEG); with a ``mask`` as
    well (white = repaint), inpainting. Images travel as bytes so a request stays a plain value.
    """

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    schedule: ScheduleType = DEFAULT_SCHEDULE
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1  # -1 = pick a random seed when the job starts
    batch_count: int = 1
    batch_size: int = 1
    clip_skip: int = 1
    checkpoint: str | None = None  # title, name or hash; None = the loaded one
    variation_seed: int = -1  # A1111's subseed; -1 = random when variation_strength > 0
    variation_strength: float = 0.0
    eta_noise_seed_delta: int = 0  # ENSD: reseeds ancestral noise with seed + delta
    rng: RngSource = RngSource.GPU
    init_image: bytes | None = None
    mask: bytes | None = None
    denoising_strength: float = 0.75
    mask_blur: int = 4
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    masked_content: MaskedContent = MaskedContent.ORIGINAL
    invert_mask: bool = False  # A1111's mask mode "Inpaint not masked"
    inpaint_only_masked: bool = False  # A1111's inpaint area "Only masked" (inpaint_full_res)
    only_masked_padding: int = 32  # pixels around the mask's box, for "Only masked"
    styles: tuple[str, ...] = ()  # style names to apply to the prompts when the job is submitted
    applied_styles: tuple[str, ...] = ()  # what was applied (the prompts already contain it): for the infotext
    save_images: bool = True  # False: images only come back to the caller (A1111's API default)
    hires: HiresFix | None = None  # txt2img only
    refiner: Refiner | None = None
    seed_resize_from_width: int = 0  # A1111's "resize seed from": noise made at this size, centred; 0 = off
    seed_resize_from_height: int = 0
    vae: str | None = None  # VAE_AUTOMATIC, VAE_NONE or a VAE file name; None = the current setting
    # Extensions' values by extension name, then parameter name (A1111's alwayson_scripts, by name).
    extension_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    @property
    def seed_resize(self) -> tuple[int, int] | None:
        """(width, height) the noise is made at, when "resize seed from" is on."""
        if self.seed_resize_from_width > 0 and self.seed_resize_from_height > 0:
            return self.seed_resize_from_width, self.seed_resize_from_height
        return None

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the images the job returns (after hires fix, if any)."""
        if self.hires is not None:
            return self.hires.final_size(self.width, self.height)
        return self.width, self.height

    @property
    def images_per_job(self) -> int:
        return self.batch_count * self.batch_size

    def seed_for(self, index: int) -> int:
        """Seed of image ``index`` (A1111: seed + i; with variations the seed stays). Needs a resolved seed."""
        return self.seed if self.variation_strength > 0 else self.seed + index

    def variation_seed_for(self, index: int) -> int:
        """With variations the seed stays and the variation seed goes up (A1111's subseed + i)."""
        return self.variation_seed + index


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
    _check_range(errors, "variation_strength", request.variation_strength, 0.0, 1.0)
    _check_int(errors, "eta_noise_seed_delta", request.eta_noise_seed_delta, 0, MAX_SEED)
    if not isinstance(request.rng, RngSource):
        errors.append(FieldError("rng", f"must be one of {', '.join(r.value for r in RngSource)}"))
    for name in ("init_image", "mask"):
        value = getattr(request, name)
        if value is not None and (not isinstance(value, bytes) or not value):
            errors.append(FieldError(name, "must be an encoded image (PNG, JPEG or WEBP bytes)"))
    if request.mask is not None and request.init_image is None:
        errors.append(FieldError("mask", "a mask needs an init image to paint on"))
    _check_range(errors, "denoising_strength", request.denoising_strength, 0.0, 1.0)
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


def _check_hires(errors: list[FieldError], request: GenerationRequest, limits: GenerationLimits) -> None:
    hires = request.hires
    if hires is None:
        return
    if not isinstance(hires, HiresFix):
        errors.append(FieldError("hires", "must be hires fix settings"))
        return
    if request.init_image is not None:
        errors.append(FieldError("hires", "hires fix is for txt2img; img2img already works at the size asked for"))
    before = len(errors)
    _check_range(errors, "hr_scale", hires.scale, 1.0, 8.0)
    for name, value in (("hr_resize_x", hires.resize_width), ("hr_resize_y", hires.resize_height)):
        if value != 0:
            _check_size(errors, name, value, limits)
    if len(errors) == before and all(_is_int(v) for v in (request.width, request.height)) \
            and request.width > 0 and request.height > 0:
        w, h = hires.upscale_size(request.width, request.height)
        if max(w, h) > limits.max_size:
            errors.append(FieldError("hr_scale", f"upscales to {w}x{h}; the largest side allowed is {limits.max_size}"))
    if not isinstance(hires.upscaler, str) or find_upscaler(hires.upscaler) is None:
        errors.append(FieldError("hr_upscaler", f"unknown upscaler {hires.upscaler!r}; valid: {', '.join(upscaler_names())}"))
    _check_int(errors, "hr_second_pass_steps", hires.steps, 0, limits.max_steps)
    _check_range(errors, "hr_denoising_strength", hires.denoising_strength, 0.0, 1.0)
    if hires.sampler is not None:
        _check_sampler_name(errors, "hr_sampler_name", hires.sampler)
    if hires.schedule is not None and not isinstance(hires.schedule, ScheduleType):
        errors.append(FieldError("hr_scheduler", f"unknown schedule type {hires.schedule!r}"))
    for name, text in (("hr_prompt", hires.prompt), ("hr_negative_prompt", hires.negative_prompt)):
        if not isinstance(text, str) or len(text) > limits.max_prompt_chars:
            errors.append(FieldError(name, f"must be text of at most {limits.max_prompt_chars} characters"))
        elif not _is_unicode(text):
            errors.append(FieldError(name, _NOT_UNICODE))


def _check_extras(errors: list[FieldError], request: GenerationRequest, limits: GenerationLimits) -> None:
    """Hires fix, refiner, "resize seed from" and the VAE choice."""
    _check_hires(errors, request, limits)
    refiner = request.refiner
    if refiner is not None:
        if not isinstance(refiner, Refiner) or not isinstance(refiner.checkpoint, str) or not refiner.checkpoint:
            errors.append(FieldError("refiner_checkpoint", "must name a checkpoint"))
        else:
            _check_range(errors, "refiner_switch_at", refiner.switch_at, 0.0, 1.0)
    for name in ("seed_resize_from_width", "seed_resize_from_height"):
        value = getattr(request, name)
        if not _is_int(value) or not (value <= 0 or LATENT_SCALE <= value <= limits.max_size):
            errors.append(FieldError(name, f"must be 0 (off) or between {LATENT_SCALE} and {limits.max_size}"))
    if request.vae is not None and (not isinstance(request.vae, str) or not request.vae.strip()):
        errors.append(FieldError("sd_vae", "must name a VAE, 'Automatic' or 'None'"))


def validate_request(request: GenerationRequest, limits: GenerationLimits = GenerationLimits()) -> None:
    """Raise :class:`ValidationError` naming every invalid field; return quietly otherwise."""
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
    _check_range(errors, "cfg_scale", request.cfg_scale, 1.0, limits.max_cfg_scale)
    _check_size(errors, "width", request.width, limits)
    _check_size(errors, "height", request.height, limits)
    if not _is_int(request.seed) or not (request.seed == -1 or 0 <= request.seed <= MAX_SEED):
        errors.append(FieldError("seed", f"must be -1 (random) or between 0 and {MAX_SEED}, got {request.seed!r}"))
    _check_int(errors, "batch_count", request.batch_count, 1, limits.max_batch_count)
    _check_int(errors, "batch_size", request.batch_size, 1, limits.max_batch_size)
    _check_int(errors, "clip_skip", request.clip_skip, 1, limits.max_clip_skip)
    if not isinstance(request.styles, tuple) or not all(isinstance(s, str) for s in request.styles):
        errors.append(FieldError("styles", "must be a list of style names"))
    if request.checkpoint is not None and not isinstance(request.checkpoint, str):
        errors.append(FieldError("checkpoint", "must be a checkpoint name"))
    _check_variations_and_images(errors, request, limits)
    _check_extras(errors, request, limits)
    if errors:
        raise ValidationError(errors)


def normalize_request(request: GenerationRequest, rng: random.Random | None = None) -> GenerationRequest:
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
        hires = replace(hires, upscaler=find_upscaler(hires.upscaler).name)  # type: ignore[union-attr]
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


@dataclass(frozen=True)
class GeneratedImage:
    """One image of a job: its PNG (parameters embedded), where it was saved, its seed and text."""

    path: Path | None  # None when the request asked not to save
    seed: int
    infotext: str
    index: int  # position in the job, 0-based; -1 for the grid
    png: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class GenerationResult:
    """What a finished (or interrupted) job produced."""

    request: GenerationRequest  # normalised: concrete seed, canonical sampler
    images: tuple[GeneratedImage, ...]
    grid: GeneratedImage | None = None
    interrupted: bool = False
    model_title: str = ""
    elapsed_seconds: float = 0.0
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(image.seed for image in self.images)
