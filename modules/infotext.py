"""Generation parameters text ("infotext"): the one writer and the one parser of the whole app.

A1111 stores this text in every image (PNG chunk ``parameters``) and users paste it back to
reproduce an image, so both directions follow A1111's format exactly::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>     (left out when empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, ...

This module owns the key order, value quoting, the parsing rules, and the mapping from parsed
text back to a :class:`GenerationRequest`. Pure Python: no torch, no gradio.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from modules.params import GenerationRequest, HiresFix, MaskedContent, Refiner
from modules.samplers import RngSource, ScheduleType, find_schedule, resolve_sampler
from modules.upscalers import DEFAULT_UPSCALER, find_upscaler

# A1111's fixed order of the parameters line. Keys not listed here (extensions' own) follow them in
# the order given, and "Version" always comes last.
INFOTEXT_KEY_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration",
    "Size", "Model hash", "Model", "VAE hash", "VAE", "Variation seed", "Variation seed strength",
    "Seed resize from", "Denoising strength", "Clip skip", "ENSD", "RNG", "Tiling",
    # Feature keys, in the order A1111 added them.
    "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Mask blur", "Mask mode", "Masked content",
    "Inpaint area", "Masked area padding", "Hires sampler", "Hires schedule type", "Hires prompt",
    "Hires negative prompt", "Refiner", "Refiner switch at", "Lora hashes", "TI hashes", "Styles array",
)
VERSION_KEY = "Version"
NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# Keys build_infotext derives from its own arguments; an `extra` naming one is a caller bug.
REQUEST_KEYS = frozenset(
    {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
     "Clip skip", "Variation seed", "Variation seed strength", "Denoising strength", "ENSD", "RNG",
     "Mask blur", "Mask mode", "Masked content", "Inpaint area", "Masked area padding", "Styles array", VERSION_KEY}
    | {"Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Hires sampler", "Hires schedule type",
       "Hires prompt", "Hires negative prompt", "Seed resize from"}
)

# A1111's reader pattern, verbatim: a last line is parameters only if it matches 3+ times.
PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_MIN_PARAM_MATCHES = 3
_WXH = re.compile(r"([0-9]+)x([0-9]+)")
# A key the reader can capture whole: no ':' or ',', and no edge space (the pattern would eat it).
_KEY = re.compile(r"\w[\w \-/]*[\w\-/]")


@dataclass(frozen=True)
class ModelIdentity:
    """The checkpoint an image was made with, as the infotext names it."""

    name: str  # file stem, e.g. "v1-5-pruned-emaonly"
    hash: str | None  # first 10 hex digits of the file's sha256; None when not computed


@dataclass(frozen=True)
class ParsedInfotext:
    """An infotext split into prompts and unquoted ``Key: value`` parameters (in line order)."""

    prompt: str = ""
    negative_prompt: str = ""
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


# --- writing -----------------------------------------------------------------------------------


def format_number(value: float) -> str:
    """A number as A1111 writes it: 7.0 -> ``7``, 7.5 -> ``7.5`` (shortest text that reads back)."""
    if isinstance(value, int):
        return str(value)
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _needs_quotes(text: str) -> bool:
    # A1111 quotes on ',', ':' and newlines. A leading '"' would be mistaken for a quoted value,
    # and edge whitespace would be eaten by the reader, so those are quoted too to read back exactly.
    return (
        any(c in text for c in ",:\n\r")
        or text.startswith('"')
        or text != text.strip()
    )


def format_value(value: object) -> str:
    """One parameter value as written on the parameters line, JSON-quoted when it must be."""
    if isinstance(value, float):
        text = format_number(value)
    else:
        text = str(value)
    return json.dumps(text, ensure_ascii=False) if _needs_quotes(text) else text


def _request_params(request: GenerationRequest, seed: int, model: ModelIdentity | None,
                    variation_seed: int | None) -> dict[str, object]:
    params: dict[str, object] = {
        "Steps": request.steps,
        "Sampler": request.sampler,
        "Schedule type": request.schedule.value,
        "CFG scale": format_number(request.cfg_scale),
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
    }
    if model is not None and model.hash:
        params["Model hash"] = model.hash
    if model is not None and model.name:
        params["Model"] = model.name
    if request.clip_skip > 1:  # A1111 leaves out its default of 1
        params["Clip skip"] = request.clip_skip
    if request.variation_strength > 0:
        params["Variation seed"] = variation_seed if variation_seed is not None else request.variation_seed
        params["Variation seed strength"] = format_number(request.variation_strength)
    if request.is_img2img:
        params["Denoising strength"] = format_number(request.denoising_strength)
    elif request.hires is not None:  # txt2img: the second pass's strength, as A1111 writes it
        params["Denoising strength"] = format_number(request.hires.denoising_strength)
    if request.mask is not None:
        params["Mask blur"] = request.mask_blur
        if request.invert_mask:
            params["Mask mode"] = "Inpaint not masked"
        params["Masked content"] = request.masked_content.value
        if request.inpaint_only_masked:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.only_masked_padding
    spec = resolve_sampler(request.sampler)
    if request.eta_noise_seed_delta and spec is not None and spec[0].uses_ensd:
        params["ENSD"] = request.eta_noise_seed_delta
    if request.rng is not RngSource.GPU:  # A1111 writes RNG only when it is not the default
        params["RNG"] = request.rng.value
    if request.seed_resize is not None:
        params["Seed resize from"] = "{}x{}".format(*request.seed_resize)
    params.update(hires_infotext(request))
    if request.applied_styles:
        params["Styles array"] = json.dumps(list(request.applied_styles), ensure_ascii=False)
    return params


def hires_infotext(request: GenerationRequest) -> dict[str, object]:
    """The ``Hires ...`` keys of a hires-fix job, as A1111 writes them (only what differs from the first pass)."""
    hires = request.hires
    if hires is None:
        return {}
    params: dict[str, object] = {}
    if hires.resize_width or hires.resize_height:
        params["Hires resize"] = f"{hires.resize_width}x{hires.resize_height}"  # as asked: "1024x0" keeps the ratio
    else:
        params["Hires upscale"] = format_number(hires.scale)
    if hires.steps:
        params["Hires steps"] = hires.steps
    params["Hires upscaler"] = hires.upscaler
    if hires.sampler and hires.sampler != request.sampler:
        params["Hires sampler"] = hires.sampler
    if hires.schedule is not None and hires.schedule is not request.schedule:
        params["Hires schedule type"] = hires.schedule.value
    if hires.prompt and hires.prompt != request.prompt:
        params["Hires prompt"] = hires.prompt
    if hires.negative_prompt and hires.negative_prompt != request.negative_prompt:
        params["Hires negative prompt"] = hires.negative_prompt
    return params


def _check_extra(extra: Mapping[str, object]) -> None:
    for key in extra:
        if key in REQUEST_KEYS:
            raise ValueError(f"infotext key {key!r} comes from the request, not from extra")
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(f"infotext key {key!r} cannot be read back; use letters, digits, ' ', '-', '/'")


def build_infotext(
    request: GenerationRequest,
    seed: int,
    model: ModelIdentity | None,
    version: str,
    extra: Mapping[str, object] | None = None,
    variation_seed: int | None = None,
) -> str:
    """The A1111 parameters text of one image of a normalised ``request``.

    ``extra`` adds keys the request does not carry (Denoising strength, Lora hashes, extensions'
    keys); a None value leaves its key out. Known keys take their place in
    :data:`INFOTEXT_KEY_ORDER`; others follow in the order given, before ``Version``.
    """
    extra = extra or {}
    _check_extra(extra)
    params = _request_params(request, seed, model, variation_seed)
    params.update({k: v for k, v in extra.items() if v is not None})
    order = [k for k in INFOTEXT_KEY_ORDER if k in params]
    order += [k for k in extra if k in params and k not in INFOTEXT_KEY_ORDER]
    pairs = [f"{k}: {format_value(params[k])}" for k in order]
    pairs.append(f"{VERSION_KEY}: {format_value(version)}")

    negative = f"\n{NEGATIVE_PROMPT_PREFIX} {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{', '.join(pairs)}".strip()


# --- reading -----------------------------------------------------------------------------------


def _unquote(value: str) -> str:
    # Like A1111: only a value wrapped in quotes is JSON; invalid JSON stays as written.
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def parse_params_line(line: str) -> dict[str, str]:
    """The ``Key: value`` pairs of a parameters line; ``WxH`` values also give ``Key-1``/``Key-2``."""
    params: dict[str, str] = {}
    for key, raw in PARAM_PATTERN.findall(line):
        value = _unquote(raw)
        params[key] = value
        size = _WXH.fullmatch(value)
        if size is not None:
            params[f"{key}-1"], params[f"{key}-2"] = size.group(1), size.group(2)
    return params


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    prompt: list[str] = []
    negative: list[str] = []
    target = prompt
    for line in lines:
        line = line.strip()  # A1111 strips every line
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            # Everything from here on, across lines, is the negative prompt. Like A1111, a
            # repeated prefix inside the negative prompt is dropped as well.
            target = negative
            line = line[len(NEGATIVE_PROMPT_PREFIX):].strip()
        target.append(line)
    # A1111 skips the separator before the first non-empty piece; joining then stripping matches.
    return "\n".join(prompt).strip(), "\n".join(negative).strip()


def parse_infotext(text: str | None) -> ParsedInfotext:
    """Split A1111 parameters text into prompt, negative prompt and parameters.

    The last line is parameters only when :data:`PARAM_PATTERN` matches it at least three times;
    otherwise it belongs to the prompt (or negative prompt). Empty or None text gives empty parts.
    """
    if not text or not text.strip():
        return ParsedInfotext()
    *lines, last = text.strip().split("\n")
    if len(PARAM_PATTERN.findall(last)) < _MIN_PARAM_MATCHES:
        lines.append(last)
        last = ""
    prompt, negative = _split_prompts(lines)
    return ParsedInfotext(prompt, negative, MappingProxyType(parse_params_line(last)))


# --- infotext -> request -----------------------------------------------------------------------


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
    parsed: ParsedInfotext, base: GenerationRequest = GenerationRequest()
) -> tuple[GenerationRequest, list[str]]:
    """``base`` with every field the infotext names filled in, plus warnings for unusable values.

    Never raises on bad text: a value it cannot use keeps ``base``'s and adds a warning. Missing
    keys with an A1111 default take it (Clip skip 1, Schedule type Automatic); others keep
    ``base``'s. ``checkpoint`` becomes the ``Model`` name, or the ``Model hash`` when only that is
    given; the caller matches it against names and hashes (``parsed.params`` keeps both). Keys the
    request does not carry are left in ``parsed.params``. Range checks are ``validate_request``'s.
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
        seed_resize_from_width=_read_int(params, "Seed resize from-1", 0, warnings),
        seed_resize_from_height=_read_int(params, "Seed resize from-2", 0, warnings),
        hires=_read_hires(params, base, warnings),
        refiner=_read_refiner(params, warnings),
        vae=params.get("VAE") or base.vae,
    )
    return request, warnings


def _has_hires(params: Mapping[str, str]) -> bool:
    return any(key in params for key in ("Hires upscale", "Hires resize", "Hires upscaler", "Hires steps"))


def _read_hires(params: Mapping[str, str], base: GenerationRequest, warnings: list[str]) -> HiresFix | None:
    if not _has_hires(params):
        return None
    kept = base.hires or HiresFix()
    hr_sampler = params.get("Hires sampler")
    if hr_sampler is not None and resolve_sampler(hr_sampler) is None:
        warnings.append(f"Hires sampler: unknown sampler {hr_sampler!r}; using the first pass's")
        hr_sampler = None
    hr_schedule = find_schedule(params["Hires schedule type"]) if "Hires schedule type" in params else None
    upscaler = params.get("Hires upscaler", kept.upscaler)
    if find_upscaler(upscaler) is None:
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
