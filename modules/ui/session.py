"""Who a browser is: the user of a live Gradio login session (for the request guard), and the
signed-in identity of an event (for per-user jobs and roles)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any

from starlette.requests import Request

from modules.identity import Identity
from modules.web.credentials import basic_credentials
from modules.web.signin import identity_in_headers


def gradio_session_user(gradio_app: Any) -> Callable[[dict[str, Any]], str | None]:
    """The user name of the live Gradio session a request's cookie names (None: no live session).

    Gradio keeps sessions in ``app.tokens`` under cookies named ``access-token[-unsecure]-<cookie_id>``;
    the browser tests log in through the real login page, so a change there fails them loudly.
    ``app.tokens`` is read on each call: the composition root replaces it with a table whose
    sessions expire (:class:`modules.web.sessions.SessionTable`).
    """
    names = (f"access-token-{gradio_app.cookie_id}", f"access-token-unsecure-{gradio_app.cookie_id}")

    def session_user(scope: dict[str, Any]) -> str | None:
        raw = b"; ".join(value for key, value in scope.get("headers", []) if key.lower() == b"cookie")
        if not raw:
            return None
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(raw.decode("latin-1"))
        except CookieError:
            return None
        for name in names:
            user = gradio_app.tokens.get(cookies[name].value) if name in cookies else None
            if user:
                return str(user)
        return None

    return session_user


def trust_the_guard(gradio_app: Any) -> None:
    """Make Gradio's own login checks see whoever the request guard signed in: a Gradio session
    (as before), and also HTTP Basic or an API token, which Gradio alone knows nothing of.

    Gradio asks its ``get_current_user`` dependency on each of its routes (its page, ``logout`` and
    everything behind ``login_check``); it is overridden to answer the guard's identity first."""
    original = next(dependency.call for route in gradio_app.routes
                    for dependency in getattr(getattr(route, "dependant", None), "dependencies", ())
                    if getattr(dependency.call, "__name__", "") == "get_current_user")

    async def signed_in_user(request: Request) -> str | None:
        identity = identity_of(request)
        if identity is not None:
            return identity.name
        user = original(request)
        return await user if inspect.isawaitable(user) else user

    gradio_app.dependency_overrides[original] = signed_in_user


def identity_of(request: Any) -> Identity | None:
    """The signed-in identity of a Gradio event, as the request guard recorded it in the headers
    (it drops any copy a client sent, so they can be trusted); None without sign-in."""
    if request is None:
        return None
    try:
        headers = {str(k).lower(): str(v) for k, v in dict(request.headers).items()}
    except (AttributeError, TypeError, ValueError):
        return None
    return identity_in_headers(headers)


def user_of(request: Any) -> str | None:
    """The signed-in user of a Gradio event: the guard's identity, else the login page's user name,
    or the HTTP Basic user the guard already checked. None without auth."""
    if request is None:
        return None
    identity = identity_of(request)
    if identity is not None:
        return identity.name
    if getattr(request, "username", None):
        return str(request.username)
    try:
        header = dict(request.headers).get("authorization", "")
    except (AttributeError, TypeError):
        return None
    given = basic_credentials([(b"authorization", header.encode("latin-1", errors="replace"))])
    return given[0] if given is not None else None
