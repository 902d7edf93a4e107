"""What a generating form shows for a remote model (``openai/dall-e-3``, ``google/imagen-...``).

Picking one shows what the model supports: its quality and style choices (when it has them), a line
naming its sizes, images per call, negative prompt, edits and price, and the size set to one it
makes; the controls it has no use for (sampler, schedule, steps, CFG, clip skip, seed, hires fix,
refiner, face restoration, tiling, and the negative prompt where it takes none) are hidden and set
to values it accepts. Picking a local checkpoint shows them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import gradio as gr

from modules.errors import AtelierError
from modules.params import GenerationRequest
from modules.remote_prices import cost_text
from modules.services.container import Services
from modules.services.remote.catalog import KNOWN_MODELS, RemoteModel
from modules.ui import escape
from modules.ui.form_fields import Component

_DEFAULTS = GenerationRequest()
# Controls a remote model has no use for, and the value each goes back to while hidden (the request's
# defaults: a job then has nothing "not applied" to report).
_HIDDEN: Mapping[str, Any] = {"sampler": _DEFAULTS.sampler, "schedule": _DEFAULTS.schedule.value,
                              "steps": _DEFAULTS.steps, "cfg_scale": _DEFAULTS.cfg_scale, "clip_skip": 1, "seed": -1,
                              "variation_strength": 0, "restore_faces": False, "tiling": False,
                              "hires.enable": False, "refiner.enable": False}


class GenerationForm(Protocol):
    fields: Any  # its FormFields
    memory_estimate: Any


def build_remote_fields(prefix: str) -> dict[str, Component]:
    """Quality and style, hidden until a remote model that has them is picked, by field name. What the
    model supports and costs is said beside Generate, where a local model's memory estimate is."""
    # Built with every known model's choices: Gradio checks a value sent back against the choices the
    # component was built with, and a remote model's own list narrows what is shown.
    qualities = list(dict.fromkeys(q for m in KNOWN_MODELS for q in m.qualities))
    styles = list(dict.fromkeys(s for m in KNOWN_MODELS for s in m.styles))
    with gr.Row():
        quality = gr.Dropdown(choices=qualities, value=None, label="Quality", visible=False,
                              elem_id=f"{prefix}_quality")
        style = gr.Dropdown(choices=styles, value=None, label="Style", visible=False, elem_id=f"{prefix}_style")
    return {"quality": quality, "style": style}


def describe(services: Services, model: RemoteModel) -> str:
    """One paragraph on what ``model`` supports and costs (Markdown, names escaped)."""
    width, height = model.sizes[0]
    price = services.remote.price(model, width, height, None)
    parts = [f"**{escape.markdown(model.title)}** (remote, {model.provider.label}): sizes {model.size_text()}",
             f"up to {model.max_images} image(s) per call (batch size)",
             "negative prompt" if model.negative_prompt else "no negative prompt",
             "edits with a mask" if model.masked_edits else "edits" if model.edits else "no img2img",
             f"from ${price:g} per image" if price is not None else "price unknown"]
    return ", ".join(parts) + ". It has no sampler, steps, CFG or seed; each Generate is billed by the provider."


def form_updates(form: GenerationForm, model: RemoteModel | None, services: Services) -> dict[Component, Any]:
    """What one form shows for ``model`` (None: a local checkpoint)."""
    fields = form.fields
    if model is None:
        updates = {fields[name]: gr.update(visible=True) for name in _HIDDEN if name in fields}
        return updates | {fields["quality"]: gr.update(visible=False, value=None),
                          fields["style"]: gr.update(visible=False, value=None),
                          form.memory_estimate: "",  # the next change of the form estimates the memory again
                          fields["negative_prompt"]: gr.update(visible=True)}
    hidden = {fields[name]: gr.update(visible=False, value=value) for name, value in _HIDDEN.items() if name in fields}
    width, height = model.sizes[0]
    negative = gr.update(visible=True) if model.negative_prompt else gr.update(visible=False, value="")
    return hidden | {
        fields["quality"]: gr.update(visible=bool(model.qualities), choices=list(model.qualities),
                                     value=model.qualities[0] if model.qualities else None),
        fields["style"]: gr.update(visible=bool(model.styles), choices=list(model.styles),
                                   value=model.styles[0] if model.styles else None),
        form.memory_estimate: remote_text(services, model, width, height, None, 1),
        fields["negative_prompt"]: negative, fields["width"]: width, fields["height"]: height}


def chosen_model(services: Services, server_title: str | None, mine: str | None) -> RemoteModel | None:
    """The remote model a page's jobs run on: its own choice ("Checkpoint for my jobs"), else the server's."""
    try:
        return services.remote.find(mine or server_title)
    except AtelierError:
        return None


def cost_estimate(services: Services, checkpoint: str | None, width: Any, height: Any, quality: str | None,
                  images: int) -> str | None:
    """"Estimated cost: ..." for a job on a remote model (None: the job's model is a local one)."""
    engine = services.engine.peek()
    try:
        model = engine.generation.remote_model(checkpoint) if engine is not None else services.remote.find(checkpoint)
    except AtelierError:
        return None
    if model is None:
        return None
    if not isinstance(width, (int, float)) or not isinstance(height, (int, float)):
        return describe(services, model)
    return remote_text(services, model, int(width), int(height), quality, images)


def remote_text(services: Services, model: RemoteModel, width: int, height: int, quality: str | None,
                images: int) -> str:
    """What the model supports, and the estimated cost of a job of ``images`` at this size and quality."""
    per_image = services.remote.price(model, width, height, quality)
    return f"{describe(services, model)}\n\n**Estimated cost:** {cost_text(per_image, images)}"


def wire_remote_fields(checkpoint: gr.Dropdown, mine: gr.Dropdown, forms: Mapping[str, GenerationForm],
                       services: Services) -> None:
    """Every change of the server's checkpoint or the page's own choice updates the forms."""
    def on_choice(server_title: str | None, own: str | None) -> dict[Component, Any]:
        model = chosen_model(services, server_title, own)
        updates: dict[Component, Any] = {}
        for form in forms.values():
            updates |= form_updates(form, model, services)
        return updates

    outputs = [c for form in forms.values() for c in _outputs(form)]
    for trigger in (checkpoint, mine):
        trigger.change(on_choice, inputs=[checkpoint, mine], outputs=outputs, queue=False, show_progress="hidden",
                       api_visibility="private")


def _outputs(form: GenerationForm) -> list[Component]:
    return [*form.fields.components_of([*_HIDDEN, "quality", "style", "negative_prompt", "width", "height"]),
            form.memory_estimate]
