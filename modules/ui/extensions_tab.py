"""The Extensions tab: what is installed and in which state, switching extensions on and off,
installing and updating them from git, their pip requirements; and each one's own settings section,
which the Settings tab shows.

Enabling and disabling goes through the extension manager and applies at the next start; git and
pip go through the installer, which refuses them while Atelier serves the network without
``--enable-insecure-extension-access`` (the tab then greys those controls out and says why).
Installing, updating and installing requirements are two clicks: the first asks the server, which
answers with what exactly would be installed and a one-time token for this session and user; only
Confirm, presenting that token, does it. No value on the page can stand in for the token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.extension_api import API_VERSION, SUPPORTED_API_VERSIONS, Hook, SettingsSection
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.extension_install import Outcome
from modules.services.extension_manifest import Manifest
from modules.services.extensions import ExtensionState
from modules.services.install_confirmation import Action, Confirmation, Requester
from modules.ui import escape, private_events
from modules.ui.session import user_of

PRIVATE = "private"  # none of these events belongs in the public API


@dataclass(frozen=True)
class _Question:
    """One section's two clicks: ask, see what exactly would be installed, confirm."""

    ask: gr.Button
    result: gr.Textbox
    token: gr.Textbox  # hidden; the server issued it to this session, and only the server can honour it
    confirm: gr.Button


