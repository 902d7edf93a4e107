"""The controls only some model families use (Forge's "Distilled CFG Scale", the flow "Shift"), and
what the checkpoint choice changes in every generating form.

The controls are hidden until the selected checkpoint's family uses them. Switching to or from a
flow-matching family (SD 3.5, FLUX, Z-Image) also sets the form to that family's defaults (sampler,
schedule, steps, CFG, size), as Forge's UI presets do; between Stable Diffusion checkpoints nothing
else changes, as in A1111. A hidden control goes back to the value every family accepts, so a job
never carries a value its model would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import gradio as gr

from modules.model_families import FAMILIES, FamilyInfo, Feature
from modules.params import DEFAULT_DISTILLED_CFG_SCALE, DISTILLED_CFG_RANGE, SHIFT_RANGE
from modules.services.container import Services
from modules.ui.form_checks import span
from modules.ui.form_fields import Component


class GenerationForm(Protocol):
    """What this module needs of a tab's form (modules.ui.generation_form.GenerationForm)."""

    fields: Any  # its FormFields: components by request field name

# The form fields a family's defaults set (FamilyDefaults attribute = form field name).
_DEFAULT_FIELDS = ("sampler", "schedule", "steps", "cfg_scale", "width", "height")


def build_family_fields(prefix: str) -> dict[str, Component]:
    """The two controls, hidden until a family that uses them is selected, by field name."""
    with gr.Row():
        distilled = gr.Slider(minimum=DISTILLED_CFG_RANGE[0], maximum=DISTILLED_CFG_RANGE[1], step=0.1,
                              value=DEFAULT_DISTILLED_CFG_SCALE, label="Distilled CFG Scale", visible=False,
                              elem_id=f"{prefix}_distilled_cfg_scale")
        shift = gr.Number(value=None, label="Shift", info=f"empty: the model's own; {span(*SHIFT_RANGE)}",
                          visible=False, elem_id=f"{prefix}_shift")
    return {"distilled_cfg_scale": distilled, "shift": shift}


def family_of_title(services: Services, title: str | None) -> FamilyInfo | None:
    """The family of the checkpoint ``title`` names; None before the engine is up or when unknown."""
    engine = services.engine.peek()
    info = services.registry.find(title) if title else None
    if engine is None or info is None:
        return None
    return FAMILIES.get(engine.models.families.family_of(info.path) or "")


def form_updates(form: GenerationForm, family: FamilyInfo | None, presets: bool) -> dict[Component, Any]:
    """What one form shows for ``family``: the family's controls, and with ``presets`` its defaults."""
    distilled = family is not None and family.supports(Feature.DISTILLED_CFG)
    flow = family is not None and family.supports(Feature.SHIFT)
    updates: dict[Component, Any] = {
        form.fields["distilled_cfg_scale"]: gr.update(visible=distilled) if distilled
        else gr.update(visible=False, value=DEFAULT_DISTILLED_CFG_SCALE),
        form.fields["shift"]: gr.update(visible=flow) if flow else gr.update(visible=False, value=None),
    }
    if family is None or not presets:
        return updates
    defaults = family.defaults
    values = {name: getattr(defaults, name) for name in _DEFAULT_FIELDS}
    if defaults.distilled_cfg_scale is not None:
        values["distilled_cfg_scale"] = defaults.distilled_cfg_scale
    if not family.supports(Feature.CLIP_SKIP):
        values["clip_skip"] = 1  # the family has no CLIP layers to skip: 1 is the one value it takes
    for name, value in values.items():
        if name in form.fields:
            updates[form.fields[name]] = gr.update(value=value, visible=True) if name == "distilled_cfg_scale" \
                else value
    return updates


def wire_family_fields(checkpoint: gr.Dropdown, forms: Mapping[str, GenerationForm], services: Services) -> None:
    """Every checkpoint change (the user's choice, or the page learning which is loaded) updates the forms."""
    last_group = gr.State("")  # the family group this page last showed

    def on_checkpoint(title: str | None, shown: str) -> dict[Component, Any]:
        family = family_of_title(services, title)
        if family is None:
            return {last_group: shown, **{c: gr.update() for f in forms.values() for c in _outputs(f)}}
        was_flow = shown not in ("", "sd", "xl")
        presets = family.group != shown and (family.is_flow or was_flow)
        updates: dict[Component, Any] = {last_group: family.group}
        for form in forms.values():
            updates |= form_updates(form, family, presets)
        return updates

    outputs = [last_group, *(c for form in forms.values() for c in _outputs(form))]
    checkpoint.change(on_checkpoint, inputs=[checkpoint, last_group], outputs=outputs, queue=False,
                      show_progress="hidden", api_visibility="private")


def _outputs(form: GenerationForm) -> list[Component]:
    return form.fields.components_of(["distilled_cfg_scale", "shift", *_DEFAULT_FIELDS, "clip_skip"])
