"""The quicksettings beside the checkpoint and VAE choices (A1111's ``quicksettings_list``).

An editor for every option is built, hidden; the page shows the ones the list names when it loads
(so a changed list needs a page reload, as the option says). A change applies at once through
``ServerOptions.apply``, the path of ``POST /sdapi/v1/options``; a refused value is explained and the
editor shows the value in force again. The checkpoint and VAE choices are always in the bar.
"""

from __future__ import annotations

import gradio as gr

from modules.options_table import CHECKPOINT_OPTION, OPTIONS, Option
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.ui import escape
from modules.ui.setting_editors import (
    EditorKind,
    apply_options,
    build_editor,
    changed_values,
    editor_kind,
    editor_update,
)

IN_THE_BAR = frozenset({CHECKPOINT_OPTION, "sd_vae"})  # always there, with their refresh buttons


def quick_options() -> list[Option]:
    """The options the bar can show: all but those always in it and the list itself."""
    return [o for o in OPTIONS if o.name not in IN_THE_BAR and editor_kind(o) is not EditorKind.MULTISELECT]


def build_quicksettings(services: Services, demo: gr.Blocks) -> None:
    """One hidden editor per option (``setting_<name>``, A1111's id); call inside the top bar's row."""
    options = quick_options()
    with gr.Column(scale=2, min_width=160, elem_id="quicksettings_more"), gr.Row():
        editors = [build_editor(o, services, f"setting_{o.name}", described=False, visible=False, scale=1,
                                min_width=0) for o in options]

    def shown() -> list[dict]:
        listed = set(services.options.get().quicksettings_list)
        current = services.server_options.snapshot()
        return [{**editor_update(o, services, current.get(o.name)), "visible": o.name in listed} for o in options]

    for option, editor in zip(options, editors, strict=True):
        _wire(services, option, editor)
    demo.load(shown, outputs=editors, api_visibility="private", show_progress="hidden")


def _wire(services: Services, option: Option, editor: gr.Component) -> None:
    """Apply a change of ``editor`` at once (numbers on Enter or leaving the box)."""

    @changes_server  # as POST /sdapi/v1/options: a setting every user gets, written to config.yaml
    def apply_quick(raw: object) -> dict:
        current = services.server_options.snapshot()
        errors = apply_options(services, changed_values([option], [raw], current))
        if errors:
            gr.Warning(escape.text(f"{option.label or option.name}: " + "; ".join(e.message for e in errors)
                                   + " — not saved."))
            return editor_update(option, services, current.get(option.name))
        return gr.skip()

    kind = editor_kind(option)
    triggers = ([editor.submit, editor.blur] if kind in (EditorKind.INTEGER, EditorKind.NUMBER, EditorKind.TEXTBOX)
                else [editor.input])
    gr.on(triggers, apply_quick, inputs=[editor], outputs=[editor], api_visibility="private", show_progress="hidden")
