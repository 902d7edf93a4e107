"""The Settings tab's "Remote engine keys", beside the "Remote engines" options: for each provider,
whether it is configured and where its key comes from, and an admin's box to save a key or remove
the saved one.

A key typed here goes to ``remote_engines.json`` in the data dir (mode 0600, see
:mod:`modules.services.remote.access_file`) and never comes back: every reply empties the box, the
status names only the key's source, and no message or log line quotes it.

Every handler is admin-only: marked :func:`~modules.server_effects.changes_server`, so the request
guard refuses it from a signed-in user (and from the network without a password), and checked again
in the handler. The status loads when the section is opened, not on page load: a page-load event
the guard refuses would greet every user who is no admin with an error.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.identity import is_admin
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.remote.catalog import Provider
from modules.services.remote.engines import KEY_VARIABLES, KeySource, ProviderStatus, RemoteEngines
from modules.ui import escape, icons
from modules.ui.session import identity_of

INTRO = ("A key saved here is kept in the server's data dir, readable by the server's account only, and wins "
         "over config.yaml and the environment. It is never shown again: the status says only where the key "
         "in force comes from.")
_QUIET = {"api_visibility": "private", "concurrency_limit": None}


def status_line(status: ProviderStatus) -> str:
    """Markdown: whether ``status``'s provider is configured, where its key comes from, its base URL."""
    provider = status.provider
    if not status.configured:
        names = " or ".join(f"`{name}`" for name in KEY_VARIABLES[provider])
        return (f"**{provider.label}**: not configured: set {names}, `{provider.value}_api_key` in config.yaml, "
                "or save a key here")
    where = {KeySource.SAVED: KeySource.SAVED.value, KeySource.CONFIG: "from config.yaml",
             KeySource.ENVIRONMENT: "from the environment"}[status.key_source]
    # The base URL is an admin's text, and a bare URL would become a live link: escaped.
    base = escape.markdown(status.base_url) if status.base_url else f"{provider.label}'s own"
    return f"**{provider.label}**: configured — key {where}; base URL {base}"


def status_texts(engines: RemoteEngines) -> list[str]:
    """The note (remote engines switched off), then one status line per provider, in Provider order."""
    note = "" if engines.enabled else (f"{icons.WARNING} Remote engines are switched off (`remote_engines` above): "
                                       "saved keys are kept, but no remote model is offered.")
    return [note, *(status_line(s) for s in engines.status())]


def save_key(engines: RemoteEngines, provider: Provider, key: str | None) -> str:
    """Save ``provider``'s key and re-read the providers' model lists; the message names no key.
    ValueError for an empty key (nothing saved)."""
    typed = (key or "").strip()  # a pasted key often carries a newline or spaces
    if not typed:
        raise ValueError(f"Type the {provider.label} API key first: nothing was saved.")
    engines.saved.save(provider, api_key=typed)
    engines.refresh()  # the new key may open more models; a server that does not answer keeps the table's
    return f"Saved the {provider.label} key."


def remove_key(engines: RemoteEngines, provider: Provider) -> str:
    """Remove ``provider``'s saved key (config.yaml's or the environment's then applies, if any)."""
    if not engines.saved.read().get(provider, {}).get("api_key"):
        return f"No {provider.label} key is saved here: nothing removed."
    engines.saved.save(provider, clear_key=True)
    engines.refresh()
    return f"Removed the saved {provider.label} key."


def _check_admin(request: gr.Request | None) -> None:
    if not is_admin(identity_of(request)):  # the guard refused it already: a second lock
        raise gr.Error("Only admins may see or change the remote engines' keys.")


def build_panel(services: Services) -> None:
    """The section (closed until opened); call inside the Settings tab, after the option sections."""
    engines = services.remote
    with gr.Accordion("Remote engine keys", open=False, elem_id="settings_remote_keys") as section:
        gr.Markdown(INTRO)
        note = gr.Markdown("", elem_id="remote_keys_note")
        lines: list[gr.Markdown] = []
        rows: list[tuple[Provider, gr.Textbox, gr.Button, gr.Button]] = []
        for provider in Provider:
            lines.append(gr.Markdown("", elem_id=f"remote_key_status_{provider.value}"))
            with gr.Row():
                box = gr.Textbox(label=f"New {provider.label} API key", type="password", value="", max_lines=1,
                                 scale=3, elem_id=f"remote_key_{provider.value}")
                save = gr.Button("Save key", scale=1, elem_id=f"remote_key_save_{provider.value}")
                remove = gr.Button("Remove saved key", variant="stop", scale=1,
                                   elem_id=f"remote_key_remove_{provider.value}")
            rows.append((provider, box, save, remove))
        result = gr.Markdown("", elem_id="remote_keys_result")
    statuses = [note, *lines]

    @changes_server  # admins only: says how the providers are configured
    def on_open(request: gr.Request) -> list[str]:
        _check_admin(request)
        return status_texts(engines)

    section.expand(on_open, outputs=statuses, show_progress="hidden", **_QUIET)
    for provider, box, save, remove in rows:
        _wire_provider(engines, provider, box, save, remove, [box, result, *statuses])


def _wire_provider(engines: RemoteEngines, provider: Provider, box: gr.Textbox, save: gr.Button,
                   remove: gr.Button, outputs: list[Any]) -> None:
    """One provider's buttons; each reply empties the key box and refreshes every status line."""

    @changes_server  # admins only: a key every user's remote jobs are billed to
    def on_save(key: str | None, request: gr.Request) -> list[str]:
        _check_admin(request)
        try:
            message = save_key(engines, provider, key)
        except ValueError as exc:
            raise gr.Error(escape.text(exc)) from exc
        return ["", message, *status_texts(engines)]

    @changes_server  # admins only
    def on_remove(request: gr.Request) -> list[str]:
        _check_admin(request)
        return ["", remove_key(engines, provider), *status_texts(engines)]

    save.click(on_save, inputs=[box], outputs=outputs, **_QUIET)
    box.submit(on_save, inputs=[box], outputs=outputs, **_QUIET)
    remove.click(on_remove, outputs=outputs, **_QUIET)
