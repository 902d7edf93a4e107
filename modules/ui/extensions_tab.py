"""The Extensions tab: what is installed and in which state, switching extensions on and off,
installing and updating them from git, their pip requirements, and each one's own settings section.

Enabling and disabling goes through the extension manager and applies at the next start; git and
pip go through the installer, which refuses them while Atelier serves the network without
``--enable-insecure-extension-access`` (the tab then greys those controls out and says why).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.extension_api import Hook, SettingsSection
from modules.services.container import Services
from modules.services.extension_manifest import Manifest, read_manifest
from modules.services.extensions import ExtensionState

PRIVATE = "private"  # none of these events belongs in the public API


@dataclass
class _InstallControls:
    url: gr.Textbox
    branch: gr.Textbox
    button: gr.Button
    result: gr.Textbox


def _table_html(services: Services) -> str:
    """Every extension: loaded ones as the manager saw them, then ones installed since the start."""
    disabled = services.extensions.disabled_names()
    rows = []
    records = services.extensions.records()
    for record in records:
        state = record.state.value
        if record.state is ExtensionState.ENABLED and record.name in disabled:
            state += " (disabled at the next start)"
        rows.append((record.name, record.version, "built-in" if record.builtin else "user", state, record.error or ""))
    known = {r.folder.resolve() for r in records}
    for manifest in services.installer.user_extensions():
        if manifest.folder.resolve() not in known:
            rows.append((manifest.name, manifest.version, "user", "installed (loads at the next start)", ""))
    if not rows:
        return "<p>No extensions are installed.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("Name", "Version", "Kind", "State", "Error"))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="atelier-params"><tr>{head}</tr>{body}</table>'


def _switchable(services: Services) -> list[str]:
    """Names the manager can switch (a folder with an unreadable manifest has no name to keep)."""
    return [r.name for r in services.extensions.records() if r.manifest is not None]


def _manifests(services: Services) -> dict[str, Manifest]:
    """Manifests by name; users' are read from disk, so an update or an install shows at once."""
    found = {r.name: r.manifest for r in services.extensions.records() if r.manifest is not None}
    found.update({m.name: m for m in services.installer.user_extensions()})
    return found


def _refresh(services: Services) -> tuple[Any, ...]:
    names = _switchable(services)
    disabled = services.extensions.disabled_names()
    return (_table_html(services), gr.update(choices=names, value=[n for n in names if n not in disabled]),
            gr.update(choices=services.installer.user_folders()), gr.update(choices=sorted(_manifests(services))))


def _requirements_text(services: Services, name: str | None) -> str:
    manifest = _manifests(services).get(name or "")
    if manifest is None:
        return "Choose an extension to see the Python packages it needs."
    if not manifest.requirements:
        return f"{manifest.name} declares no requirements."
    return f"{manifest.name} needs: " + ", ".join(f"`{r}`" for r in manifest.requirements)


def build_tab(services: Services, demo: gr.Blocks) -> None:
    """The tab's content; ``demo`` refreshes the lists on every page load."""
    locked = services.installer.locked_reason
    gr.Markdown("Extensions add hooks, panels, scripts and tabs. Changes here apply when Atelier restarts.")
    table = gr.HTML(_table_html(services), elem_id="extensions_table")
    with gr.Row():
        enabled = gr.CheckboxGroup(label="Enabled extensions", elem_id="extensions_enabled", scale=4)
        with gr.Column(scale=1):
            apply = gr.Button("Apply (takes effect at restart)", variant="primary", elem_id="extensions_apply")
            applied = gr.Markdown(elem_id="extensions_apply_result")
    if locked:
        gr.Markdown(f"⚠️ {locked}", elem_id="extensions_locked")
    install = _build_install(locked)
    update_target = _build_update(services, locked)
    requirements_for = _build_requirements(services, locked)
    _settings_sections(services)

    def save(selected: list[str] | None) -> tuple[str, str]:
        chosen = set(selected or [])
        try:
            for name in _switchable(services):
                services.extensions.set_enabled(name, name in chosen)
        except (AtelierError, OSError) as exc:
            raise gr.Error(f"Could not save the choice: {exc}") from exc
        gr.Info("Saved. Restart Atelier to apply it.")
        return "Saved: restart Atelier to apply it.", _table_html(services)

    apply.click(save, inputs=[enabled], outputs=[applied, table], api_visibility=PRIVATE)
    _wire_install(services, install, [table, update_target, requirements_for])
    demo.load(lambda: _refresh(services), outputs=[table, enabled, update_target, requirements_for],
              api_visibility=PRIVATE)


def _build_install(locked: str | None) -> _InstallControls:
    with gr.Accordion("Install from URL", open=True):
        with gr.Row():
            url = gr.Textbox(label="Git repository URL", placeholder="https://github.com/owner/extension.git",
                             elem_id="extensions_install_url", interactive=not locked, scale=4)
            branch = gr.Textbox(label="Branch or tag (optional)", elem_id="extensions_install_branch",
                                interactive=not locked, scale=1)
        button = gr.Button("Install", variant="primary", elem_id="extensions_install", interactive=not locked)
        result = gr.Textbox(label="Result", lines=3, interactive=False, elem_id="extensions_install_result",
                            value=locked or "")
    return _InstallControls(url, branch, button, result)


