"""Who a browser is: a live Gradio login session (for the auth middleware), and the signed-in user
of an event (for per-user jobs)."""

from __future__ import annotations

from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any

from modules.web.credentials import basic_credentials


def gradio_session_check(gradio_app: Any) -> Callable[[dict[str, Any]], bool]:
    """A check that a request carries a live Gradio session cookie of ``gradio_app``.

    Gradio keeps sessions in ``app.tokens`` under cookies named ``access-token[-unsecure]-<cookie_id>``;
    the browser tests log in through the real login page, so a change there fails them loudly.
    """
    names = (f"access-token-{gradio_app.cookie_id}", f"access-token-unsecure-{gradio_app.cookie_id}")

    def has_session(scope: dict[str, Any]) -> bool:
        raw = b"; ".join(value for key, value in scope.get("headers", []) if key.lower() == b"cookie")
        if not raw:
            return False
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(raw.decode("latin-1"))
        except CookieError:
            return False
        return any(name in cookies and cookies[name].value in gradio_app.tokens for name in names)

    return has_session


def user_of(request: Any) -> str | None:
    """The signed-in user of a Gradio event: the login page's user name, or the HTTP Basic user the
    auth layer already checked. None without auth."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return str(request.username)
    try:
        header = dict(request.headers).get("authorization", "")
    except (AttributeError, TypeError):
        return None
    given = basic_credentials([(b"authorization", header.encode("latin-1", errors="replace"))])
    return given[0] if given is not None else None
