"""What the guard writes on a request once it knows who sent it, and the cookie rules of sign-in.

The identity travels two ways: ``scope["state"]`` (``atelier_user``, ``atelier_role``,
``atelier_authenticated``) for API routes, and the :data:`~modules.identity.USER_HEADER` /
:data:`~modules.identity.ROLE_HEADER` headers for Gradio events (which only see headers). Any
copy of those headers a client sent is dropped first, on every request, so only the guard's own
reach the app. The user name is percent-encoded in its header (headers are Latin-1).

Cookie sessions get two CSRF defences: the login's cookies are rewritten to ``SameSite=Strict``
(a page on another site cannot make the browser send them), and a state-changing request carried
only by the cookie must name this server in ``Origin`` or ``Referer``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from modules.identity import ROLE_HEADER, USER_HEADER, Identity, identity_from
from modules.web.origin import cross_site

Scope = dict[str, Any]
_USER = USER_HEADER.encode()
_ROLE = ROLE_HEADER.encode()


def without_identity(scope: Scope) -> Scope:
    """``scope`` without any identity header a client sent."""
    headers = scope.get("headers", [])
    if not any(name.lower() in (_USER, _ROLE) for name, _ in headers):
        return scope
    return {**scope, "headers": [(n, v) for n, v in headers if n.lower() not in (_USER, _ROLE)]}


def with_identity(scope: Scope, identity: Identity) -> Scope:
    """``scope`` marked as sent by ``identity`` (state for API routes, headers for Gradio events)."""
    state = {**scope.get("state", {}), "atelier_user": identity.name, "atelier_role": identity.role.value,
             "atelier_authenticated": True}
    headers = [*without_identity(scope).get("headers", []),
               (_USER, quote(identity.name, safe="").encode("ascii")), (_ROLE, identity.role.value.encode("ascii"))]
    return {**scope, "state": state, "headers": headers}


def recorded_identity(scope: Scope) -> Identity | None:
    state = scope.get("state", {})
    return identity_from(state.get("atelier_user"), state.get("atelier_role"))


def identity_in_headers(headers: Mapping[str, str]) -> Identity | None:
    """The identity the guard put in a request's headers (keys lower case), or None."""
    name = headers.get(USER_HEADER)
    return identity_from(unquote(name) if name else None, headers.get(ROLE_HEADER))


def strict_cookies(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Response headers with every ``Set-Cookie`` made ``SameSite=Strict``."""
    rewritten = []
    for name, value in headers:
        if name.lower() == b"set-cookie":
            parts = [p for p in value.split(b";") if not p.strip().lower().startswith(b"samesite")]
            value = b";".join(parts).rstrip() + b"; SameSite=Strict"
        rewritten.append((name, value))
    return rewritten


def names_this_server(headers: Mapping[str, str], allowed_origins: frozenset[str],
                      own_name: Callable[[str], bool]) -> bool:
    """Whether the request's ``Origin`` (or, without one, ``Referer``) is this server's own page."""
    origin = headers.get("origin")
    if origin is None:
        referer = headers.get("referer")
        if not referer:
            return False
        try:
            parts = urlsplit(referer.strip())
        except ValueError:
            return False
        if not parts.scheme or not parts.netloc:
            return False
        origin = f"{parts.scheme}://{parts.netloc}"
    if origin.strip().lower() == "null":
        return False
    return cross_site({"origin": origin, "host": headers.get("host", "")}, allowed_origins, own_name) is None
