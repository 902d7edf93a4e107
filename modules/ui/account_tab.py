"""The Account tab: who is signed in (and a sign-out link), the account's password and its API
tokens; for admins, the users section (:mod:`modules.ui.users_panel`). What shows depends on the
viewer's role, set when the page loads; on a server without sign-in only the users section shows
(with the offer to add the first admin).
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.identity import Identity
from modules.services.accounts import TokenInfo
from modules.services.container import Services
from modules.ui import escape, users_panel
from modules.ui.common import ui_error
from modules.ui.session import identity_of

TOKEN_HEADERS = ["Label", "Id", "Created", "Last used", "State"]
NO_SIGN_IN = "This server has no sign-in: everyone on it has full access."
Updates = dict[Any, Any]


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp)) if stamp else "never"


def token_rows(tokens: Sequence[TokenInfo]) -> list[list[object]]:
    return [[t.label or "—", t.id, _when(t.created_at), _when(t.last_used_at), "revoked" if t.revoked else "active"]
            for t in tokens]


def token_choices(tokens: Sequence[TokenInfo]) -> list[tuple[str, str]]:
    return [(f"{t.label or '(no label)'} · {t.id}", t.id) for t in tokens if not t.revoked]


def ui_root(request: Any) -> str:
    """The UI's path on this server (its subpath, or empty), from the URL an event was sent to."""
    try:
        path = str(request.url.path)
    except AttributeError:
        return ""
    return path.split("/gradio_api/", 1)[0].rstrip("/") if "/gradio_api/" in path else ""


def who_html(viewer: Identity, root: str) -> str:
    href = html.escape(f"{root}/logout", quote=True)
    return (f'Signed in as <b>{escape.text(viewer.name)}</b> ({viewer.role.value}) · '
            f'<a href="{href}" target="_self" id="account_sign_out">Sign out</a>')


@dataclass(frozen=True)
class _Own:
    """The signed-in account's own part."""

    box: gr.Column
    who: gr.HTML
    current: gr.Textbox
    new: gr.Textbox
    repeat: gr.Textbox
    change: gr.Button
    password_result: gr.Markdown
    label: gr.Textbox
    create: gr.Button
    secret: gr.Textbox
    tokens: gr.Dataframe
    pick: gr.Dropdown
    revoke: gr.Button

    def token_outputs(self) -> set[Any]:
        return {self.tokens, self.pick}


def _build_own() -> _Own:
    with gr.Column(visible=False, elem_id="account_own") as box:
        who = gr.HTML("", elem_id="account_who")
        with gr.Accordion("Change password", open=False):
            current = gr.Textbox(label="Current password", type="password", max_lines=1, elem_id="account_current")
            new = gr.Textbox(label="New password", type="password", max_lines=1, elem_id="account_new")
            repeat = gr.Textbox(label="New password again", type="password", max_lines=1, elem_id="account_repeat")
            change = gr.Button("Change password", elem_id="account_change_password")
            password_result = gr.Markdown("", elem_id="account_password_result")
        with gr.Accordion("API tokens", open=False):
            gr.Markdown("Scripts send a token as `Authorization: Bearer <token>`. It acts as this account.")
            with gr.Row():
                label = gr.Textbox(label="Label", max_lines=1, scale=3, elem_id="account_token_label")
                create = gr.Button("Create token", scale=1, elem_id="account_token_create")
            secret = gr.Textbox(label="The new token (shown once: copy it now)", interactive=False, visible=False,
                                buttons=["copy"], elem_id="account_token_secret")
            tokens = gr.Dataframe(value=[], headers=TOKEN_HEADERS, interactive=False, wrap=True,
                                  elem_id="account_tokens", elem_classes="atelier-dataframe")
            with gr.Row():
                pick = gr.Dropdown([], label="Token", value=None, allow_custom_value=True, scale=3,
                                   elem_id="account_token_pick")
                revoke = gr.Button("Revoke", variant="stop", scale=1, elem_id="account_token_revoke")
    return _Own(box, who, current, new, repeat, change, password_result, label, create, secret, tokens, pick, revoke)


def build_tab(services: Services, demo: gr.Blocks, tab: gr.Tab) -> None:
    """The tab's content; call inside its ``gr.Tab``. ``demo``: its role-dependent parts show on load."""
    own = _build_own()
    no_sign_in = gr.Markdown(NO_SIGN_IN, visible=False, elem_id="account_no_sign_in")
    users = users_panel.build_panel()

    def on_load(request: gr.Request) -> Updates:
        viewer = identity_of(request)
        shown: Updates = {own.box: gr.Column(visible=viewer is not None), no_sign_in: gr.update(visible=viewer is None)}
        if viewer is not None:
            shown |= {own.who: who_html(viewer, ui_root(request)), **_token_updates(services, own, viewer)}
        else:
            shown |= {own.who: "", own.tokens: [], own.pick: gr.update(choices=[], value=None)}
        return shown | users_panel.panel_updates(services, users, viewer)

    loaded = {own.box, own.who, no_sign_in, *own.token_outputs(), *users.outputs()}
    for trigger in (demo.load, tab.select):
        trigger(on_load, outputs=loaded, api_visibility="private", show_progress="hidden", concurrency_limit=None)
    _wire_own(services, own)
    users_panel.wire_panel(services, users)


def _token_updates(services: Services, own: _Own, viewer: Identity) -> Updates:
    tokens = services.accounts.tokens(viewer.name)
    return {own.tokens: token_rows(tokens), own.pick: gr.update(choices=token_choices(tokens), value=None)}


def _signed_in(request: gr.Request) -> Identity:
    viewer = identity_of(request)
    if viewer is None:
        raise gr.Error("This server has no sign-in: there is no account to change.")
    return viewer


def _wire_own(services: Services, own: _Own) -> None:
    accounts = services.accounts

    def on_change_password(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = _signed_in(request)
        new = values[own.new] or ""
        if new != (values[own.repeat] or ""):
            raise gr.Error("The new passwords differ: type the same one twice.")
        if accounts.check_password(viewer.name, values[own.current] or "") is None:
            raise gr.Error("The current password is wrong.")
        try:
            accounts.set_password(viewer.name, new)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return {own.current: "", own.new: "", own.repeat: "",
                own.password_result: "Password changed. Other sign-ins of this account have ended."}

    def on_create(label: str, request: gr.Request) -> Updates:
        viewer = _signed_in(request)
        try:
            _info, secret = accounts.create_token(viewer.name, (label or "").strip())
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return {own.secret: gr.update(value=secret, visible=True), own.label: "",
                **_token_updates(services, own, viewer)}

    def on_revoke(token_id: str | None, request: gr.Request) -> Updates:
        viewer = _signed_in(request)
        if not token_id:
            raise gr.Error("Pick a token first.")
        try:
            accounts.revoke_token(token_id, viewer.name)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        gr.Info("Revoked: scripts using it are refused from now on.")
        return {own.secret: gr.update(value="", visible=False), **_token_updates(services, own, viewer)}

    quiet = {"api_visibility": "private", "concurrency_limit": None}
    own.change.click(on_change_password, inputs={own.current, own.new, own.repeat},
                     outputs={own.current, own.new, own.repeat, own.password_result}, **quiet)
    own.create.click(on_create, inputs=[own.label], outputs={own.secret, own.label, *own.token_outputs()}, **quiet)
    own.revoke.click(on_revoke, inputs=[own.pick], outputs={own.secret, *own.token_outputs()}, **quiet)
