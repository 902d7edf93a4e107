"""A1111's "Override settings" box of a generating form: the options a pasted infotext names that
the form has no control for (Eta, ENSD, RNG, VAE, ...), as ``"Key: value"`` entries the user may
remove; on Generate the remaining ones set the job's request fields, as the API's
``override_settings`` would.

The infotext keys and the request field each fills are :data:`modules.infotext_request.OPTION_KEYS`;
each value is parsed and checked by the option's own parser (:mod:`modules.options_table`), the one
the API's ``override_settings`` use, so a bad value is refused with the reason, never dropped.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import replace
from typing import Any

import gradio as gr

from modules.config import Settings
from modules.errors import FieldError, ValidationError
from modules.infotext_request import OPTION_KEYS
from modules.options_table import BY_FIELD
from modules.params import GenerationRequest
from modules.sampler_params import NAMES as SAMPLER_PARAM_NAMES

OVERRIDE_FIELD = "override_settings"  # the box's name among a form's fields
# Values A1111 assumes when an infotext leaves these keys out (its parse_generation_parameters), so
# a pasted text without them still asks for them when the server's setting differs.
A1111_PASTE_DEFAULTS: Mapping[str, str] = {
    "Clip skip": "1", "RNG": "GPU", "Schedule min sigma": "0", "Schedule max sigma": "0", "Schedule rho": "0",
}


def _typed(field: str, text: str) -> object:
    """The text as the option's parser takes it: the sampler parameters are numbers (A1111 casts the
    text to the option's type); text that is no number stays text, for the parser to name."""
    if field not in SAMPLER_PARAM_NAMES:
        return text
    try:
        return float(text)
    except ValueError:
        return text


def _parse(key: str, text: str) -> object:
    """``text`` as the request field ``key`` fills; ValueError saying why it cannot be."""
    field = OPTION_KEYS[key]
    return BY_FIELD[field].parse(_typed(field, text.strip()))


def _differs(key: str, text: str, settings: Settings) -> bool:
    """Whether the infotext's value is not already the server's setting (a bad value differs)."""
    option = BY_FIELD[OPTION_KEYS[key]]
    assert option.setting is not None
    try:
        return _parse(key, text) != option.parse(getattr(settings, option.setting))
    except ValueError:
        return True  # shown, and refused with the reason on Generate


def override_entries(params: Mapping[str, str], declared: Container[str], settings: Settings) -> list[str]:
    """The box's entries for an infotext's parameters: ``"Key: value"`` for every option it names
    (or A1111 assumes) whose request field the form has no control for (``declared``) and whose
    value is not the server's setting, in the table's order (as A1111's get_override_settings)."""
    entries = []
    for key, field in OPTION_KEYS.items():
        text = params.get(key, A1111_PASTE_DEFAULTS.get(key))
        if text is None or field in declared or not _differs(key, text, settings):
            continue
        entries.append(f"{key}: {text.strip()}")
    return entries


def overrides_from_entries(entries: Sequence[str]) -> dict[str, object]:
    """The request fields the box's entries set (request field -> value). An entry that is no
    ``"Key: value"`` of a known key, or whose value the option refuses, is a ValidationError naming
    the box and the entry."""
    fields: dict[str, object] = {}
    errors: list[FieldError] = []
    for entry in entries:
        key, colon, text = entry.partition(":")
        key = key.strip()
        if not colon or key not in OPTION_KEYS:
            errors.append(FieldError(OVERRIDE_FIELD, f"{entry!r} is not a setting one job can override "
                                                     f"(known: {', '.join(OPTION_KEYS)})"))
            continue
        try:
            fields[OPTION_KEYS[key]] = _parse(key, text)
        except ValueError as exc:
            errors.append(FieldError(OVERRIDE_FIELD, f"{key}: {exc}"))
    if errors:
        raise ValidationError(errors)
    return fields


def with_overrides(request: GenerationRequest, values: Mapping[str, Any]) -> GenerationRequest:
    """``request`` with the fields the form's "Override settings" entries set (none: unchanged)."""
    entries = values[OVERRIDE_FIELD] or ()
    return replace(request, **overrides_from_entries(entries)) if entries else request


def box_update(entries: Sequence[str]) -> dict[str, Any]:
    """What "paste" and "send to" put in the box: just these entries, shown only when there are some."""
    return gr.update(choices=list(entries), value=list(entries), visible=bool(entries))


def build_box(prefix: str) -> gr.Dropdown:
    """The box, hidden until a paste fills it; it hides again when the user removes every entry.
    Its choices are each paste's own, which the server's copy of the box never sees: it takes any
    entry, and :func:`overrides_from_entries` judges them (a typed one too)."""
    box = gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Override settings",
                      visible=False, elem_id=f"{prefix}_override_settings")
    box.change(lambda entries: gr.update(visible=bool(entries)), inputs=[box], outputs=[box], queue=False,
               show_progress="hidden", api_visibility="private")
    return box
