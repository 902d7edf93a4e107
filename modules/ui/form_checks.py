"""The checks a generating form runs before a job starts: the server's own rules for every field,
shown next to the field that breaks one, and a confirmation for a job of very many images.

The field check is :func:`modules.request_checks.validate_request`, the same one the API and the
generation service apply: the form's controls have no limits of their own that could change a value
silently (a value out of range is refused, with the range, never clamped).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from modules.errors import AtelierError, FieldError, ValidationError
from modules.params import GenerationRequest
from modules.request_checks import validate_request
from modules.services.container import Services
from modules.ui.extension_panels import ExtensionControls
from modules.ui.form_fields import ERROR_FIELDS, FormFields

Component = Any


@dataclass(frozen=True)
class ConfirmBox:
    """"This job makes N images. Start it?" with Start and Cancel; hidden until a job needs it."""

    box: gr.Group
    text: gr.Markdown
    start: gr.Button
    cancel: gr.Button
    asker: gr.State  # which of the form's generate buttons asked (Start runs that one's job)


def build_confirm(prefix: str) -> ConfirmBox:
    with gr.Group(visible=False, elem_id=f"{prefix}_confirm", elem_classes="confirm-box") as box:
        text = gr.Markdown("", elem_id=f"{prefix}_confirm_text")
        with gr.Row():
            start = gr.Button("Start it", variant="primary", size="sm", elem_id=f"{prefix}_confirm_start")
            cancel = gr.Button("Cancel", size="sm", elem_id=f"{prefix}_confirm_cancel")
    confirm = ConfirmBox(box, text, start, cancel, gr.State(""))
    cancel.click(lambda: gr.update(visible=False), outputs=[box], queue=False, api_visibility="private")
    return confirm


def images_of(request: GenerationRequest) -> int:
    """How many images a job makes (the grid aside)."""
    return request.batch_count * request.batch_size


def confirmation(confirm: ConfirmBox, request: GenerationRequest, above: int) -> dict[Component, Any] | None:
    """The question to show before ``request`` starts, or None when it makes ``above`` images or fewer."""
    count = images_of(request)
    if count <= above:
        return None
    return {confirm.box: gr.update(visible=True),
            confirm.text: f"This job makes **{count} images** (more than {above}). Start it?"}


def span(low: float, high: float) -> str:
    """A range as a field's info text states it ("1 to 30")."""
    return f"{low:g} to {high:g}"


def ranged_number(label: str, value: Any, info: str, elem_id: str, step: float = 1, **kwargs: Any) -> gr.Number:
    """A number box with no limits or rounding of its own (either would change a value typed out of
    range, or 7.5, silently): ``info`` states the range, and the server's check refuses a value
    outside it next to the box."""
    return gr.Number(value=value, step=step, label=label, info=info, elem_id=elem_id, **kwargs)


def error_targets(fields: FormFields, extensions: ExtensionControls, script: str | None) -> dict[str, Component]:
    """The control each field name of a refusal belongs to: the form's names, the request check's own
    names for them (``hr_scale``), each extension's ``alwayson_scripts.<name>.<param>`` and the chosen
    script's ``script_args.<param>``."""
    targets = dict(fields.by_name)
    targets |= {error: fields[name] for error, name in ERROR_FIELDS.items() if name in fields}
    targets |= {f"alwayson_scripts.{name}.{param}": control for name, controls in extensions.panels.items()
                for param, control in controls.items()}
    if script is not None:
        targets |= {f"script_args.{param}": control for param, control in extensions.scripts.get(script, {}).items()}
    return targets


def _problems(*checks: Callable[[], object]) -> list[FieldError]:
    """Every field error the checks raise, together (another kind of error stops at once)."""
    errors: list[FieldError] = []
    for check in checks:
        try:
            check()
        except ValidationError as exc:
            errors.extend(exc.errors)
    return errors


def field_validator(fields: FormFields, extensions: ExtensionControls, services: Services, tab: str,
                    read: Callable[[Mapping[Component, Any]], GenerationRequest],
                    applies: Callable[[Mapping[Component, Any]], bool] = lambda received: True,
                    ) -> Callable[..., dict[Component, Any]]:
    """A Gradio ``validator`` (one verdict per input of the event): each field the server's rules
    refuse (the request's, the extensions' params', the chosen script's) gets its message (with the
    range) next to it, and the job does not start. Problems with no field of their own on the form
    are left to the job's own check, which shows them in a banner. ``applies``: whether the event
    would start a job at all (a Start that answers another button's question does not, and checks
    nothing)."""

    def checks(received: Mapping[Component, Any]) -> list[FieldError]:
        request = read(received)  # a ValidationError here (outpaint's sides) is the form's too
        params, script, values = extensions.read(received)
        upscalers = services.upscalers.names() if request.hires is not None else ()
        return _problems(lambda: validate_request(request, services.generation.limits, upscalers),
                         lambda: services.extensions.check_params(replace(request, extension_params=params)),
                         lambda: script is None or services.extensions.script_values(
                             services.extensions.find_script(script, tab)[1], values))

    def validate(received: Mapping[Component, Any]) -> dict[Component, Any]:
        verdicts = {component: gr.validate(True, "") for component in received}
        if not applies(received):
            return verdicts
        try:
            errors = checks(received)
        except ValidationError as exc:
            errors = list(exc.errors)
        except AtelierError:
            return verdicts  # the job's own check reports it
        targets = error_targets(fields, extensions, extensions.read(received)[1])
        messages: dict[Component, list[str]] = {}
        for error in errors:
            if error.field in targets:  # named as the form names it (its label), not by the request's field
                control = targets[error.field]
                messages.setdefault(control, []).append(f"{getattr(control, 'label', None) or error.field}: "
                                                        f"{error.message}")
        return verdicts | {component: gr.validate(False, "; ".join(texts)) for component, texts in messages.items()}

    return validate
