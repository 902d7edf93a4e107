"""Generation parameters text ("infotext"): the one writer and the one parser of the whole app.

A1111 stores this text in every image (PNG chunk ``parameters``) and users paste it back to
reproduce an image, so both directions follow A1111's format exactly::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>     (left out when empty)
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x768, ...

This module owns the key order, value quoting and the parsing rules; :mod:`modules.infotext_request`
maps parsed text back to a :class:`GenerationRequest`. Pure Python: no torch, no gradio.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from modules import prompt_parser
from modules.model_families import FAMILIES, Feature
from modules.params import DEFAULT_EMPHASIS, DEFAULT_FACE_RESTORER, GenerationRequest
from modules.sampler_params import INFOTEXT_KEYS as SAMPLER_PARAM_KEYS
from modules.sampler_params import from_values as sampler_params_from
from modules.sampler_params import infotext_params as sampler_param_infotext
from modules.samplers import RngSource, resolve_sampler

# A1111's fixed order of the parameters line. Keys not listed here (extensions' own) follow them in
# the order given, and "Version" always comes last.
INFOTEXT_KEY_ORDER: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Distilled CFG Scale", "Shift", "Image CFG scale", "Seed", "Face restoration",
    "Size", "Model hash", "Model", "VAE hash", "VAE", "Variation seed", "Variation seed strength",
    "Seed resize from", "Denoising strength", "Clip skip", "ENSD", "RNG", "Tiling",
    # Feature keys, in the order A1111 added them.
    "Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Mask blur", "Mask mode", "Masked content",
    "Inpaint area", "Masked area padding", "Hires sampler", "Hires schedule type", "Hires prompt",
    "Hires negative prompt", "Refiner", "Refiner switch at", "Lora hashes", "TI hashes", "Emphasis",
    *SAMPLER_PARAM_KEYS.values(), "Styles array",
)
VERSION_KEY = "Version"
NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# Keys build_infotext derives from its own arguments; an `extra` naming one is a caller bug.
REQUEST_KEYS = frozenset(
    {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
     "Clip skip", "Variation seed", "Variation seed strength", "Denoising strength", "ENSD", "RNG", "Tiling",
     "Mask blur", "Mask mode", "Masked content", "Inpaint area", "Masked area padding", "Styles array", VERSION_KEY}
    | {"Face restoration", "Emphasis", "Distilled CFG Scale", "Shift"}
    | {"Hires upscale", "Hires resize", "Hires steps", "Hires upscaler", "Hires sampler", "Hires schedule type",
       "Hires prompt", "Hires negative prompt", "Seed resize from"}
    | set(SAMPLER_PARAM_KEYS.values())
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
    family: str | None = None  # its family's key (a ModelArch value); None when not known


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
    family = FAMILIES.get(model.family) if model is not None and model.family else None
    if family is not None and family.supports(Feature.DISTILLED_CFG):  # Forge writes it for such models only
        params["Distilled CFG Scale"] = format_number(request.distilled_cfg_scale)
    if request.shift is not None:
        params["Shift"] = format_number(request.shift)
    if request.restore_faces:  # A1111 names the restorer that ran, only when one did
        params["Face restoration"] = request.face_restoration_model or DEFAULT_FACE_RESTORER
    if model is not None and model.hash:
        params["Model hash"] = model.hash
    if model is not None and model.name:
        params["Model"] = model.name
    if request.clip_skip is not None and request.clip_skip > 1:  # A1111 leaves out its default of 1
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
    if request.rng not in (None, RngSource.GPU):  # A1111 writes RNG only when it is not the default
        params["RNG"] = request.rng.value  # type: ignore[union-attr]
    if request.tiling:  # A1111 writes it only when on
        params["Tiling"] = True
    if request.seed_resize is not None:
        params["Seed resize from"] = "{}x{}".format(*request.seed_resize)
    if spec is not None:  # A1111's keys for the sampler parameters that reached it and differ from its defaults
        used = sampler_param_infotext(spec[0], request.schedule, sampler_params_from(request))
        params.update({key: format_number(value) for key, value in used.items()})
    params.update(hires_infotext(request))
    if request.emphasis not in (None, DEFAULT_EMPHASIS) and _prompts_have_brackets(request):
        params["Emphasis"] = request.emphasis  # as A1111: only a mode other than its default, and only
        # when a text the prompts are scheduled to holds "(" or "["
    if request.applied_styles:
        params["Styles array"] = json.dumps(list(request.applied_styles), ensure_ascii=False)
    return params


def _prompts_have_brackets(request: GenerationRequest) -> bool:
    """Whether the texts the job's prompts are scheduled to (steps as A1111 counts model calls) hold
    a bracket: A1111 notes the emphasis mode only then."""
    spec = resolve_sampler(request.sampler)
    steps = request.steps * 2 if spec is not None and spec[0].second_order else request.steps
    texts = [request.prompt, request.negative_prompt]
    if request.hires is not None:
        texts += [request.hires.prompt, request.hires.negative_prompt]
    return any(prompt_parser.has_brackets(text, steps) for text in texts if text)


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
