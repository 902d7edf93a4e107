"""Extensions in a generating tab: each one's panel (a collapsible section) and the Script dropdown.

Values travel by name: each panel's controls are declared by extension and param name and read
into ``request.extension_params[extension][param]``; a chosen script gets its own params by name.
An extension that declares params without building a panel gets controls made from its
:class:`Param` types (an OBJECT param: a text box of JSON). A panel builder that raises marks its
extension failed; the tab still builds.

A param may stand for several components (a :class:`PanelValue`, e.g. a ControlNet unit): its first
component represents it (a refusal is shown next to it), every component is an input of the tab's
events, ``combine`` makes the value from theirs and ``split`` gives theirs back from a value (paste,
"send to"). A JSON box is a one-component PanelValue of the same kind.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.errors import FieldError, ValidationError
from modules.extension_api import Hook, Host, PanelValue, Param, ParamKind, UiPanel
from modules.params import GenerationRequest, GenerationResult
from modules.services.container import Services
from modules.services.job_types import ProgressSnapshot
from modules.ui import escape, private_events
from modules.ui.common import POLL_SECONDS
from modules.ui.form_fields import Component

NO_SCRIPT = "None"
log = logging.getLogger(__name__)


def _json_value(text: Any) -> Any:
    """A JSON box's value: empty is None (not sent), JSON is parsed; other text stays text, for the
    param's own check to judge (and refuse next to the box)."""
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _json_text(value: Any) -> list[str]:
    return ["" if value is None else json.dumps(value, indent=1)]


def json_box(param: Param, elem_id: str) -> PanelValue:
    """An OBJECT param's control when its extension builds none: its JSON, in a text box."""
    label = param.label or param.name.replace("_", " ").capitalize()
    box = gr.Textbox(value="", label=f"{label} (JSON)", lines=3, elem_id=elem_id)
    return PanelValue((box,), _json_value, _json_text)


def param_component(param: Param, elem_id: str, host: Host) -> Any:
    """A Gradio control for a typed parameter (``host``: the extension's, for lists the server knows);
    an OBJECT param's is a :class:`PanelValue` (:func:`json_box`)."""
    label = param.label or param.name.replace("_", " ").capitalize()
    if param.kind is ParamKind.OBJECT:
        return json_box(param, elem_id)
    if param.kind is ParamKind.NOTE:
        return gr.Markdown(param.default, elem_id=elem_id)
    if param.kind is ParamKind.UPSCALER:  # the names as the server lists them at start-up
        return gr.Dropdown(host.upscaler_names(), value=param.default, label=label, elem_id=elem_id)
    if param.kind is ParamKind.BOOL:
        return gr.Checkbox(value=bool(param.default), label=label, elem_id=elem_id)
    if param.kind is ParamKind.CHOICE:
        return gr.Dropdown(list(param.choices), value=param.default, label=label, elem_id=elem_id)
    if param.kind is ParamKind.TEXTS:
        return gr.Dropdown([], value=list(param.default), multiselect=True, allow_custom_value=True, label=label,
                           elem_id=elem_id)
    if param.kind is ParamKind.TEXT:
        return gr.Textbox(value=param.default, label=label, lines=param.lines, elem_id=elem_id)
    # A number box with no limits or rounding of its own (either would change a typed value silently):
    # the range is stated, and the param's own check refuses a value outside it next to the box.
    whole = "a whole number" if param.kind is ParamKind.INT else ""
    info = ", ".join(part for part in (whole, param.range_text()) if part) or None
    step = 1 if param.kind is ParamKind.INT or param.minimum is None or param.maximum is None \
        else (param.maximum - param.minimum) / 100
    return gr.Number(value=param.default, label=label, info=info, step=step, elem_id=elem_id)


