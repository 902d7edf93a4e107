"""Prompt styles in a generating tab: choose several, apply them into the prompt, save, edit, delete."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.errors import AtelierError
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.styles import PromptStyle
from modules.ui import escape
from modules.ui.common import ui_error


@dataclass
class StylesControls:
    chosen: gr.Dropdown  # the names applied to the next job


def build_styles(prefix: str, services: Services, prompt: gr.Textbox, negative: gr.Textbox) -> StylesControls:
    """A multi-select of styles, an "apply into the prompt" button, and a small editor."""
    store = services.styles
    with gr.Row():
        chosen = gr.Dropdown(choices=list(store.names()), value=[], multiselect=True, label="Styles",
                             elem_id=f"{prefix}_styles", scale=4)
        apply = gr.Button("Apply styles", size="sm", elem_id=f"{prefix}_style_apply", scale=1)
    with gr.Accordion("Style editor", open=False, elem_id=f"{prefix}_style_editor"):
        name = gr.Dropdown(choices=list(store.names()), value=None, allow_custom_value=True, label="Style name",
                           elem_id=f"{prefix}_edit_style_name")
        style_prompt = gr.Textbox(label="Style prompt ({prompt} marks where the prompt goes)", lines=2,
                                  elem_id=f"{prefix}_edit_style_prompt")
        style_negative = gr.Textbox(label="Style negative prompt", lines=2, elem_id=f"{prefix}_edit_style_neg_prompt")
        with gr.Row():
            copy_prompt = gr.Button("Copy the current prompt", size="sm", elem_id=f"{prefix}_style_copy")
            save = gr.Button("Save style", size="sm", variant="primary", elem_id=f"{prefix}_style_save")
            delete = gr.Button("Delete style", size="sm", variant="stop", elem_id=f"{prefix}_style_delete")

    def refreshed(value: str | None = None) -> tuple[dict, dict]:
        names = list(store.names())
        return gr.update(choices=names), gr.update(choices=names, value=value)

    def on_apply(names: list[str], text: str, neg: str) -> tuple[str, str, list[str]]:
        styled, styled_neg = store.apply(names or [], text or "", neg or "")
        return styled, styled_neg, []  # applied into the text: not applied a second time at Generate

    def on_pick(style_name: str | None) -> tuple[str, str]:
        style = store.get(style_name) if style_name else None
        return (style.prompt, style.negative_prompt) if style else (gr.skip(), gr.skip())

    @changes_server  # writes styles.csv
    def on_save(style_name: str | None, text: str, neg: str) -> tuple[dict, dict]:
        try:
            store.save(PromptStyle(name=(style_name or "").strip(), prompt=text or "", negative_prompt=neg or ""))
        except AtelierError as exc:
            raise ui_error(exc) from exc
        gr.Info(f"Saved style {escape.text(repr(style_name))}.")
        return refreshed(style_name)

    @changes_server  # writes styles.csv
    def on_delete(style_name: str | None) -> tuple[dict, dict]:
        if not style_name or not store.delete(style_name):
            raise gr.Error("Choose a saved style to delete.")
        gr.Info(f"Deleted style {escape.text(repr(style_name))}.")
        return refreshed(None)

    private = {"api_visibility": "private"}
    apply.click(on_apply, inputs=[chosen, prompt, negative], outputs=[prompt, negative, chosen], **private)
    name.input(on_pick, inputs=[name], outputs=[style_prompt, style_negative], **private)
    copy_prompt.click(lambda p, n: (p, n), inputs=[prompt, negative], outputs=[style_prompt, style_negative], **private)
    save.click(on_save, inputs=[name, style_prompt, style_negative], outputs=[chosen, name], **private)
    delete.click(on_delete, inputs=[name], outputs=[chosen, name], **private)
    return StylesControls(chosen=chosen)
