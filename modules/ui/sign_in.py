"""Signing in to the UI: Gradio's login page over the accounts, its sessions, the ``--gradio-auth``
users seeded as admins, and who may read which output file through Gradio's file route.

The request guard (:mod:`modules.web.guard`) does the checking; this module hands Gradio and the
guard what they need from the accounts, for the composition root.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from modules.identity import Identity
from modules.services.accounts import AccountEvent, AccountStore
from modules.services.container import Services
from modules.services.file_owners import FileOwners
from modules.web.credentials import AuthConfig
from modules.web.file_rule import file_rule
from modules.web.sessions import SessionTable

log = logging.getLogger(__name__)
_ENDS_SESSIONS = (AccountEvent.PASSWORD_CHANGED, AccountEvent.REMOVED, AccountEvent.ROLE_CHANGED)


def sign_in_for_gradio(gradio_app: Any, accounts: AccountStore, auth: AuthConfig, session_hours: float) -> SessionTable:
    """Gradio's login page over the accounts, and sessions that expire and end with an account's change.

    Gradio reads ``gradio_app.auth`` on each request: it stays None (no login page) while nothing asks
    for sign-in, and is set once the first account appears (the page shows the login on reload)."""

    async def check(name: str, password: str) -> bool:  # argon2 is slow on purpose: off the event loop
        return await asyncio.to_thread(accounts.check_password, name, password) is not None

    def login_page() -> Any:
        return check if auth.ui is not None or accounts.sign_in_required() else None

    def follow(event: AccountEvent, name: str) -> None:
        if event in _ENDS_SESSIONS and (ended := sessions.end_user(name)):
            log.info("Signed out %s (%d session(s)): account %s", name, ended, event.value.replace("_", " "))
        gradio_app.auth = login_page()

    sessions = SessionTable(max_age=session_hours * 3600)
    gradio_app.tokens = sessions
    accounts.on_change(follow)
    gradio_app.auth = login_page()
    return sessions


def seed_admins(accounts: AccountStore, auth: AuthConfig) -> None:
    """``--gradio-auth`` users not yet in the accounts become admins (as they had full access before)."""
    if auth.ui is None:
        return
    added = accounts.seed_admins(auth.ui.users)
    if added:
        log.info("Added %s from --gradio-auth as admin account(s)", ", ".join(added))


def file_rule_for(subpath: str, services: Services) -> Callable[[str, Identity | None], bool]:
    """Who may read which output file through Gradio's file route (a user: not another's)."""

    def account_name(name: str) -> str | None:
        found = services.accounts.identity(name)
        return found.name if found is not None else None

    outputs = services.paths.outputs_dir
    return file_rule(outputs, subpath, FileOwners(services.db, outputs, account_name),
                     per_user=lambda: services.options.get().outputs_per_user)
