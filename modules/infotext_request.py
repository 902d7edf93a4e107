"""Parsed infotext back into a :class:`GenerationRequest`: what "read generation parameters",
"send to" and the API's ``infotext`` field use. A value it cannot use keeps the base request's and
adds a warning; it never raises. Pure Python: no torch, no gradio.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType

from modules import prompt_parser
from modules.infotext import ParsedInfotext, format_number
from modules.params import (
    DEFAULT_DISTILLED_CFG_SCALE,
    DEFAULT_EMPHASIS,
    EMPHASIS_MODES,
    FACE_RESTORERS,
    GenerationRequest,
    HiresFix,
    MaskedContent,
    Refiner,
)
from modules.sampler_params import INFOTEXT_KEYS as SAMPLER_PARAM_KEYS
from modules.samplers import RngSource, ScheduleType, find_schedule, resolve_sampler
from modules.upscalers import DEFAULT_UPSCALER, find_upscaler

# A1111's infotext keys of the options one job may override (its ``override_settings``), and the
# request field each fills; the forms offer those they have no control for as "Override settings".
OPTION_KEYS: Mapping[str, str] = MappingProxyType({
    "Clip skip": "clip_skip", "Emphasis": "emphasis", "ENSD": "eta_noise_seed_delta", "RNG": "rng", "VAE": "vae",
    **{key: name for name, key in SAMPLER_PARAM_KEYS.items()},
})


def _to_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None  # "20.0" is 20; "inf" is not a number


def _read_int(params: Mapping[str, str], key: str, kept: int, warnings: list[str]) -> int:
    if key not in params:
        return kept
    value = _to_int(params[key])
    if value is None:
        warnings.append(f"{key}: {params[key]!r} is not a whole number; kept {kept}")
        return kept
    return value


def _read_float(params: Mapping[str, str], key: str, kept: float, warnings: list[str]) -> float:
    if key not in params:
        return kept
    try:
        value = float(params[key])
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        warnings.append(f"{key}: {params[key]!r} is not a number; kept {format_number(kept)}")
        return kept
    return value


def _read_optional_float(params: Mapping[str, str], key: str, kept: float | None, warnings: list[str]) -> float | None:
    """A number the text may name; missing or unusable keeps ``kept`` (None: the server's)."""
    if key not in params:
        return kept
    value = _read_float(params, key, math.nan, [])
    if math.isnan(value):
        shown = "the server's" if kept is None else format_number(kept)
        warnings.append(f"{key}: {params[key]!r} is not a number; kept {shown}")
        return kept
    return value


def _read_cfg(params: Mapping[str, str], kept: float, warnings: list[str]) -> float:
    return _read_float(params, "CFG scale", kept, warnings)


def _read_masked_content(params: Mapping[str, str], kept: MaskedContent, warnings: list[str]) -> MaskedContent:
    label = params.get("Masked content")
    if label is None:
        return kept
    for option in MaskedContent:
        if option.value == label.strip().lower():
            return option
    warnings.append(f"Masked content: {label!r} is not one of {', '.join(m.value for m in MaskedContent)}")
    return kept


def _read_rng(params: Mapping[str, str], warnings: list[str]) -> RngSource:
    label = params.get("RNG", RngSource.GPU.value)
    try:
        return RngSource(label.upper())
    except ValueError:
        warnings.append(f"RNG: {label!r} is not supported (GPU or CPU); using GPU")
        return RngSource.GPU


def _read_size(params: Mapping[str, str], base: GenerationRequest, warnings: list[str]) -> tuple[int, int]:
    if "Size-1" in params and "Size-2" in params:
        return int(params["Size-1"]), int(params["Size-2"])
    if "Size" in params:
        warnings.append(f"Size: {params['Size']!r} is not WIDTHxHEIGHT; kept {base.width}x{base.height}")
    return base.width, base.height


def _read_schedule(label: str | None, implied: ScheduleType | None, warnings: list[str]) -> ScheduleType:
    # A1111's default for a missing "Schedule type" is Automatic, unless an old combined sampler
    # name ("DPM++ 2M Karras") implies one; an explicit Automatic yields to that implied one too.
    fallback = implied or ScheduleType.AUTOMATIC
    if label is None:
        return fallback
    found = find_schedule(label)
    if found is None:
        warnings.append(f"Schedule type: unknown schedule type {label!r}; using {fallback.value}")
        return fallback
    return fallback if found is ScheduleType.AUTOMATIC else found


def _read_sampler(
    params: Mapping[str, str], base: GenerationRequest, warnings: list[str]
) -> tuple[str, ScheduleType]:
    sampler, implied = base.sampler, None
    name = params.get("Sampler")
    if name is not None:
        found = resolve_sampler(name)
        if found is None:
            warnings.append(f"Sampler: unknown sampler {name!r}; kept {base.sampler}")
        else:
            sampler, implied = found[0].name, found[1]
    return sampler, _read_schedule(params.get("Schedule type"), implied, warnings)


def request_from_infotext(
    parsed: ParsedInfotext, base: GenerationRequest = GenerationRequest(), upscaler_models: Sequence[str] | None = None
) -> tuple[GenerationRequest, list[str]]:
    """``base`` with every field the infotext names filled in, plus warnings for unusable values.

    Never raises on bad text: a value it cannot use keeps ``base``'s and adds a warning. Missing
    keys with an A1111 default take it (Clip skip 1, Schedule type Automatic); others keep
    ``base``'s. ``checkpoint`` becomes the ``Model`` name, or the ``Model hash`` when only that is
    given; the caller matches it against names and hashes (``parsed.params`` keeps both). Keys the
    request does not carry are left in ``parsed.params``. Range checks are ``validate_request``'s.
    ``upscaler_models``: the upscaler model names installed (a hires upscaler not among them, nor
    built in, falls back to Latent with a warning); None keeps any name for validation to check.
    """
    params = parsed.params
    warnings: list[str] = []
    sampler, schedule = _read_sampler(params, base, warnings)
    width, height = _read_size(params, base, warnings)
    request = replace(
        base,
        prompt=parsed.prompt,
        negative_prompt=parsed.negative_prompt,
        sampler=sampler,
        schedule=schedule,
        steps=_read_int(params, "Steps", base.steps, warnings),
        cfg_scale=_read_cfg(params, base.cfg_scale, warnings),
        seed=_read_int(params, "Seed", base.seed, warnings),
        width=width,
        height=height,
        clip_skip=_read_int(params, "Clip skip", 1, warnings),
        checkpoint=params.get("Model") or params.get("Model hash") or base.checkpoint,
        variation_seed=_read_int(params, "Variation seed", -1, warnings),
        variation_strength=_read_float(params, "Variation seed strength", 0.0, warnings),
        # With hires keys, "Denoising strength" is the second pass's (read into ``hires``).
        denoising_strength=base.denoising_strength if _has_hires(params)
        else _read_float(params, "Denoising strength", base.denoising_strength, warnings),
        mask_blur=_read_int(params, "Mask blur", base.mask_blur, warnings),
        invert_mask=params.get("Mask mode", "").strip().lower() == "inpaint not masked",
        masked_content=_read_masked_content(params, base.masked_content, warnings),
        inpaint_only_masked=params.get("Inpaint area", "").strip().lower() == "only masked",
        only_masked_padding=_read_int(params, "Masked area padding", base.only_masked_padding, warnings),
        eta_noise_seed_delta=_read_int(params, "ENSD", 0, warnings),
        rng=_read_rng(params, warnings),
        tiling=params.get("Tiling", "").strip().lower() == "true",
        restore_faces="Face restoration" in params,
        face_restoration_model=_read_face_restorer(params, base.face_restoration_model, warnings),
        seed_resize_from_width=_read_int(params, "Seed resize from-1", 0, warnings),
        seed_resize_from_height=_read_int(params, "Seed resize from-2", 0, warnings),
        hires=_read_hires(params, base, warnings, upscaler_models),
        refiner=_read_refiner(params, warnings),
        vae=params.get("VAE") or base.vae,
        emphasis=_read_emphasis(parsed, base.emphasis, warnings),
        # Forge's keys; without them the image had no distilled guidance and the family's own shift.
        distilled_cfg_scale=_read_float(params, "Distilled CFG Scale", DEFAULT_DISTILLED_CFG_SCALE, warnings),
        shift=_read_shift(params, warnings),
        # A remote model's options (openai/dall-e-3's "Quality: hd", "Style: natural").
        quality=params.get("Quality") or base.quality,
        style=params.get("Style") or base.style,
        # A1111's sampler parameters; as in A1111, a missing one keeps the base's (the server's option).
        **{name: _read_optional_float(params, key, getattr(base, name), warnings)
           for name, key in SAMPLER_PARAM_KEYS.items()},
    )
    return request, warnings


def _read_shift(params: Mapping[str, str], warnings: list[str]) -> float | None:
    """Forge's ``Shift``, or Forge Neo's ``Z-Image Shift`` (where 0 means the model's own); None: the family's."""
    if "Shift" in params:
        return _read_optional_float(params, "Shift", None, warnings)
    shift = _read_optional_float(params, "Z-Image Shift", None, warnings)
    return shift or None


def _read_emphasis(parsed: ParsedInfotext, kept: str | None, warnings: list[str]) -> str | None:
    """A1111's ``Emphasis`` key; without it, "Original" when the prompts weigh some words (A1111
    writes the key only for another mode), else ``kept``."""
    label = parsed.params.get("Emphasis")
    if label is None:
        return DEFAULT_EMPHASIS if prompt_parser.uses_weights(parsed.prompt, parsed.negative_prompt) else kept
    if label.strip() in EMPHASIS_MODES:
        return label.strip()
    warnings.append(f"Emphasis: {label!r} is not one of {', '.join(EMPHASIS_MODES)}; "
                    f"keeping {kept or 'the server setting'}")
    return kept


def _read_face_restorer(params: Mapping[str, str], kept: str | None, warnings: list[str]) -> str | None:
    """The restorer "Face restoration" names (A1111 writes the one that ran), as A1111 spells it."""
    label = params.get("Face restoration")
    if label is None:
        return kept
    found = next((name for name in FACE_RESTORERS if name.lower() == label.strip().lower()), None)
    if found is None:
        warnings.append(f"Face restoration: {label!r} is not one of {', '.join(FACE_RESTORERS)}; "
                        "using the server's face restoration model")
    return found or kept


def _has_hires(params: Mapping[str, str]) -> bool:
    return any(key in params for key in ("Hires upscale", "Hires resize", "Hires upscaler", "Hires steps"))


def _read_hires(params: Mapping[str, str], base: GenerationRequest, warnings: list[str],
                upscaler_models: Sequence[str] | None) -> HiresFix | None:
    """Hires fix's values. A model upscaler's name is kept when it is one of ``upscaler_models``
    (None: kept whatever it is, for the caller's validation to name it if it is missing)."""
    if not _has_hires(params):
        return None
    kept = base.hires or HiresFix()
    hr_sampler = params.get("Hires sampler")
    if hr_sampler is not None and resolve_sampler(hr_sampler) is None:
        warnings.append(f"Hires sampler: unknown sampler {hr_sampler!r}; using the first pass's")
        hr_sampler = None
    hr_schedule = find_schedule(params["Hires schedule type"]) if "Hires schedule type" in params else None
    upscaler = params.get("Hires upscaler", kept.upscaler)
    if upscaler_models is not None and find_upscaler(upscaler, upscaler_models) is None:
        warnings.append(f"Hires upscaler: {upscaler!r} is not available here; using {DEFAULT_UPSCALER}")
        upscaler = DEFAULT_UPSCALER
    return HiresFix(
        scale=_read_float(params, "Hires upscale", kept.scale, warnings),
        resize_width=_read_int(params, "Hires resize-1", 0, warnings),
        resize_height=_read_int(params, "Hires resize-2", 0, warnings),
        upscaler=upscaler,
        steps=_read_int(params, "Hires steps", 0, warnings),
        denoising_strength=_read_float(params, "Denoising strength", kept.denoising_strength, warnings),
        sampler=hr_sampler, schedule=hr_schedule,
        prompt=params.get("Hires prompt", ""), negative_prompt=params.get("Hires negative prompt", ""),
        save_first_pass=kept.save_first_pass,
    )


def _read_refiner(params: Mapping[str, str], warnings: list[str]) -> Refiner | None:
    name = params.get("Refiner")
    if not name:
        return None
    # "name [hash]": the name finds the checkpoint whether or not its hash is known here.
    return Refiner(checkpoint=name.split(" [")[0].strip(), switch_at=_read_float(params, "Refiner switch at", 0.8, warnings))