def _table_html(services: Services) -> str:
    """Every extension: loaded ones as the manager saw them, then ones installed since the start."""
    disabled = services.extensions.disabled_names()
    rows = []
    records = services.extensions.records()
    for record in records:
        state = record.state.value
        if record.state is ExtensionState.ENABLED and record.name in disabled:
            state += " (disabled at the next start)"
        api = record.manifest.api_range if record.manifest else ""
        rows.append((record.name, record.version, "built-in" if record.builtin else "user", api, state,
                     record.error or ""))
    known = {r.folder.resolve() for r in records}
    for manifest in services.installer.user_extensions():
        if manifest.folder.resolve() not in known:
            rows.append((manifest.name, manifest.version, "user", manifest.api_range,
                         "installed (loads at the next start)", ""))
    if not rows:
        return "<p>No extensions are installed.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("Name", "Version", "Kind", "Extension API", "State", "Error"))
    body = "".join("<tr>" + "".join(f"<td>{escape.text(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="atelier-table"><tr>{head}</tr>{body}</table>'


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
        return f"{escape.markdown(manifest.name)} declares no requirements."
    return f"{escape.markdown(manifest.name)} needs: " + ", ".join(
        f"<code>{escape.markdown(r)}</code>" for r in manifest.requirements)


def _requester(request: gr.Request | None) -> Requester:
    """Who clicked: the page's Gradio session and its signed-in user, never a form value."""
    return Requester(str(getattr(request, "session_hash", None) or ""), user_of(request))


def _asked(ask: Callable[[], Confirmation]) -> tuple[Any, ...]:
    """(result text, token, Confirm button) after an ask; a refusal says why and leaves nothing to confirm."""
    try:
        confirmation = ask()
    except AtelierError as exc:
        gr.Warning(escape.text(exc))
        return f"Not done: {exc}", "", gr.update(visible=False)
    minutes = f"{confirmation.expires_in_s / 60:g}"
    return (f"{confirmation.summary}\nPress Confirm within {minutes} minutes to go ahead.", confirmation.token,
            gr.update(visible=True))


def _outcome_text(outcome: Outcome) -> str:
    manifest = outcome.manifest
    if outcome.action is Action.INSTALL:
        note = " It needs Python packages: see Requirements." if manifest.requirements else ""
        return f"Installed {manifest.name} {manifest.version} into {manifest.folder}. Restart Atelier to load it.{note}"
    if outcome.action is Action.UPDATE:
        return f"{outcome.output.strip()}\nUpdated {manifest.name} to {manifest.version}: restart Atelier to load it."
    return outcome.output


def _confirm_handler(services: Services) -> Callable[..., tuple[Any, ...]]:
    """The one Confirm handler: it presents the token the server issued to this session for its ask."""

    @changes_server
    def confirm(token: str | None, request: gr.Request) -> tuple[Any, ...]:
        try:
            outcome = services.installer.confirm(token or "", _requester(request))
        except AtelierError as exc:
            gr.Warning(escape.text(exc))
            return f"Not done: {exc}", "", gr.update(visible=False), gr.skip(), gr.skip(), gr.skip()
        names = sorted(_manifests(services))
        chosen = outcome.manifest.name if outcome.action is Action.INSTALL else None
        requirements = gr.update(choices=names, value=chosen) if chosen else gr.update(choices=names)
        return (_outcome_text(outcome), "", gr.update(visible=False), _table_html(services),
                gr.update(choices=services.installer.user_folders()), requirements)

    return confirm


def _question(ask_label: str, prefix: str, locked: str | None, result: dict[str, Any]) -> _Question:
    """An ask button, its result box (``result``: the box's arguments), the hidden one-time token the
    server issues, and the Confirm button that presents it (shown only while there is a question)."""
    ask = gr.Button(ask_label, elem_id=f"extensions_{prefix}", interactive=not locked)
    box = gr.Textbox(interactive=False, **result)
    # In the page but not shown ("hidden" keeps it in the DOM, so the browser sends it back): a
    # forged event from elsewhere never saw it, and in another session or as another user it is void.
    token = gr.Textbox(visible="hidden", show_label=False, elem_id=f"extensions_{prefix}_token")
    confirm = gr.Button("Confirm", variant="stop", visible=False, elem_id=f"extensions_{prefix}_confirm")
    return _Question(ask, box, token, confirm)


def build_tab(services: Services, demo: gr.Blocks) -> None:
    """The tab's content; ``demo`` refreshes the lists on every page load."""
    locked = services.installer.locked_reason
    supported = ", ".join(str(v) for v in SUPPORTED_API_VERSIONS)
    gr.Markdown("Extensions add hooks, panels, scripts and tabs. Changes here apply when Atelier restarts. "
                f"This Atelier offers extension API {API_VERSION} and runs extensions written for API {supported}.")
    table = gr.HTML(_table_html(services), elem_id="extensions_table")
    with gr.Row():
        enabled = gr.CheckboxGroup(label="Enabled extensions", elem_id="extensions_enabled", scale=4)
        with gr.Column(scale=1):
            apply = gr.Button("Apply (takes effect at restart)", variant="primary", elem_id="extensions_apply")
            applied = gr.Markdown(elem_id="extensions_apply_result")
    if locked:
        gr.Markdown(f"⚠️ {escape.markdown(locked)}", elem_id="extensions_locked")
    install = _build_install(services, locked)
    update, update_target = _build_update(services, locked)
    requirements, requirements_for = _build_requirements(services, locked)
    gr.Markdown("Each extension's own settings are in the Settings tab, in a section named after it.")

    @changes_server
    def save(selected: list[str] | None) -> tuple[str, str]:
        chosen = set(selected or [])
        try:
            for name in _switchable(services):
                services.extensions.set_enabled(name, name in chosen)
        except (AtelierError, OSError) as exc:
            raise gr.Error(f"Could not save the choice: {escape.text(exc)}") from exc
        gr.Info("Saved. Restart Atelier to apply it.")
        return "Saved: restart Atelier to apply it.", _table_html(services)

    apply.click(save, inputs=[enabled], outputs=[applied, table], api_visibility=PRIVATE)
    confirm = _confirm_handler(services)
    for question in (install, update, requirements):
        question.confirm.click(confirm, inputs=[question.token],
                               outputs=[question.result, question.token, question.confirm, table, update_target,
                                        requirements_for], api_visibility=PRIVATE)
    demo.load(lambda: _refresh(services), outputs=[table, enabled, update_target, requirements_for],
              api_visibility=PRIVATE)


def _forget(question: _Question, *triggers: Any) -> None:
    """A changed choice: the question asked about the previous one cannot be confirmed any more."""
    for trigger in triggers:
        trigger(lambda: ("", gr.update(visible=False)), outputs=[question.token, question.confirm],
                show_progress="hidden", api_visibility=PRIVATE)


def _build_install(services: Services, locked: str | None) -> _Question:
    with gr.Accordion("Install from URL", open=True):
        with gr.Row():
            url = gr.Textbox(label="Git repository URL", placeholder="https://github.com/owner/extension.git",
                             elem_id="extensions_install_url", interactive=not locked, scale=4)
            branch = gr.Textbox(label="Branch or tag (optional)", elem_id="extensions_install_branch",
                                interactive=not locked, scale=1)
        question = _question("Install", "install", locked, {"label": "Result", "lines": 3, "value": locked or "",
                                                            "elem_id": "extensions_install_result"})

    @changes_server
    def ask(url: str | None, branch: str | None, request: gr.Request) -> tuple[Any, ...]:
        return _asked(lambda: services.installer.ask_install(url or "", _requester(request),
                                                             (branch or "").strip() or None))

    question.ask.click(ask, inputs=[url, branch], outputs=[question.result, question.token, question.confirm],
                       api_visibility=PRIVATE)
    _forget(question, url.input, branch.input)
    return question


def _build_update(services: Services, locked: str | None) -> tuple[_Question, gr.Dropdown]:
    """Check for updates / Update for one user extension; its question and its dropdown."""
    with gr.Accordion("Check for updates / Update", open=True):
        with gr.Row():
            target = gr.Dropdown(label="User extension", choices=services.installer.user_folders(), value=None,
                                 elem_id="extensions_update_target", interactive=not locked, scale=3)
            check = gr.Button("Check for updates", elem_id="extensions_check_updates", interactive=not locked)
        question = _question("Update", "update", locked, {"label": "git", "lines": 4,
                                                          "elem_id": "extensions_update_result"})

    @changes_server  # git fetch writes the extension's .git (remote refs, objects), though not its code
    def check_for_updates(name: str | None) -> str:
        try:
            return services.installer.check_for_updates(name or "")
        except AtelierError as exc:
            return f"Failed: {exc}"

    @changes_server
    def ask(name: str | None, request: gr.Request) -> tuple[Any, ...]:
        return _asked(lambda: services.installer.ask_update(name or "", _requester(request)))

    check.click(check_for_updates, inputs=[target], outputs=[question.result], api_visibility=PRIVATE)
    question.ask.click(ask, inputs=[target], outputs=[question.result, question.token, question.confirm],
                       api_visibility=PRIVATE)
    _forget(question, target.change)
    return question, target


def _build_requirements(services: Services, locked: str | None) -> tuple[_Question, gr.Dropdown]:
    """An extension's declared requirements, the question to install them, and pip's output."""
    with gr.Accordion("Requirements", open=True):
        chosen = gr.Dropdown(label="Extension", choices=sorted(_manifests(services)), value=None,
                             elem_id="extensions_requirements_for")
        listing = gr.Markdown(_requirements_text(services, None), elem_id="extensions_requirements")
        question = _question("Install requirements", "install_requirements", locked,
                             {"label": "pip", "lines": 6, "elem_id": "extensions_pip_output"})

    @changes_server
    def ask(name: str | None, request: gr.Request) -> tuple[Any, ...]:
        return _asked(lambda: services.installer.ask_requirements(name or "", _requester(request)))

    question.ask.click(ask, inputs=[chosen], outputs=[question.result, question.token, question.confirm],
                       api_visibility=PRIVATE)
    chosen.change(lambda name: _requirements_text(services, name), inputs=[chosen], outputs=[listing],
                  show_progress="hidden", api_visibility=PRIVATE)
    _forget(question, chosen.change)
    return question, chosen


def extension_settings_sections(services: Services) -> None:
    """Each loaded extension's SETTINGS_SECTION (the Settings tab's last sections), in its own
    accordion; a builder that raises shows why."""
    handlers = services.extensions.handlers(Hook.SETTINGS_SECTION)
    if not handlers:
        return
    for record, handler in handlers:
        safe = re.sub(r"[^A-Za-z0-9_-]", "_", record.name)
        with gr.Accordion(record.name, open=False, elem_id=f"extensions_settings_{safe}"):
            try:
                with private_events.extension_build(record.name):  # no public API from its events
                    handler.call(SettingsSection(services.extensions.host(record.name)))
            except Exception as exc:  # its bug: shown here, the extension is switched off
                services.extensions.fail(record.name, Hook.SETTINGS_SECTION.name, exc)
                gr.Markdown(f"⚠️ The extension {escape.markdown(record.name)} failed to build its settings: "
                            f"{escape.markdown(exc)}")
