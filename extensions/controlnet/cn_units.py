"""ControlNet units as clients send them (the A1111 extension's unit dicts, webuiapi's
``ControlNetUnit.to_dict``), checked and normalised into plain JSON dicts that travel in the job.

Every value is checked; a bad one is refused with the key and what it may be (never clamped). Keys
the A1111 extension accepts for features this extension does not have are accepted when they hold
their "off" value and refused otherwise; any other key is refused with the list of accepted ones.
The image stays base64 text here (decoded where the job runs).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Any


class ResizeMode(enum.Enum):
    JUST_RESIZE = "Just Resize"
    CROP_AND_RESIZE = "Crop and Resize"
    RESIZE_AND_FILL = "Resize and Fill"


class ControlMode(enum.Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class HiresOption(enum.Enum):
    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


# The A1111 extension's aliases of resize modes (external_code.resize_mode_aliases).
RESIZE_ALIASES = {
    "Inner Fit (Scale to Fit)": ResizeMode.CROP_AND_RESIZE,
    "Outer Fit (Shrink to Fit)": ResizeMode.RESIZE_AND_FILL,
    "Scale to Fit (Inner Fit)": ResizeMode.CROP_AND_RESIZE,
    "Envelope (Outer Fit)": ResizeMode.RESIZE_AND_FILL,
}
# Legacy keys the A1111 extension renames (ControlNetUnit.legacy_field_alias, mask_alias).
ALIASES = {"input_image": "image", "lowvram": "low_vram", "guidance": "guidance_end", "mask_image": "mask"}
# Keys of the A1111 extension for features not here: accepted with these "off" values only.
OFF_VALUES: Mapping[str, tuple[Any, ...]] = {
    "is_ui": (True, False),
    "input_mode": ("simple", "Simple", "SIMPLE"),
    "batch_images": (None, "", []),
    "output_dir": ("",),
    "loopback": (False,),
    "save_detected_map": (True, False),  # only decides whether maps are returned; none are here
    "inpaint_crop_input_image": (True, False),  # applies only to "Only masked" inpainting crops
    "advanced_weighting": (None,),
    "effective_region_mask": (None,),
    "pulid_mode": ("Fidelity",),
    "union_control_type": ("Unknown",),
    "ipadapter_input": (None,),
    "animatediff_batch": (False,),
    "batch_modifiers": ([],),
    "batch_image_files": ([],),
    "batch_keyframe_idx": (None,),
    "batch_mask_dir": (None,),
}
DEFAULTS: Mapping[str, Any] = {
    "enabled": False, "module": "none", "model": "None", "weight": 1.0, "image": None, "mask": None,
    "resize_mode": ResizeMode.CROP_AND_RESIZE.value, "low_vram": False, "processor_res": -1,
    "threshold_a": -1.0, "threshold_b": -1.0, "guidance_start": 0.0, "guidance_end": 1.0,
    "pixel_perfect": False, "control_mode": ControlMode.BALANCED.value, "hr_option": HiresOption.BOTH.value,
}
ACCEPTED_KEYS = tuple(sorted({*DEFAULTS, *ALIASES, *OFF_VALUES, "guessmode"}))
MAX_PROCESSOR_RES = 2048


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{key}: must be true or false, got {value!r}")


def _number(key: str, value: Any, low: float, high: float, whole: bool = False) -> float:
    try:
        number = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{key}: must be a number, got {value!r}")
    if whole and not number.is_integer():
        raise ValueError(f"{key}: must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{key}: must be between {low:g} and {high:g}, got {value!r}")
    return number


def _choice(key: str, value: Any, kind: type[enum.Enum], aliases: Mapping[str, enum.Enum] | None = None) -> str:
    """An enum's value from its name (any case), an A1111 alias, or its position."""
    members = list(kind)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer():
        if 0 <= int(value) < len(members):
            return members[int(value)].value
    if isinstance(value, str):
        text = value.strip()
        if aliases and text in aliases:
            return aliases[text].value
        found = next((m for m in members if m.value.lower() == text.lower()), None)
        if found is not None:
            return found.value
    allowed = ", ".join(f"{i} or {m.value!r}" for i, m in enumerate(members))
    raise ValueError(f"{key}: must be one of {allowed}, got {value!r}")