@dataclass(frozen=True)
class ExtensionControls:
    """The tab's extension controls by name: each panel's by extension and param, each script's by
    title and param, and the Script dropdown (None without scripts). A control that stands for
    several components (or a JSON box) is in ``combined``, keyed by the control that represents it."""

    panels: Mapping[str, Mapping[str, Component]] = field(default_factory=dict)
    scripts: Mapping[str, Mapping[str, Component]] = field(default_factory=dict)
    script: Component | None = None
    combined: Mapping[Component, PanelValue] = field(default_factory=dict)

    def inputs(self) -> set[Component]:
        """Every control, for an event's ``inputs`` set."""
        chosen = {self.script} if self.script is not None else set()
        parts = {c for value in self.combined.values() for c in value.components}
        return chosen | parts | {c for group in (*self.panels.values(), *self.scripts.values()) for c in group.values()}

    def read(self, received: Mapping[Component, Any]) -> tuple[dict[str, dict[str, Any]], str | None, dict[str, Any]]:
        """(extension params by name, chosen script or None, its values by name) from an event's
        ``{component: value}``."""
        params = {name: {param: self._value(c, received, f"alwayson_scripts.{name}.{param}")
                         for param, c in controls.items()} for name, controls in self.panels.items()}
        chosen = received[self.script] if self.script is not None else None
        if not chosen or chosen == NO_SCRIPT:
            return params, None, {}
        controls = self.scripts.get(chosen, {})
        values = {param: self._value(c, received, f"script_args.{param}") for param, c in controls.items()}
        return params, chosen, values

    def _value(self, control: Component, received: Mapping[Component, Any], where: str) -> Any:
        several = self.combined.get(control)
        if several is None:
            return received[control]
        try:
            return several.combine(*(received[c] for c in several.components))
        except Exception as exc:  # the extension's combine: a refusal next to its control, not a crash
            log.warning("%s: the panel's combine() raised", where, exc_info=exc)
            raise ValidationError([FieldError(where, f"could not be read from its controls ({exc})")]) from exc

    def outputs(self) -> list[Component]:
        """Every panel component a pasted infotext may fill, in a stable order."""
        found: list[Component] = []
        for controls in self.panels.values():
            for control in controls.values():
                several = self.combined.get(control)
                found.extend(several.components if several is not None else (control,))
        return found

    def fill(self, values: Mapping[str, Mapping[str, Any]]) -> dict[Component, Any]:
        """Updates for the panels' controls from param values by extension and param name (paste,
        "send to"); a several-component control gets ``split(value)``, in its components' order."""
        updates: dict[Component, Any] = {}
        for name, by_param in values.items():
            controls = self.panels.get(name, {})
            for param, value in by_param.items():
                control = controls.get(param)
                if control is None:
                    continue
                several = self.combined.get(control)
                if several is None:
                    updates[control] = value
                    continue
                try:
                    parts = list(several.split(value))
                except Exception as exc:  # the extension's split: that control stays as it is
                    log.warning("Extension %s: split() of %s raised; its controls are left as they are", name,
                                param, exc_info=exc)
                    continue
                updates |= dict(zip(several.components, parts, strict=False))
        return updates


def _separate(built: Mapping[str, Any], combined: dict[Component, PanelValue]) -> dict[str, Component]:
    """Each param's representing control; several-component ones recorded in ``combined``."""
    controls: dict[str, Component] = {}
    for param, control in built.items():
        if isinstance(control, PanelValue):
            if not control.components:
                raise ValueError(f"the PanelValue of {param!r} has no components")
            combined[control.components[0]] = control
            control = control.components[0]
        controls[param] = control
    return controls