def _wire_install(services: Services, controls: _InstallControls, lists: list[Any]) -> None:
    """Install; on success refresh ``lists`` (table, update dropdown, requirements dropdown)."""

    def run(url: str | None, branch: str | None) -> tuple[Any, ...]:
        try:
            folder = services.installer.install(url or "", (branch or "").strip() or None)
            manifest = read_manifest(folder)
        except AtelierError as exc:
            return f"Not installed: {exc}", gr.skip(), gr.skip(), gr.skip()
        note = " It needs Python packages: see Requirements." if manifest.requirements else ""
        text = f"Installed {manifest.name} {manifest.version} into {folder}. Restart Atelier to load it.{note}"
        return (text, _table_html(services), gr.update(choices=services.installer.user_folders()),
                gr.update(choices=sorted(_manifests(services)), value=manifest.name))

    controls.button.click(run, inputs=[controls.url, controls.branch], outputs=[controls.result, *lists],
                          api_visibility=PRIVATE)


def _build_update(services: Services, locked: str | None) -> gr.Dropdown:
    """Check for updates / Update for one user extension; returns its dropdown."""
    with gr.Accordion("Check for updates / Update", open=True):
        with gr.Row():
            target = gr.Dropdown(label="User extension", choices=services.installer.user_folders(), value=None,
                                 elem_id="extensions_update_target", interactive=not locked, scale=3)
            check = gr.Button("Check for updates", elem_id="extensions_check_updates", interactive=not locked)
            update = gr.Button("Update", elem_id="extensions_update", interactive=not locked)
        result = gr.Textbox(label="git", lines=4, interactive=False, elem_id="extensions_update_result")

    def check_for_updates(name: str | None) -> str:
        try:
            return services.installer.check_for_updates(name or "")
        except AtelierError as exc:
            return f"Failed: {exc}"

    def run_update(name: str | None) -> str:
        try:
            return services.installer.update(name or "") + "\nUpdated: restart Atelier to load the new code."
        except AtelierError as exc:
            return f"Failed: {exc}"

    check.click(check_for_updates, inputs=[target], outputs=[result], api_visibility=PRIVATE)
    update.click(run_update, inputs=[target], outputs=[result], api_visibility=PRIVATE)
    return target


def _build_requirements(services: Services, locked: str | None) -> gr.Dropdown:
    """An extension's declared requirements, the trust box, and pip's output; returns the dropdown."""
    with gr.Accordion("Requirements", open=True):
        chosen = gr.Dropdown(label="Extension", choices=sorted(_manifests(services)), value=None,
                             elem_id="extensions_requirements_for")
        listing = gr.Markdown(_requirements_text(services, None), elem_id="extensions_requirements")
        confirm = gr.Checkbox(label="I trust this extension: install its requirements into Atelier's Python "
                                    "environment", value=False, elem_id="extensions_confirm_requirements",
                              interactive=not locked)
        install = gr.Button("Install requirements", elem_id="extensions_install_requirements", interactive=not locked)
        output = gr.Textbox(label="pip", lines=6, interactive=False, elem_id="extensions_pip_output")

    def run(name: str | None, trusted: bool) -> tuple[str, bool]:
        if not trusted:
            return "Not installed: tick 'I trust this extension' first (pip runs the packages' own code).", False
        manifest = _manifests(services).get(name or "")
        if manifest is None:
            return "Not installed: choose an extension first.", False
        try:
            return services.installer.install_requirements(manifest), False
        except AtelierError as exc:
            return f"Failed: {exc}", False

    # Another extension chosen: the trust given to the previous one does not carry over.
    chosen.change(lambda name: (_requirements_text(services, name), False), inputs=[chosen],
                  outputs=[listing, confirm], show_progress="hidden", api_visibility=PRIVATE)
    install.click(run, inputs=[chosen, confirm], outputs=[output, confirm], api_visibility=PRIVATE)
    return chosen


def _settings_sections(services: Services) -> None:
    """Each loaded extension's SETTINGS_SECTION, in its own accordion; a builder that raises shows why."""
    handlers = services.extensions.handlers(Hook.SETTINGS_SECTION)
    if not handlers:
        return
    gr.Markdown("### Extension settings")
    for record, handler in handlers:
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", record.name)
        with gr.Accordion(record.name, open=False, elem_id=f"extensions_settings_{safe}"):
            try:
                handler.call(SettingsSection(services.extensions.host(record.name)))
            except Exception as exc:  # its bug: shown here, the extension is switched off
                services.extensions.fail(record.name, Hook.SETTINGS_SECTION.name, exc)
                gr.Markdown(f"⚠️ The extension {record.name} failed to build its settings: {exc}")
