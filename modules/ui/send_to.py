""""Send to" buttons: an image and its parameters go to a generating tab (fields, image, checkpoint)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from modules.infotext import parse_infotext
from modules.services.container import Services
from modules.ui import escape
from modules.ui.generation_form import GenerationForm, fields_from_infotext
from modules.ui.infotext_fill import switch_to_checkpoint_of

Pick = Callable[..., tuple[str | None, str]]  # (image path or None, infotext) from the button's inputs


class SendWiring:
    """Everything a send needs besides the source: the tab switcher, the checkpoint list, services."""

    def __init__(self, services: Services, tabs: gr.Tabs, checkpoint: gr.Dropdown) -> None:
        self.services = services
        self.tabs = tabs
        self.checkpoint = checkpoint

    def wire(self, button: gr.Button, inputs: list[Any], pick: Pick, target_id: str, target: GenerationForm,
             image: Any = None, as_editor: bool = False) -> None:
        """On click: fill ``target``'s fields from the picked infotext, its ``image``, switch checkpoint and tab."""
        outputs = ([image] if image is not None else []) + target.request_fields() + [self.checkpoint, self.tabs]

        def send(*values: Any) -> list[Any]:
            path, text = pick(*values)
            if not text and path is None:
                raise gr.Error("Nothing to send: generate or choose an image first.")
            result: list[Any] = []
            if image is not None:
                result.append({"background": path, "layers": [], "composite": path} if as_editor and path else path)
            result += (fields_from_infotext(text, target, self.services) if text
                       else [gr.skip()] * len(target.request_fields()))
            warning = switch_to_checkpoint_of(self.services, parse_infotext(text).params) if text else None
            if warning:
                gr.Warning(escape.text(warning))  # it quotes the image's checkpoint name
            current = self.services.models.current()
            result.append(gr.update(value=current.title) if current else gr.skip())
            return result + [gr.Tabs(selected=target_id)]

        button.click(send, inputs=inputs, outputs=outputs, api_visibility="private")

    def from_form(self, source: GenerationForm, target_id: str, target: GenerationForm, image: Any = None,
                  as_editor: bool = False) -> None:
        """A result gallery's "Send to" button: the selected image (or the first)."""

        def pick(infos: list[dict[str, Any]], index: int) -> tuple[str | None, str]:
            chosen = infos[index] if infos and 0 <= index < len(infos) else None
            return (chosen["path"], chosen["infotext"]) if chosen else (None, "")

        self.wire(source.send_buttons[target_id], [source.infos, source.selected], pick, target_id, target,
                  image, as_editor)
