"""ControlNet's infotext keys, as the A1111 extension writes and reads them: one key per enabled
unit, numbered among the enabled units, ``ControlNet 0: "Module: canny, Model: name [hash],
Weight: 1.0, Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 100.0, Threshold B:
200.0, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced"``.
Pasting such a text gives the units back (without their images)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cn_units import parse_unit

# The A1111 extension's ControlNetUnit.infotext_fields(), in its order.
FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
          "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
KEY = re.compile(r"^ControlNet (\d+)$")


def _display(name: str) -> str:
    return " ".join(word.capitalize() for word in name.split("_"))


def _text(value: Any) -> str:
    return str(float(value)) if isinstance(value, float) else str(value)


def serialize(unit: Mapping[str, Any]) -> str:
    """A unit as the A1111 extension's ``ControlNetUnit.serialize`` writes it."""
    return ", ".join(f"{_display(name)}: {_text(unit[name])}" for name in FIELDS)


def write_fields(units: list[Mapping[str, Any]]) -> dict[str, str]:
    """``{"ControlNet 0": ..., ...}`` for the enabled units, numbered among them."""
    enabled = [unit for unit in units if unit["enabled"]]
    return {f"ControlNet {i}": serialize(unit) for i, unit in enumerate(enabled)}


def _value(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse(text: str) -> dict[str, Any] | None:
    """A ``ControlNet N`` value as an enabled unit dict, or None when it is not one."""
    values: dict[str, Any] = {"enabled": True}
    for item in text.split(","):
        key, sep, value = item.strip().partition(": ")
        name = "_".join(word.lower() for word in key.split(" "))
        if sep and name in (*FIELDS, "hr_option"):
            values[name] = _value(value.strip())
    if "module" not in values and "model" not in values:
        return None
    try:
        return parse_unit(values)
    except ValueError:
        return None


def read_fields(fields: Mapping[str, str]) -> dict[str, Any] | None:
    """An infotext's ControlNet keys as this extension's params (``unit_N``), or None."""
    units: dict[str, Any] = {}
    for key, value in fields.items():
        match = KEY.match(key)
        if match and isinstance(value, str):
            unit = parse(value)
            if unit is not None:
                units[f"unit_{int(match.group(1))}"] = unit
    return units or None
