"""How the Settings tab and the quicksettings bar edit one option: which editor, its range and
default, its choices, and the value an editor's content stands for.

The editor is chosen from the option alone (:func:`editor_kind`), from the table's ``editor`` and
the setting's type in :class:`modules.config.Settings`, so an option added to the table appears
with the right editor. Values are never clamped or rounded here: the apply path
(``ServerOptions.apply``, as ``POST /sdapi/v1/options``) refuses what is out of range, naming it.
"""

from __future__ import annotations

import enum
from dataclasses import fields
from typing import Any

import gradio as gr

from modules.config import FLOAT_RANGES, INT_RANGES, Settings
from modules.errors import AtelierError, FieldError, ValidationError
from modules.options_table import BY_FIELD, BY_NAME, BY_SETTING, OPTIONS, Editor, Option, Takes
from modules.params import VAE_AUTOMATIC, VAE_NONE
from modules.services.container import Services
from modules.upscalers import upscaler_names


class EditorKind(enum.Enum):
    """The component that edits an option."""

    CHECKBOX = "checkbox"  # bool
    INTEGER = "integer"  # int, with its range
    NUMBER = "number"  # float, with its range
    DROPDOWN = "dropdown"  # one of a list (fixed, or the checkpoints, VAEs, upscalers the server has)
    MULTISELECT = "multiselect"  # a list of option names (quicksettings_list)
    TEXTBOX = "textbox"  # str


_KIND_OF_TYPE = {"bool": EditorKind.CHECKBOX, "int": EditorKind.INTEGER, "float": EditorKind.NUMBER,
                 "str": EditorKind.TEXTBOX, "tuple[str, ...]": EditorKind.MULTISELECT}


def setting_type(option: Option) -> str | None:
    """The setting's type as written in :class:`Settings` ("int", "bool", ...); None for the checkpoint."""
    return next((str(f.type) for f in fields(Settings) if f.name == option.setting), None)


def editor_kind(option: Option) -> EditorKind:
    """The editor of ``option``: a list editor where the table names one, else by the setting's type."""
    if option.editor is not Editor.AUTO:
        return EditorKind.DROPDOWN
    kind = _KIND_OF_TYPE.get(setting_type(option) or "")
    if kind is None:
        raise TypeError(f"option {option.name}: no editor for a setting of type {setting_type(option)}")
    return kind


def value_range(option: Option) -> tuple[float, float] | None:
    """The allowed range of a number option (config's INT_RANGES / FLOAT_RANGES); None otherwise."""
    if option.setting is None:
        return None
    return INT_RANGES.get(option.setting) or FLOAT_RANGES.get(option.setting)


def default_of(option: Option) -> object:
    """The option's default (the setting's default in :class:`Settings`); None for the checkpoint."""
    return getattr(Settings(), option.setting) if option.setting is not None else None


def describe(option: Option) -> str:
    """The line under the editor: the default, the range, and when a change takes effect."""
    default = default_of(option)
    shown = ", ".join(default) if isinstance(default, tuple) else default
    shown = "(empty)" if shown in ("", ()) else shown
    parts = [f"default: {shown}" if option.setting is not None else "default: the first checkpoint found"]
    if (allowed := value_range(option)) is not None:
        parts.append(f"allowed: {allowed[0]} to {allowed[1]}")
    if option.takes is not Takes.NEXT_JOB:
        parts.append(option.takes.value)
    return " · ".join(parts) + f" · ({option.name})"


def choices_of(option: Option, services: Services) -> list[str]:
    """What a list editor offers: the option's own choices, or what the server has now."""
    if option.editor is Editor.CHECKPOINT:
        return [info.title for info in services.registry.all()]
    if option.editor is Editor.VAE:
        return [VAE_AUTOMATIC, VAE_NONE, *(item.name for item in services.addons.vaes.all())]
    if option.editor is Editor.UPSCALER:
        return upscaler_names(services.upscalers.names())
    if editor_kind(option) is EditorKind.MULTISELECT:
        return [o.name for o in OPTIONS if o.name != option.name]
    return list(option.choices)


def build_editor(option: Option, services: Services, elem_id: str, described: bool = True,
                 **layout: Any) -> gr.Component:
    """The component that edits ``option`` (its value comes later, on page load); ``described``: with
    its default, range and when it takes effect under the label (else those are its tooltip)."""
    label = option.label or option.name
    info = describe(option) if described else None
    kind = editor_kind(option)
    if kind is EditorKind.CHECKBOX:
        return gr.Checkbox(label=label, info=info, elem_id=elem_id, **layout)
    if kind in (EditorKind.INTEGER, EditorKind.NUMBER):  # no minimum/maximum: out of range is refused, not clamped
        return gr.Number(label=label, info=info, elem_id=elem_id, precision=None,
                         step=1 if kind is EditorKind.INTEGER else 0.01, **layout)
    if kind in (EditorKind.DROPDOWN, EditorKind.MULTISELECT):
        return gr.Dropdown(choices=choices_of(option, services), label=label, info=info, elem_id=elem_id,
                           multiselect=kind is EditorKind.MULTISELECT, allow_custom_value=True, **layout)
    return gr.Textbox(label=label, info=info, elem_id=elem_id, max_lines=1, **layout)


def from_editor(option: Option, raw: object) -> object:
    """The option value an editor's content stands for: a whole float is an int for whole-number
    options (7.5 stays 7.5 and is refused), a multiselect is a list. Nothing is rounded or clamped."""
    kind = editor_kind(option)
    if kind is EditorKind.INTEGER and isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if kind is EditorKind.MULTISELECT and isinstance(raw, (list, tuple)):
        return list(raw)
    return raw


def shown_value(value: object) -> object:
    """A current option value as an editor shows it (lists as lists)."""
    return list(value) if isinstance(value, tuple) else value


def editor_update(option: Option, services: Services, value: object) -> dict:
    """An update that shows ``value`` (and the list's current choices for the server's lists)."""
    if option.editor in (Editor.CHECKPOINT, Editor.VAE, Editor.UPSCALER):
        return gr.update(value=value, choices=choices_of(option, services))
    return gr.update(value=shown_value(value))


def changed_values(options: list[Option], raws: list[object], current: dict[str, object]) -> dict[str, object]:
    """The options whose editor content differs from the current value, as option name -> value."""
    changed = {}
    for option, raw in zip(options, raws, strict=True):
        value = from_editor(option, raw)
        if value != shown_value(current.get(option.name)):
            changed[option.name] = value
    return changed


def apply_options(services: Services, changes: dict[str, object]) -> list[FieldError]:
    """Apply ``changes`` as ``POST /sdapi/v1/options`` does (all or nothing); the errors, by option name."""
    if not changes:
        return []
    try:
        services.server_options.apply(changes)
    except ValidationError as exc:
        return [FieldError(option_of(e.field), e.message if option_of(e.field) else str(e)) for e in exc.errors]
    except AtelierError as exc:  # a checkpoint that failed to load, say
        return [FieldError(next(iter(changes)) if len(changes) == 1 else "", str(exc))]
    return []


def option_of(field: str) -> str:
    """The option an error's field names (an option, a setting or a request field); "" when none."""
    if field in BY_NAME:
        return field
    found = BY_SETTING.get(field) or BY_FIELD.get(field)
    return found.name if found is not None else ""