def _image(key: str, value: Any) -> str | None:
    """A control image as base64 text (a data URL's prefix kept off), or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key}: must be a base64-encoded image (text), got {type(value).__name__}")
    text = value.strip()
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise ValueError(f"{key}: a data URL must be base64-encoded")
    return text


def _images(unit: dict[str, Any]) -> tuple[str | None, str | None]:
    """A1111's image forms: base64 text; {"image", "mask"}; [image, mask]."""
    image, mask = unit.get("image"), unit.get("mask")
    if isinstance(image, (list, tuple)):
        if len(image) != 2 or isinstance(image[0], dict):
            raise ValueError("image: a list must be [image, mask]; several images per unit are not supported")
        image, mask = image[0], image[1] if mask is None else mask
    if isinstance(image, Mapping):
        unknown = set(image) - {"image", "mask"}
        if unknown:
            raise ValueError(f"image: an object takes the keys image and mask, got {sorted(unknown)}")
        image, mask = image.get("image"), image.get("mask") if mask is None else mask
    image, mask = _image("image", image), _image("mask", mask)
    if mask is not None and image is None:
        raise ValueError("mask: a mask needs an image")
    return image, mask


def _renamed(value: Mapping[str, Any]) -> dict[str, Any]:
    unit: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValueError(f"unit keys must be text, got {key!r}")
        name = ALIASES.get(key, key)
        if name in unit:
            raise ValueError(f"{key}: given together with {name}; send one of them")
        unit[name] = item
    if "guessmode" in unit:  # the oldest API's boolean: guess mode is "ControlNet is more important"
        guess = _bool("guessmode", unit.pop("guessmode"))
        if guess:
            unit.setdefault("control_mode", ControlMode.CONTROL.value)
    return unit


def _off_keys(unit: dict[str, Any]) -> None:
    for key in [k for k in unit if k in OFF_VALUES]:
        value = unit.pop(key)
        if value not in OFF_VALUES[key]:
            raise ValueError(f"{key}: this feature of the A1111 extension is not supported here; "
                             f"send {OFF_VALUES[key][0]!r} or leave it out")


def parse_unit(value: Any) -> dict[str, Any] | None:
    """A unit dict (or None) -> the normalised unit; ValueError naming the key and what it may be."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"a ControlNet unit must be an object, got {type(value).__name__}")
    unit = _renamed(value)
    _off_keys(unit)
    unknown = sorted(set(unit) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown keys {', '.join(unknown)}; accepted: {', '.join(ACCEPTED_KEYS)}")
    merged = {**DEFAULTS, **{k: v for k, v in unit.items() if v is not None or k in ("image", "mask")}}
    image, mask = _images(merged)
    for key in ("module", "model"):
        if not isinstance(merged[key], str) or not merged[key].strip():
            raise ValueError(f"{key}: must be a name (text), got {merged[key]!r}")
    start = _number("guidance_start", merged["guidance_start"], 0.0, 1.0)
    end = _number("guidance_end", merged["guidance_end"], 0.0, 1.0)
    if start > end:
        raise ValueError(f"guidance_start ({start:g}) must not be above guidance_end ({end:g})")
    res = _number("processor_res", merged["processor_res"], -1, MAX_PROCESSOR_RES, whole=True)
    if -1 < res < 64:
        raise ValueError(f"processor_res: must be -1 (the preprocessor's default) or between 64 and "
                         f"{MAX_PROCESSOR_RES}, got {merged['processor_res']!r}")
    return {
        "enabled": _bool("enabled", merged["enabled"]),
        "module": merged["module"].strip(),
        "model": merged["model"].strip(),
        "weight": _number("weight", merged["weight"], 0.0, 2.0),
        "image": image,
        "mask": mask,
        "resize_mode": _choice("resize_mode", merged["resize_mode"], ResizeMode, RESIZE_ALIASES),
        "low_vram": _bool("low_vram", merged["low_vram"]),
        "processor_res": int(res),
        "threshold_a": _number("threshold_a", merged["threshold_a"], -1.0, 1e6),
        "threshold_b": _number("threshold_b", merged["threshold_b"], -1.0, 1e6),
        "guidance_start": start,
        "guidance_end": end,
        "pixel_perfect": _bool("pixel_perfect", merged["pixel_perfect"]),
        "control_mode": _choice("control_mode", merged["control_mode"], ControlMode),
        "hr_option": _choice("hr_option", merged["hr_option"], HiresOption),
    }


def is_active(unit: Mapping[str, Any] | None) -> bool:
    """Whether a unit can change anything: enabled, a weight, and a guidance window."""
    return bool(unit and unit["enabled"] and unit["weight"] > 0 and unit["guidance_end"] > unit["guidance_start"])
