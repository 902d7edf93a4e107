"""The axes an X/Y/Z plot can vary: how each reads its values and changes a request.

Every axis turns the text the user typed into checked values (ValueError with a reason when one is
wrong), and applies one value to a copy of the job. Names and label styles follow A1111's, since
users and API clients know them: numbers show as ``Steps: 20``, names (samplers, checkpoints,
Prompt S/R replacements) show bare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from xyz_values import float_values, int_values, show_number, split_values

from modules.extension_api import (
    GenerationRequest,
    ScheduleType,
    find_checkpoint,
    find_schedule,
    is_sampler,
    with_denoising,
    with_sampler,
)


@dataclass(frozen=True)
class AxisInput:
    """What reading an axis may look at besides its text."""

    request: GenerationRequest
    checkpoints: tuple[str, ...]  # titles, as the host lists them


@dataclass(frozen=True)
class Axis:
    name: str
    read: Callable[[str, AxisInput], list[Any]]
    apply: Callable[[GenerationRequest, Any], GenerationRequest]
    show: Callable[[Any], str] = str  # a value as its label shows it
    show_name: bool = True  # "Seed: 5" rather than "5"
    is_seed: bool = False  # -1 values are fixed to random seeds before the plot
    cost: int = 0  # slow to change (a model switch): kept in the outermost loop

    def label(self, value: Any) -> str:
        text = self.show(value)
        return f"{self.name}: {text}" if self.show_name else text


def _ints(text: str, _input: AxisInput) -> list[Any]:
    return list(int_values(split_values(text)))


def _floats(text: str, _input: AxisInput) -> list[Any]:
    return list(float_values(split_values(text)))


def _field(name: str) -> Callable[[GenerationRequest, Any], GenerationRequest]:
    return lambda request, value: replace(request, **{name: value})


def _show(value: Any) -> str:
    return show_number(value) if isinstance(value, (int, float)) else str(value)


# --- axes with their own reading ---------------------------------------------------------------


def _prompt_sr(text: str, given: AxisInput) -> list[Any]:
    """Prompt S/R: the first value is searched for; each value (the first too) replaces it."""
    values = split_values(text, keep_blank=True)
    if not values or not values[0]:
        raise ValueError("the first value is the text to search for in the prompt; it is empty")
    search = values[0]
    if search not in given.request.prompt and search not in given.request.negative_prompt:
        raise ValueError(f"{search!r} is in neither the prompt nor the negative prompt")
    return [(search, value) for value in values]


def _apply_prompt_sr(request: GenerationRequest, value: tuple[str, str]) -> GenerationRequest:
    search, replacement = value
    return replace(request, prompt=request.prompt.replace(search, replacement),
                   negative_prompt=request.negative_prompt.replace(search, replacement))


def _samplers(text: str, _input: AxisInput) -> list[Any]:
    values = split_values(text)
    for value in values:
        if not is_sampler(value):
            raise ValueError(f"unknown sampler {value!r}")
    return values


def _schedules(text: str, _input: AxisInput) -> list[Any]:
    found = []
    for value in split_values(text):
        schedule = find_schedule(value)
        if schedule is None:
            raise ValueError(f"unknown schedule type {value!r}; valid: {', '.join(s.value for s in ScheduleType)}")
        found.append(schedule)
    return found


def _checkpoints(text: str, given: AxisInput) -> list[Any]:
    """(as typed, the file name the service looks up); unknown names fail before any work."""
    found = []
    for value in split_values(text):
        name = find_checkpoint(value, given.checkpoints)
        if name is None:
            raise ValueError(f"unknown checkpoint {value!r}; available: {', '.join(given.checkpoints) or 'none'}")
        found.append((value, name))
    return found


def _sizes(text: str, _input: AxisInput) -> list[Any]:
    found = []
    for value in split_values(text):
        width, sep, height = value.lower().replace(" ", "").partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise ValueError(f"{value!r} is not a size such as 512x768")
        found.append((int(width), int(height)))
    return found


def _needs_hires(read: Callable[[str, AxisInput], list[Any]], what: str) -> Callable[[str, AxisInput], list[Any]]:
    def checked(text: str, given: AxisInput) -> list[Any]:
        if given.request.hires is None:
            raise ValueError(f"{what} only applies with hires fix on")
        return read(text, given)
    return checked


def _denoising(text: str, given: AxisInput) -> list[Any]:
    if not given.request.is_img2img and given.request.hires is None:
        raise ValueError("denoising strength only applies to img2img or to txt2img with hires fix")
    return _floats(text, given)


def _apply_hires_steps(request: GenerationRequest, value: int) -> GenerationRequest:
    assert request.hires is not None  # checked when read
    return replace(request, hires=replace(request.hires, steps=value))


NOTHING = Axis("Nothing", lambda _text, _input: [None], lambda request, _value: request, lambda _value: "",
               show_name=False)

AXES: tuple[Axis, ...] = (
    NOTHING,
    Axis("Seed", _ints, _field("seed"), _show, is_seed=True),
    Axis("Var. seed", _ints, _field("variation_seed"), _show, is_seed=True),
    Axis("Var. strength", _floats, _field("variation_strength"), _show),
    Axis("Steps", _ints, _field("steps"), _show),
    Axis("Hires steps", _needs_hires(_ints, "Hires steps"), _apply_hires_steps, _show),
    Axis("CFG Scale", _floats, _field("cfg_scale"), _show),
    Axis("Distilled CFG Scale", _floats, _field("distilled_cfg_scale"), _show),  # Forge's, for FLUX.1 dev
    Axis("Shift", _floats, _field("shift"), _show),  # the flow shift of SD 3.5, FLUX, Z-Image
    Axis("Prompt S/R", _prompt_sr, _apply_prompt_sr, lambda value: value[1], show_name=False),
    Axis("Sampler", _samplers, with_sampler, show_name=False),  # combined names bring their schedule
    Axis("Schedule type", _schedules, _field("schedule"), lambda value: value.value),
    Axis("Checkpoint name", _checkpoints, lambda request, value: replace(request, checkpoint=value[1]),
         lambda value: value[0], show_name=False, cost=1),
    Axis("Denoising", _denoising, with_denoising, _show),  # txt2img with hires fix: the second pass's
    Axis("Clip skip", _ints, _field("clip_skip"), _show),
    Axis("Size", _sizes, lambda request, value: replace(request, width=value[0], height=value[1]),
         lambda value: f"{value[0]}x{value[1]}"),
)


@dataclass(frozen=True)
class PlotAxis:
    """One axis of a plot, read and checked."""

    key: str  # "x", "y" or "z"
    axis: Axis
    text: str  # as typed: the grid's infotext records it
    values: tuple[Any, ...]

    @property
    def labels(self) -> list[str]:
        return [self.axis.label(value) for value in self.values]


def axis_names() -> list[str]:
    return [axis.name for axis in AXES]


def find_axis(name: str) -> Axis:
    for axis in AXES:
        if axis.name.lower() == name.strip().lower():
            return axis
    raise KeyError(name)
