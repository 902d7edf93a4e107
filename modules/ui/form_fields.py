"""A generating form's one declaration: each control under the request field it sets.

A tab declares its controls once, where it creates them, as a mapping from a name to a component.
The name is the :class:`GenerationRequest` field the control sets (``steps``, ``denoising_strength``)
or, for a control that is not one request field, a dotted form-only key (``hires.upscaler``,
``refiner.checkpoint``, ``inpaint.mode``, ``init_image.sketch``). Everything else reads that
declaration by name: Gradio's inputs (a set: the handler receives ``{component: value}``), the
values a tab's request is built from, and the controls "send to" and "paste" fill from an infotext.
Nothing depends on the order in which controls are declared or created.

The conversions of the fields every generating tab shares (number boxes' floats to ints, labels to enums,
the hires fix and refiner groups) live here too, both ways, one line per field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from modules.params import GenerationRequest, HiresFix, Refiner
from modules.samplers import ScheduleType
from modules.upscalers import DEFAULT_UPSCALER

Component = Any  # a Gradio component (or gr.State)
Values = Mapping[str, Any]  # control values by field name, as the browser sent them

SAME = "Use same"  # A1111's label for "as the first pass" in the hires sampler and schedule lists


@dataclass(frozen=True)
class FormFields:
    """The controls of one form by name. A name or a component declared twice is a build error."""

    by_name: Mapping[str, Component] = field(default_factory=dict)

    def __post_init__(self) -> None:
        seen: dict[int, str] = {}
        for name, component in self.by_name.items():
            if id(component) in seen:
                raise ValueError(f"fields {seen[id(component)]!r} and {name!r} declare the same component")
            seen[id(component)] = name
        object.__setattr__(self, "by_name", MappingProxyType(dict(self.by_name)))

    def __or__(self, other: FormFields | Mapping[str, Component]) -> FormFields:
        more = other.by_name if isinstance(other, FormFields) else other
        twice = sorted(set(self.by_name) & set(more))
        if twice:
            raise ValueError(f"fields declared twice: {', '.join(twice)}")
        return FormFields({**self.by_name, **more})

    def __getitem__(self, name: str) -> Component:
        return self.by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def get(self, name: str) -> Component | None:
        return self.by_name.get(name)

    def inputs(self) -> set[Component]:
        """Gradio ``inputs``: a set, so the handler receives one ``{component: value}`` dict."""
        return set(self.by_name.values())

    def components_of(self, names: Iterable[str]) -> list[Component]:
        """The declared components among ``names`` (an event's outputs)."""
        return [self.by_name[name] for name in names if name in self.by_name]

    def values(self, received: Mapping[Component, Any]) -> dict[str, Any]:
        """The handler's ``{component: value}`` as ``{name: value}``."""
        return {name: received[component] for name, component in self.by_name.items()}

    def fill(self, values: Values) -> dict[Component, Any]:
        """``{component: value}`` (a handler's return) for the named values this form declares."""
        return {self.by_name[name]: value for name, value in values.items() if name in self.by_name}


def whole(value: Any) -> Any:
    """Number boxes send floats; a non-integral or empty value is kept so that validation names the field."""
    return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else value


def number(value: Any) -> Any:
    """A number box's value as a float; an empty box (None) is kept so that validation names the field."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _same(value: Any) -> Any:
    return value


def _text(value: str | None) -> str:
    return value or ""


def _seed(value: float | None) -> Any:
    return -1 if value is None else whole(value)


def _schedule(label: str) -> Any:
    return {s.value: s for s in ScheduleType}.get(label, label)  # an unknown label stays: validation names it


def _label(schedule: ScheduleType) -> str:
    return schedule.value


@dataclass(frozen=True)
class Conversion:
    """A control's value to its request field (``read``) and back (``show``: what "send to" and
    "paste" put in the control; None leaves the control as it is)."""

    read: Callable[[Any], Any] = _same
    show: Callable[[Any], Any] | None = _same


SHARED: Mapping[str, Conversion] = MappingProxyType({
    "prompt": Conversion(read=_text),
    "negative_prompt": Conversion(read=_text),
    "sampler": Conversion(),
    "schedule": Conversion(read=_schedule, show=_label),
    "steps": Conversion(read=whole),
    "cfg_scale": Conversion(read=number),
    "distilled_cfg_scale": Conversion(read=number),
    "shift": Conversion(read=lambda value: None if value in (None, "", 0) else number(value)),  # empty: the family's
    "width": Conversion(read=whole),
    "height": Conversion(read=whole),
    "seed": Conversion(read=_seed),
    "batch_count": Conversion(read=whole, show=None),
    "batch_size": Conversion(read=whole, show=None),
    "clip_skip": Conversion(read=whole),
    "styles": Conversion(read=lambda chosen: tuple(chosen or ()), show=None),
    "variation_seed": Conversion(read=_seed),
    "variation_strength": Conversion(read=number),
    "seed_resize_from_width": Conversion(read=whole),
    "seed_resize_from_height": Conversion(read=whole),
    "tiling": Conversion(read=bool),
    "restore_faces": Conversion(read=bool),
    # A remote model's options (hidden, and None, for a local checkpoint).
    "quality": Conversion(read=lambda value: value or None),
    "style": Conversion(read=lambda value: value or None),
})


@dataclass(frozen=True)
class Group:
    """Controls that make one optional part of the request, switched on by ``<name>.enable``; each
    other control is ``<name>.<attribute of the part>``."""

    name: str
    make: Callable[..., Any]
    fields: Mapping[str, Conversion]

    def keys(self) -> list[str]:
        return [f"{self.name}.enable", *(f"{self.name}.{attr}" for attr in self.fields)]

    def read(self, values: Values) -> Any:
        """The part, or None when it is off or this form does not declare it."""
        switch = f"{self.name}.enable"
        if switch not in values or not values[switch]:
            return None
        return self.make(**{attr: c.read(values[f"{self.name}.{attr}"]) for attr, c in self.fields.items()})

    def show(self, part: Any) -> dict[str, Any]:
        if part is None:
            return {f"{self.name}.enable": False}  # the other controls keep their values
        return {f"{self.name}.enable": True, **{f"{self.name}.{attr}": c.show(getattr(part, attr))
                                                 for attr, c in self.fields.items() if c.show is not None}}


HIRES = Group("hires", HiresFix, MappingProxyType({
    "upscaler": Conversion(read=lambda name: name or DEFAULT_UPSCALER),
    "steps": Conversion(read=whole),
    "denoising_strength": Conversion(read=number),
    "scale": Conversion(read=number),
    "resize_width": Conversion(read=whole),
    "resize_height": Conversion(read=whole),
    "sampler": Conversion(read=lambda name: None if name in (None, "", SAME) else name,
                          show=lambda name: name or SAME),
    "schedule": Conversion(read=lambda label: None if label in (None, "", SAME) else _schedule(label),
                           show=lambda schedule: schedule.value if schedule else SAME),
    "prompt": Conversion(read=_text),
    "negative_prompt": Conversion(read=_text),
    "save_first_pass": Conversion(read=bool, show=None),
}))
REFINER = Group("refiner", Refiner, MappingProxyType({
    "checkpoint": Conversion(read=_text),
    "switch_at": Conversion(read=number),
}))
GROUPS = (HIRES, REFINER)

# The names the request checks (and A1111's API) give the fields a form names otherwise: a refusal
# of one is shown next to the form's control.
ERROR_FIELDS: Mapping[str, str] = MappingProxyType({
    "hr_scale": "hires.scale", "hr_resize_x": "hires.resize_width", "hr_resize_y": "hires.resize_height",
    "hr_upscaler": "hires.upscaler", "hr_second_pass_steps": "hires.steps",
    "hr_denoising_strength": "hires.denoising_strength", "hr_sampler_name": "hires.sampler",
    "hr_scheduler": "hires.schedule", "hr_prompt": "hires.prompt", "hr_negative_prompt": "hires.negative_prompt",
    "refiner_checkpoint": "refiner.checkpoint", "refiner_switch_at": "refiner.switch_at",
    **{f"outpaint_{side}": "outpaint.pixels" for side in ("left", "right", "up", "down")},
    "outpaint": "outpaint.pixels",
})


def request_from_values(values: Values) -> GenerationRequest:
    """The request part every generating tab shares, from its named values (a tab adds its own)."""
    shared = {name: conversion.read(values[name]) for name, conversion in SHARED.items()}
    parts = {group.name: group.read(values) for group in GROUPS}
    return GenerationRequest(**shared, **parts)


def values_from_request(request: GenerationRequest) -> dict[str, Any]:
    """What "send to" and "paste" put in a form, by name, for a request read from an infotext.
    A form fills the names it declares (only txt2img declares the hires fix)."""
    shown = {name: c.show(getattr(request, name)) for name, c in SHARED.items() if c.show is not None}
    for group in GROUPS:
        shown |= group.show(getattr(request, group.name))
    return shown


def filled_names() -> list[str]:
    """Every name :func:`values_from_request` may fill: the outputs of a "send to"."""
    shared = [name for name, conversion in SHARED.items() if conversion.show is not None]
    grouped = [f"{g.name}.enable" for g in GROUPS] + [f"{g.name}.{attr}" for g in GROUPS
                                                      for attr, c in g.fields.items() if c.show is not None]
    return shared + grouped