def _panel(services: Services, name: str, tab: str, prefix: str) -> dict[str, Any] | None:
    """The extension's accordion; its declared params' controls (components or PanelValues) by name
    (None when its builder failed)."""
    record = services.extensions.get(name)
    assert record is not None and record.setup is not None
    elem_prefix = f"{prefix}_ext_{name}".replace("-", "_").replace(".", "_")
    with gr.Accordion(record.setup.title or name, open=False, elem_id=f"{elem_prefix}_panel"):
        builders = [h for h in record.setup.handlers if h.hook is Hook.UI_PANEL]
        built: dict[str, Any] = {}
        try:
            context = UiPanel(tab=tab, elem_prefix=elem_prefix, host=services.extensions.host(name))
            with private_events.extension_build(name):  # no public API from its events
                for handler in builders:
                    built.update(handler.call(context) or {})
            _separate(built, {})  # a malformed PanelValue is the builder's failure too
        except Exception as exc:  # its bug: shown here, the extension is switched off
            services.extensions.fail(name, "UI_PANEL", exc)
            gr.Markdown(f"⚠️ This extension failed to build its panel: {escape.markdown(exc)}")
            return None
        declared = {p.name for p in record.setup.params}
        host = services.extensions.host(name)
        for param in record.setup.params:  # declared params without a control get a typed one
            if param.name not in built:
                built[param.name] = param_component(param, f"{elem_prefix}_{param.name}", host)
    return {n: c for n, c in built.items() if n in declared}


def _scripts(prefix: str, services: Services, tab: str,
             combined: dict[Component, PanelValue]) -> tuple[Component | None, dict[str, dict[str, Component]]]:
    """The Script dropdown and each script's controls by title, shown while it is chosen."""
    scripts = services.extensions.scripts(tab)
    if not scripts:
        return None, {}
    titles = [script.title for _name, script in scripts]
    chosen = gr.Dropdown([NO_SCRIPT, *titles], value=NO_SCRIPT, label="Script", elem_id=f"{prefix}_script")
    controls: dict[str, dict[str, Component]] = {}
    for index, (name, script) in enumerate(scripts):
        host = services.extensions.host(name)
        with gr.Group(visible=False, elem_id=f"{prefix}_script_{index}") as group:
            controls[script.title] = _separate({p.name: param_component(p, f"{prefix}_script_{index}_{p.name}", host)
                                                for p in script.params}, combined)
        chosen.change(lambda picked, title=script.title: gr.Group(visible=picked == title), inputs=[chosen],
                      outputs=[group], queue=False, show_progress="hidden", api_visibility="private")
    return chosen, controls


def build_extension_controls(prefix: str, tab: str, services: Services) -> ExtensionControls:
    """Panels of every loaded extension with params or a panel, and the Script dropdown."""
    panels: dict[str, dict[str, Component]] = {}
    combined: dict[Component, PanelValue] = {}
    for record in services.extensions.records():
        setup = record.setup
        if setup is None or record.state.value != "enabled":
            continue
        if setup.params or any(h.hook is Hook.UI_PANEL for h in setup.handlers):
            controls = _panel(services, record.name, tab, prefix)
            if controls is not None:
                panels[record.name] = _separate(controls, combined)
    script, scripts = _scripts(prefix, services, tab, combined)
    return ExtensionControls(panels=panels, scripts=scripts, script=script, combined=combined)


def run_script_for(services: Services, owner: str | None, title: str, tab: str, request: GenerationRequest,
                   values: dict[str, Any]) -> Iterator[tuple[ProgressSnapshot | None, Any, GenerationResult | None]]:
    """Run a script for ``owner`` on a thread of its own (every job it submits is ``owner``'s); yield
    (progress, preview, None) of the job ``owner`` may see while it runs, then (None, None, result).
    The script's error is raised."""
    outcome: Future[GenerationResult] = Future()

    def work() -> None:
        try:
            outcome.set_result(services.generation.run_script(title, tab, request, values, owner=owner))
        except Exception as exc:  # raised again below, in the event that waits for it
            outcome.set_exception(exc)

    threading.Thread(target=work, name="atelier-script", daemon=True).start()
    while True:
        try:
            result = outcome.result(timeout=POLL_SECONDS)
        except FutureTimeout:
            job = services.queue.visible_current(owner)  # never another user's job, unless jobs are shared
            if job is not None:
                yield services.queue.snapshot(job), job.context.preview(), None
            continue
        yield None, None, result
        return
