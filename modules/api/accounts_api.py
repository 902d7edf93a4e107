"""The accounts routes: the caller's own account (``/sdapi/v1/account``: who am I, password, API
tokens) and an admin's user management (``/sdapi/v1/users``); docs/api-queue.md lists them.

The rules live in :class:`modules.services.accounts.AccountStore`; this module reads bodies, asks
it, and shapes replies. User management changes the server for everyone, so its routes are marked
(:func:`modules.server_effects.changes_server`): the request guard refuses them to users, and the
routes check the role again. A token's secret is in the reply that creates it and nowhere after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from modules.api.queue_api import viewer_of
from modules.errors import AccountError, AccountNotFoundError, FieldError, ForbiddenError, ValidationError
from modules.identity import Identity, Role, UserLimits
from modules.server_effects import changes_server
from modules.services.accounts import Account, AccountStore, TokenInfo
from modules.services.container import Services

JsonBody = Callable[..., Awaitable[Any]]
MAX_LABEL = 100


def account_item(account: Account) -> dict[str, Any]:
    return {"name": account.name, "role": account.role.value, "limits": account.limits.as_dict(),
            "created_at": account.created_at}


def token_item(token: TokenInfo) -> dict[str, Any]:
    return {"id": token.id, "label": token.label, "created_at": token.created_at,
            "last_used_at": token.last_used_at, "revoked": token.revoked}


def _text(data: dict[str, Any], name: str, required: bool = True) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise ValidationError([FieldError(name, "must be a non-empty string")])
    return value


def _role(data: dict[str, Any], required: bool) -> Role | None:
    value = data.get("role")
    if value is None and not required:
        return None
    try:
        return Role(value)
    except ValueError:
        raise ValidationError([FieldError("role", "must be 'admin' or 'user'")]) from None


def _limits(data: dict[str, Any]) -> UserLimits | None:
    value = data.get("limits")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError([FieldError("limits", "must be an object of limit names to values")])
    try:
        return UserLimits.from_dict(value)
    except ValueError as exc:
        raise ValidationError([FieldError("limits", str(exc))]) from None


async def _object(json_body: JsonBody, request: Request) -> dict[str, Any]:
    data = await json_body(request, required=True)
    if not isinstance(data, dict):
        raise ValidationError([FieldError("body", "must be a JSON object")])
    return data


def _account_holder(accounts: AccountStore, viewer: Identity | None) -> str:
    """The caller's account name; an AccountError when the caller has none (no sign-in, or an
    ``--api-auth`` login, which is not an account)."""
    if viewer is None or accounts.account(viewer.name) is None:
        raise AccountError("This needs a signed-in account (API tokens and passwords belong to accounts; "
                           "create one with `app.py users add` or in the UI).")
    return viewer.name


def _admin(request: Request) -> None:
    viewer = viewer_of(request)
    if viewer is not None and not viewer.is_admin:  # the guard refused it already; a second lock
        raise ForbiddenError("Managing users is for admins only.")


def router(services: Services, json_body: JsonBody) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1", tags=["accounts"])

    def accounts() -> AccountStore:
        return services.accounts

    @r.get("/account")
    def account(request: Request) -> dict[str, Any]:
        """Who the caller is: name, role and limits (no sign-in: full access, no name)."""
        viewer = viewer_of(request)
        if viewer is None:
            return {"name": None, "role": Role.ADMIN.value, "signed_in": False, "limits": UserLimits().as_dict()}
        found = accounts().account(viewer.name)
        limits = found.limits if found is not None else UserLimits()
        return {"name": viewer.name, "role": viewer.role.value, "signed_in": True, "limits": limits.as_dict()}

    @r.post("/account/password")
    async def change_password(request: Request) -> dict[str, Any]:
        """Change the caller's password; the current one must be given."""
        data = await _object(json_body, request)
        current, new = _text(data, "current_password"), _text(data, "new_password")
        name = await asyncio.to_thread(_account_holder, accounts(), viewer_of(request))
        if await asyncio.to_thread(accounts().check_password, name, current) is None:
            raise AccountError("The current password is wrong.")
        await asyncio.to_thread(accounts().set_password, name, new)
        return {"name": name, "changed": True}

    @r.get("/account/tokens")
    def tokens(request: Request) -> list[dict[str, Any]]:
        """The caller's API tokens (never their secrets)."""
        return [token_item(t) for t in accounts().tokens(_account_holder(accounts(), viewer_of(request)))]

    @r.post("/account/tokens")
    async def create_token(request: Request) -> dict[str, Any]:
        """A new API token for the caller: its secret is in this reply only."""
        data = await json_body(request)
        label = data.get("label", "") if isinstance(data, dict) else None
        if not isinstance(label, str) or len(label) > MAX_LABEL:
            raise ValidationError([FieldError("label", f"must be a string of at most {MAX_LABEL} characters")])
        name = await asyncio.to_thread(_account_holder, accounts(), viewer_of(request))
        info, secret = await asyncio.to_thread(accounts().create_token, name, label.strip())
        return {"id": info.id, "token": secret, "label": info.label, "created_at": info.created_at}

    @r.delete("/account/tokens/{token_id}")
    def revoke_token(request: Request, token_id: str) -> dict[str, Any]:
        """Revoke one of the caller's tokens: it stops working at once."""
        accounts().revoke_token(token_id, _account_holder(accounts(), viewer_of(request)))
        return {"id": token_id, "revoked": True}

    _register_users(r, services, json_body)
    return r


def _register_users(r: APIRouter, services: Services, json_body: JsonBody) -> None:
    """An admin's user management."""

    @r.get("/users")
    @changes_server
    def users(request: Request) -> list[dict[str, Any]]:
        _admin(request)
        return [account_item(a) for a in services.accounts.accounts()]

    @r.post("/users")
    @changes_server
    async def add_user(request: Request) -> Any:
        _admin(request)
        data = await _object(json_body, request)
        name, password = _text(data, "name"), _text(data, "password")
        role, limits = _role(data, required=True), _limits(data) or UserLimits()
        store = services.accounts
        if await asyncio.to_thread(store.account, name) is not None:
            return _taken(name)
        added = await asyncio.to_thread(store.add, name, password, role, limits)
        return account_item(added)

    @r.post("/users/{name}")
    @changes_server
    async def change_user(request: Request, name: str) -> dict[str, Any]:
        _admin(request)
        data = await _object(json_body, request)
        password, role, limits = _text(data, "password", required=False), _role(data, False), _limits(data)
        await asyncio.to_thread(_change, services.accounts, name, password, role, limits)
        return account_item(_existing(services.accounts, name))

    @r.delete("/users/{name}")
    @changes_server
    def remove_user(request: Request, name: str) -> dict[str, Any]:
        """Remove an account and its API tokens; its jobs stay in the history."""
        _admin(request)
        services.accounts.remove(name)  # its tokens go with it; the last admin stays (AccountError)
        return {"name": name, "removed": True}


def _existing(store: AccountStore, name: str) -> Account:
    found = store.account(name)
    if found is None:
        raise AccountNotFoundError(f"No account named {name!r}.")
    return found


def _change(store: AccountStore, name: str, password: str | None, role: Role | None,
            limits: UserLimits | None) -> None:
    _existing(store, name)
    if password is not None:
        store.set_password(name, password)
    if role is not None:
        store.set_role(name, role)
    if limits is not None:
        store.set_limits(name, limits)


def _taken(name: str) -> Any:
    return JSONResponse({"detail": f"An account named {name!r} already exists.", "error": "AccountError"},
                        status_code=409)
