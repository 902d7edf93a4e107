"""Same-origin checks for requests a browser may have sent on another site's behalf (CSRF).

A browser puts ``Origin`` on every cross-site POST (and ``Sec-Fetch-Site`` on every request), and a
page cannot forge either. A state-changing request whose origin is not the server's own name (the
``Host`` it was sent to, already checked against the allow-list) nor one of ``--cors-allow-origins``
is refused. Requests with neither header come from programs, not from a page in a browser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(netloc: str, default_port: int) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"//{netloc}")
        return (parts.hostname or "").rstrip("."), parts.port or default_port
    except ValueError:
        return None


def same_origin(origin: str, host_header: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) names the host the request was sent to."""
    parts = urlsplit(origin.strip().lower())
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc or parts.path not in ("", "/"):
        return False
    default = _DEFAULT_PORTS[parts.scheme]
    theirs = _host_port(parts.netloc, default)
    ours = _host_port(host_header.strip().lower(), default)
    return theirs is not None and theirs == ours and bool(theirs[0])


def cross_site(headers: Mapping[str, str], allowed_origins: frozenset[str],
               own_name: Callable[[str], bool] = lambda name: False) -> str | None:
    """Why a request looks sent from another site (for the 403), or None when it does not.
    ``own_name``: whether a host name is one the operator gave this server (``--allowed-hosts``),
    so a page served through a reverse proxy that rewrites ``Host`` is still at home."""
    origin = headers.get("origin")
    if origin is not None:
        if origin.strip().rstrip("/").lower() in allowed_origins or same_origin(origin, headers.get("host", "")):
            return None
        if own_name(_origin_host(origin)):
            return None
        return f"origin {origin[:100]!r} is not this server"
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"the browser says the request came from another site ({fetch_site[:20]})"
    return None


def _origin_host(origin: str) -> str:
    try:
        parts = urlsplit(origin.strip().lower())
    except ValueError:
        return ""
    return (parts.hostname or "").rstrip(".") if parts.scheme in _DEFAULT_PORTS else ""
