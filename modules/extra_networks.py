"""A1111's extra-network tags in prompts: ``<lora:name:weight>`` and friends. Pure text, no torch.

Tags are taken out of the text before it is encoded (they are instructions, not words) wherever
they appear, inside prompt editing too. ``<lora:name>`` means weight 1; ``<lora:name:0.8>`` one
weight for the text encoder and the UNet; ``<lora:name:0.6:1.0>`` (A1111's te:unet) or the named
forms ``te=0.6`` / ``unet=1.0`` set them apart. ``<lyco:...>`` is read as ``lora``, as A1111 does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from modules.errors import FieldError, ValidationError

_TAG = re.compile(r"<(\w+):([^>]+)>")
_KINDS = {"lora": "lora", "lyco": "lora"}
MAX_WEIGHT = 10.0  # far beyond any useful weight, but keeps a typo from wrecking the model


@dataclass(frozen=True)
class NetworkTag:
    """One ``<lora:...>`` tag: which file, and how strongly on each half of the model."""

    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0


def _weight(text: str, tag: str, field: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValidationError([FieldError(field, f"{tag}: {text!r} is not a number")]) from None
    if not -MAX_WEIGHT <= value <= MAX_WEIGHT:
        raise ValidationError([FieldError(field, f"{tag}: weight {value:g} is outside -{MAX_WEIGHT:g}..{MAX_WEIGHT:g}")])
    return value


def _parse_tag(body: str, tag: str, field: str) -> NetworkTag:
    name, *args = (part.strip() for part in body.split(":"))
    if not name:
        raise ValidationError([FieldError(field, f"{tag}: the LoRA name is missing")])
    positional = [a for a in args if "=" not in a]
    named = dict(a.split("=", 1) for a in args if "=" in a)
    te = _weight(positional[0], tag, field) if positional else 1.0
    unet = _weight(positional[1], tag, field) if len(positional) > 1 else te
    te = _weight(named["te"], tag, field) if "te" in named else te
    unet = _weight(named["unet"], tag, field) if "unet" in named else unet
    return NetworkTag(name=name, te_weight=te, unet_weight=unet)


@dataclass(frozen=True)
class ExtractedNetworks:
    text: str  # the prompt without any tag
    loras: tuple[NetworkTag, ...]  # in order; a name given twice: the last wins
    ignored: tuple[str, ...] = ()  # tags of kinds Atelier has no handler for (``<hypernet:...>``)


def extract_networks(text: str, field: str = "prompt") -> ExtractedNetworks:
    """``text`` without its extra-network tags, and the LoRA tags. Like A1111, every tag leaves the
    text, also of kinds with no handler (reported in ``ignored``). Raises ValidationError for a
    malformed weight, naming ``field`` (the request field the text came from)."""
    found: dict[str, NetworkTag] = {}
    ignored: list[str] = []

    def take(match: re.Match[str]) -> str:
        if match.group(1).lower() not in _KINDS:
            ignored.append(match.group(0))
            return ""
        tag = _parse_tag(match.group(2), match.group(0), field)
        found.pop(tag.name, None)
        found[tag.name] = tag
        return ""

    cleaned = _TAG.sub(take, text)
    return ExtractedNetworks(cleaned, tuple(found.values()), tuple(ignored))


def strip_tags(text: str) -> str:
    """``text`` without any extra-network tag, malformed weights included (for counting tokens,
    where A1111 drops every ``<kind:...>`` tag before tokenizing; never raises)."""
    return _TAG.sub("", text)
