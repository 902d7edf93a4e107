""""Send to" buttons: the selected result (image and parameters) goes to another tab."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.ui.generation_form import GenerationForm, fields_from_infotext


def _selected(infos: list[dict[str, Any]], index: int) -> dict[str, Any] | None:
    return infos[index] if infos and 0 <= index < len(infos) else None


def wire_send(source: GenerationForm, target_id: str, target: GenerationForm, tabs: gr.Tabs,
              image: Any = None, as_editor: bool = False) -> None:
    """Wire ``source``'s "Send to ``target_id``" button: fills ``target``'s fields (and ``image``)."""
    button = source.send_buttons[target_id]
    outputs = ([image] if image is not None else []) + target.request_fields() + [tabs]

    def send(infos: list[dict[str, Any]], index: int) -> list[Any]:
        chosen = _selected(infos, index)
        if chosen is None:
            raise gr.Error("Generate an image first, then select it in the gallery.")
        values: list[Any] = []
        if image is not None:
            path = chosen["path"]
            values.append({"background": path, "layers": [], "composite": path} if as_editor else path)
        return values + fields_from_infotext(chosen["infotext"]) + [gr.Tabs(selected=target_id)]

    button.click(send, inputs=[source.infos, source.selected], outputs=outputs, api_visibility="private")
