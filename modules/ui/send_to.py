""""Send to" buttons: an image and its parameters go to a generating tab (fields, image, checkpoint).

The target's fields are filled by name from the infotext (:func:`values_from_infotext`); the
picture goes to the field the target declares as ``init_image`` (img2img's image, inpaint's editor).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from modules.infotext import parse_infotext
from modules.services.container import Services
from modules.ui import escape
from modules.ui.form_fields import Component, filled_names
from modules.ui.generation_form import GenerationForm
from modules.ui.infotext_fill import (
    extension_values,
    override_values,
    switch_to_checkpoint_of,
    values_from_infotext,
)
from modules.ui.override_settings import OVERRIDE_FIELD

Pick = Callable[..., tuple[str | None, str]]  # (image path or None, infotext) from the button's inputs


def _image_value(image: Component, path: str | None) -> Any:
    """What ``image`` shows for the picked file: an editor gets it as its background."""
    if isinstance(image, gr.ImageEditor) and path:
        return {"background": path, "layers": [], "composite": path}
    return path


class SendWiring:
    """Everything a send needs besides the source: the tab switcher, the checkpoint list, services."""

    def __init__(self, services: Services, tabs: gr.Tabs, checkpoint: gr.Dropdown) -> None:
        self.services = services
        self.tabs = tabs
        self.checkpoint = checkpoint

    def wire(self, button: gr.Button, inputs: list[Any], pick: Pick, target_id: str, target: GenerationForm,
             with_image: bool = True, between_tabs: bool = False) -> None:
        """On click: fill ``target``'s fields from the picked infotext and (``with_image``) its
        ``init_image`` from the picked file, then switch checkpoint and tab. ``between_tabs``: a
        result sent from one tab to another, which carries the seed and the size only when the
        settings say so (A1111's send_seed, send_size)."""
        image = target.fields.get("init_image") if with_image else None
        filled = target.fields.components_of([*filled_names(), OVERRIDE_FIELD])
        panels = target.extensions.outputs()  # extensions' panels, filled by their infotext readers
        outputs = ([image] if image is not None else []) + filled + panels + [self.checkpoint, self.tabs]

        def send(*values: Any) -> dict[Component, Any]:
            path, text = pick(*values)
            if not text and path is None:
                raise gr.Error("Nothing to send: generate or choose an image first.")
            updates: dict[Component, Any] = {}
            if image is not None:
                updates[image] = _image_value(image, path)
            if text:
                values = values_from_infotext(text, self.services) | override_values(text, target.fields, self.services)
                if between_tabs:
                    values = self._kept_by_settings(values)
                updates |= target.fields.fill(values)
                updates |= target.extensions.fill(extension_values(text, self.services))
                warning = switch_to_checkpoint_of(self.services, parse_infotext(text).params)
                if warning:
                    gr.Warning(escape.text(warning))  # it quotes the image's checkpoint name
            current = self.services.models.current()
            if current is not None:
                updates[self.checkpoint] = gr.update(value=current.title)
            updates[self.tabs] = gr.Tabs(selected=target_id)
            return updates

        button.click(send, inputs=inputs, outputs=outputs, api_visibility="private")

    def from_form(self, source: GenerationForm, target_id: str, target: GenerationForm) -> None:
        """A result gallery's "Send to" button: the selected image (or the first)."""

        self.wire(source.send_buttons[target_id], [source.infos, source.selected], pick_shown, target_id, target,
                  between_tabs=True)

    def _kept_by_settings(self, values: dict[str, Any]) -> dict[str, Any]:
        settings = self.services.options.get()
        dropped = ({"seed"} if not settings.send_seed else set()) | ({"width", "height"} if not settings.send_size
                                                                      else set())
        return {name: value for name, value in values.items() if name not in dropped}

    def to_extras(self, button: gr.Button, inputs: list[Any], pick: Pick, image: gr.Image) -> None:
        """A "Send to extras" button: the picked image goes to the Extras tab's single image."""

        def send(*values: Any) -> tuple[str, Any]:
            path, _text = pick(*values)
            if path is None:
                raise gr.Error("Nothing to send: generate or choose an image first.")
            return path, gr.Tabs(selected="extras")

        button.click(send, inputs=inputs, outputs=[image, self.tabs], api_visibility="private")

    def from_form_to_extras(self, source: GenerationForm, image: gr.Image) -> None:
        """A result gallery's "Send to extras" button: the selected image (or the first)."""
        self.to_extras(source.send_buttons["extras"], [source.infos, source.selected], pick_shown, image)


def pick_shown(infos: list[dict[str, Any]], index: int) -> tuple[str | None, str]:
    """The (path, infotext) of the selected result among ``infos`` (the first when none is)."""
    chosen = infos[index] if infos and 0 <= index < len(infos) else (infos[0] if infos else None)
    return (chosen["path"], chosen["infotext"]) if chosen else (None, "")
