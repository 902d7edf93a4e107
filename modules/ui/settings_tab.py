"""The Settings tab: every option of the table, by section in A1111's order, with a search box.

Each option shows its editor (from :func:`modules.ui.setting_editors.editor_kind`), its default, its
range and whether it needs a page reload or a restart. "Apply settings" applies every changed value
at once through ``ServerOptions.apply``, the path of ``POST /sdapi/v1/options`` (all or nothing, into
config.yaml); a refused value is explained next to its field and nothing is saved. Values are read
when the page loads, so a change made through the API shows after a reload (or "Reload settings").
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.errors import FieldError
from modules.options_table import OPTIONS, Option, Section
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.ui import escape, icons, remote_keys_panel
from modules.ui.extensions_tab import extension_settings_sections
from modules.ui.setting_editors import apply_options, build_editor, changed_values, editor_update


@dataclass(frozen=True)
class _Row:
    option: Option
    box: gr.Column  # shown or hidden by the search
    editor: gr.Component
    error: gr.Markdown  # why the last Apply refused this option's value


@dataclass(frozen=True)
class _Sections:
    rows: tuple[_Row, ...]
    groups: tuple[tuple[Section, gr.Accordion], ...]


def matches(option: Option, query: str) -> bool:
    """Whether the search ``query`` finds ``option`` (in its label or its name, any case)."""
    wanted = query.strip().lower()
    return not wanted or wanted in option.label.lower() or wanted in option.name.lower()


def build_tab(services: Services, demo: gr.Blocks) -> None:
    """The tab's content; call inside its ``gr.Tab``. ``demo`` loads the current values on page load."""
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=2)
        reload = gr.Button("Reload settings", elem_id="settings_reload", scale=1)
    result = gr.Markdown("", elem_id="settings_result")
    search = gr.Textbox(label="Search", placeholder="Search settings by name or description",
                        elem_id="settings_search", max_lines=1)
    nothing = gr.Markdown("Nothing found.", visible=False, elem_id="settings_nothing_found")
    sections = _build_sections(services)
    remote_keys_panel.build_panel(services)  # right below the "Remote engines" options, the last section
    extension_settings_sections(services)  # extensions' own sections, after A1111's
    editors = [row.editor for row in sections.rows]
    options = [row.option for row in sections.rows]

    def load_values() -> list[dict]:
        current = services.server_options.snapshot()
        return [editor_update(o, services, current.get(o.name)) for o in options]

    def filtered(query: str) -> list[dict]:
        shown = [matches(row.option, query or "") for row in sections.rows]
        found = {row.option.section for row, s in zip(sections.rows, shown, strict=True) if s}
        searching = bool((query or "").strip())
        return ([gr.update(visible=s) for s in shown]
                + [gr.update(visible=section in found, open=searching) for section, _ in sections.groups]
                + [gr.update(visible=not any(shown))])

    @changes_server  # as POST /sdapi/v1/options: the settings every user gets, written to config.yaml
    def apply_settings(*raws: object) -> list[object]:
        changes = changed_values(options, list(raws), services.server_options.snapshot())
        errors = apply_options(services, changes)
        by_option = {e.field: e.message for e in errors}
        notes = [gr.update(value=_error_text(by_option.get(o.name)), visible=o.name in by_option) for o in options]
        if errors:  # the sections with a refused value open, so that its reason shows
            refused = {o.section for o in options if o.name in by_option}
            return ([gr.skip() for _ in options] + notes + [gr.update(open=True) if section in refused else gr.skip()
                                                             for section, _ in sections.groups] + [_refused_text(errors)])
        summary = f"{len(changes)} setting{'s' if len(changes) != 1 else ''} changed." if changes else "Nothing changed."
        return load_values() + notes + [gr.skip() for _ in sections.groups] + [summary]

    demo.load(load_values, outputs=editors, api_visibility="private", show_progress="hidden")
    reload.click(load_values, outputs=editors, api_visibility="private")
    search.change(filtered, inputs=[search], outputs=[r.box for r in sections.rows]
                  + [acc for _, acc in sections.groups] + [nothing], api_visibility="private",
                  show_progress="hidden", queue=False)
    apply.click(apply_settings, inputs=editors, outputs=editors + [r.error for r in sections.rows]
                + [acc for _, acc in sections.groups] + [result], api_visibility="private")


def _build_sections(services: Services) -> _Sections:
    """One accordion per section that has options, in the Section enum's (A1111's) order; closed until
    opened or searched."""
    rows: list[_Row] = []
    groups: list[tuple[Section, gr.Accordion]] = []
    for section in Section:
        options = [o for o in OPTIONS if o.section is section]
        if not options:
            continue
        with gr.Accordion(section.value, open=False, elem_id=f"settings_section_{section.name.lower()}") as group:
            for option in options:
                with gr.Column(elem_id=f"settings_row_{option.name}", elem_classes="settings-row") as box:
                    editor = build_editor(option, services, f"settings_{option.name}")
                    error = gr.Markdown("", visible=False, elem_id=f"settings_error_{option.name}",
                                        elem_classes="settings-error")
                rows.append(_Row(option, box, editor, error))
        groups.append((section, group))
    return _Sections(tuple(rows), tuple(groups))


def _error_text(message: str | None) -> str:
    return f"{icons.WARNING} Not saved: {escape.markdown(message)}" if message else ""


def _refused_text(errors: list[FieldError]) -> str:
    named = [e.field for e in errors if e.field]
    general = [escape.markdown(e.message) for e in errors if not e.field]
    text = "Nothing was saved: fix " + (", ".join(f"`{name}`" for name in named) if named else "the error below")
    return text + "." + "".join(f"\n\n{icons.WARNING} {message}" for message in general)
