"""The Account tab's "Users" section, for admins: every account with its role, limits and age; add
one, set its password, change its role and limits, remove it. On a server with no account yet it
offers to add the first admin (which turns sign-in on).

Every handler here is admin-only: marked :func:`~modules.server_effects.changes_server`, so the
request guard refuses it from a signed-in user, and checked again in the handler.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.identity import Identity, Role, UserLimits, is_admin
from modules.server_effects import changes_server
from modules.services.accounts import Account
from modules.services.container import Services
from modules.ui import escape
from modules.ui.common import ui_error
from modules.ui.session import identity_of

HEADERS = ["Name", "Role", "Limits", "Created"]
FIRST_ADMIN = "No accounts yet: add the first admin. Once it exists, everyone must sign in."
ROLES = [r.value for r in Role]
Updates = dict[Any, Any]


def limits_text(limits: UserLimits) -> str:
    parts = [f"batch ≤ {limits.max_batch}" if limits.max_batch else "",
             f"size ≤ {limits.max_size}" if limits.max_size else "",
             f"steps ≤ {limits.max_steps}" if limits.max_steps else "",
             f"{limits.jobs_per_hour} jobs/hour" if limits.jobs_per_hour else "",
             f"{limits.remote_images_per_day} remote images/day" if limits.remote_images_per_day else "",
             "checkpoints: " + ", ".join(limits.checkpoints) if limits.checkpoints else ""]
    return "; ".join(p for p in parts if p) or "none"


def account_rows(accounts: Sequence[Account]) -> list[list[object]]:
    return [[a.name, a.role.value, limits_text(a.limits), time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created_at))]
            for a in accounts]


@dataclass(frozen=True)
class LimitFields:
    max_batch: gr.Number
    max_size: gr.Number
    max_steps: gr.Number
    jobs_per_hour: gr.Number
    remote_images_per_day: gr.Number
    checkpoints: gr.Textbox

    def components(self) -> list[Any]:
        return [self.max_batch, self.max_size, self.max_steps, self.jobs_per_hour, self.remote_images_per_day,
                self.checkpoints]

    def limits(self, values: dict[Any, Any]) -> UserLimits:
        """The limits typed in (empty: none); gr.Error naming a bad one."""
        names = ("max_batch", "max_size", "max_steps", "jobs_per_hour", "remote_images_per_day")
        numbers = {name: values[getattr(self, name)] for name in names}
        # The browser sends 0 for an empty box: 0 and empty both mean no limit.
        data: dict[str, Any] = {n: None if not v else int(v) if isinstance(v, float) and v.is_integer() else v
                                for n, v in numbers.items()}
        data["checkpoints"] = values[self.checkpoints] or ""
        try:
            return UserLimits.from_dict(data)
        except ValueError as exc:
            raise gr.Error(escape.text(exc)) from exc

    def fill(self, limits: UserLimits) -> Updates:
        return {self.max_batch: limits.max_batch or 0, self.max_size: limits.max_size or 0,
                self.max_steps: limits.max_steps or 0, self.jobs_per_hour: limits.jobs_per_hour or 0,
                self.remote_images_per_day: limits.remote_images_per_day or 0,
                self.checkpoints: ", ".join(limits.checkpoints)}


def _limit_fields(prefix: str) -> LimitFields:
    with gr.Row():
        fields = [gr.Number(label=f"{label} (0: no limit)", value=0, precision=0, minimum=0,
                            elem_id=f"{prefix}_{name}")
                  for name, label in (("max_batch", "Max images per job"), ("max_size", "Max size (px)"),
                                      ("max_steps", "Max steps"), ("jobs_per_hour", "Jobs per hour"),
                                      ("remote_images_per_day", "Remote images per day"))]
    globs = gr.Textbox(label="Allowed checkpoints (globs, comma separated; empty: all)", max_lines=1,
                       elem_id=f"{prefix}_checkpoints")
    return LimitFields(*fields, globs)


@dataclass(frozen=True)
class UsersPanel:
    box: gr.Column
    note: gr.Markdown
    table: gr.Dataframe
    add_name: gr.Textbox
    add_password: gr.Textbox
    add_role: gr.Radio
    add_limits: LimitFields
    add: gr.Button
    manage: gr.Column
    pick: gr.Dropdown
    role: gr.Radio
    limits: LimitFields
    save: gr.Button
    password: gr.Textbox
    set_password: gr.Button
    sure: gr.Checkbox
    remove: gr.Button
    result: gr.Markdown

    def outputs(self) -> set[Any]:
        return {self.box, self.note, self.table, self.manage, self.pick, self.add_role}


def build_panel() -> UsersPanel:
    with gr.Column(visible=False, elem_id="account_users") as box:
        gr.Markdown("### Users")
        note = gr.Markdown("", visible=False, elem_id="account_users_note")
        table = gr.Dataframe(value=[], headers=HEADERS, interactive=False, wrap=True, elem_id="account_users_table",
                             elem_classes="atelier-dataframe")
        result = gr.Markdown("", elem_id="account_users_result")
        with gr.Accordion("Add a user", open=True):
            with gr.Row():
                add_name = gr.Textbox(label="Name", max_lines=1, elem_id="account_add_name")
                add_password = gr.Textbox(label="Password", type="password", max_lines=1,
                                          elem_id="account_add_password")
                add_role = gr.Radio(ROLES, value=Role.USER.value, label="Role", elem_id="account_add_role")
            add_limits = _limit_fields("account_add")
            add = gr.Button("Add user", variant="primary", elem_id="account_add")
        with gr.Column(visible=False) as manage:
            with gr.Accordion("Change a user", open=False):
                pick = gr.Dropdown([], label="User", value=None, allow_custom_value=True, elem_id="account_users_pick")
                role = gr.Radio(ROLES, value=None, label="Role", elem_id="account_users_role")
                limits = _limit_fields("account_users")
                save = gr.Button("Save role and limits", elem_id="account_users_save")
                with gr.Row():
                    password = gr.Textbox(label="New password", type="password", max_lines=1,
                                          elem_id="account_users_password")
                    set_password = gr.Button("Set password", elem_id="account_users_set_password")
                with gr.Row():
                    sure = gr.Checkbox(label="Yes, remove this user (their jobs' history stays)",
                                       elem_id="account_users_sure")
                    remove = gr.Button("Remove user", variant="stop", elem_id="account_users_remove")
    return UsersPanel(box, note, table, add_name, add_password, add_role, add_limits, add, manage, pick, role, limits,
                      save, password, set_password, sure, remove, result)


def panel_updates(services: Services, panel: UsersPanel, viewer: Identity | None, picked: str | None = None) -> Updates:
    """The section as ``viewer`` sees it: hidden from users; the first-admin offer without accounts."""
    if not is_admin(viewer):
        return {panel.box: gr.Column(visible=False), panel.note: gr.skip(), panel.table: [], panel.manage: gr.skip(),
                panel.pick: gr.update(choices=[], value=None), panel.add_role: gr.skip()}
    accounts = services.accounts.accounts()
    names = [a.name for a in accounts]
    return {panel.box: gr.Column(visible=True), panel.note: gr.update(value=FIRST_ADMIN, visible=not accounts),
            panel.table: account_rows(accounts), panel.manage: gr.Column(visible=bool(accounts)),
            panel.pick: gr.update(choices=names, value=picked if picked in names else None),
            panel.add_role: Role.USER.value if accounts else Role.ADMIN.value}


def _admin(request: gr.Request) -> Identity | None:
    viewer = identity_of(request)
    if not is_admin(viewer):
        raise gr.Error("Only admins may manage users.")
    return viewer


def wire_panel(services: Services, panel: UsersPanel) -> None:
    accounts = services.accounts
    p = panel

    def done(viewer: Identity | None, message: str, picked: str | None = None) -> Updates:
        return panel_updates(services, p, viewer, picked) | {p.result: message}

    @changes_server  # admins only
    def on_add(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = _admin(request)
        name, password = (values[p.add_name] or "").strip(), values[p.add_password] or ""
        first = not accounts.sign_in_required()
        try:
            accounts.add(name, password, Role(values[p.add_role]), p.add_limits.limits(values))
        except (AtelierError, ValueError) as exc:
            raise (ui_error(exc) if isinstance(exc, AtelierError) else gr.Error(escape.text(exc))) from exc
        message = (f"Added {escape.markdown(name)}: sign-in is now on. Reload the page and sign in." if first
                   else f"Added {escape.markdown(name)}.")
        return done(viewer, message) | {p.add_name: "", p.add_password: ""}

    @changes_server  # admins only (reads an account's settings)
    def on_pick(name: str | None, request: gr.Request) -> Updates:
        _admin(request)
        account = accounts.account(name) if name else None
        if account is None:
            return {p.role: None, **p.limits.fill(UserLimits())}
        return {p.role: account.role.value, **p.limits.fill(account.limits)}

    @changes_server  # admins only
    def on_save(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = _admin(request)
        name, role = _picked(values[p.pick]), values[p.role]
        limits = p.limits.limits(values)
        try:
            if role:
                accounts.set_role(name, Role(role))
            accounts.set_limits(name, limits)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return done(viewer, f"Saved {escape.markdown(name)}'s role and limits.", name)

    @changes_server  # admins only
    def on_set_password(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = _admin(request)
        name = _picked(values[p.pick])
        try:
            accounts.set_password(name, values[p.password] or "")
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return done(viewer, f"Set {escape.markdown(name)}'s password.", name) | {p.password: ""}

    @changes_server  # admins only
    def on_remove(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = _admin(request)
        name = _picked(values[p.pick])
        if not values[p.sure]:
            raise gr.Error("Tick “Yes, remove this user” first.")
        try:
            accounts.remove(name)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return done(viewer, f"Removed {escape.markdown(name)}.") | {p.sure: False}

    quiet = {"api_visibility": "private", "concurrency_limit": None}
    changed = p.outputs() | {p.result}
    p.add.click(on_add, inputs={p.add_name, p.add_password, p.add_role, *p.add_limits.components()},
                outputs=changed | {p.add_name, p.add_password}, **quiet)
    p.pick.input(on_pick, inputs=[p.pick], outputs=[p.role, *p.limits.components()], **quiet)
    p.save.click(on_save, inputs={p.pick, p.role, *p.limits.components()}, outputs=changed, **quiet)
    p.set_password.click(on_set_password, inputs={p.pick, p.password}, outputs=changed | {p.password}, **quiet)
    p.remove.click(on_remove, inputs={p.pick, p.sure}, outputs=changed | {p.sure}, **quiet)


def _picked(name: str | None) -> str:
    if not name:
        raise gr.Error("Pick a user first.")
    return name
