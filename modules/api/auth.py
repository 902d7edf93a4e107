"""One authentication layer over everything the server answers: UI, API, docs, files.

Gradio's own ``auth=`` protects Gradio's routes only; this ASGI middleware sits in front of the
whole app. API-style routes need HTTP Basic credentials; Gradio routes accept HTTP Basic too, or
Gradio's login session. Passwords are compared in constant time and never logged; an address that
keeps failing is answered 429 for a while. With auth off, any Authorization header is ignored
(several clients send ``Basic `` with nothing after it by default).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modules.errors import ConfigError

log = logging.getLogger(__name__)
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


@dataclass(frozen=True)
class Credentials:
    """Usernames and passwords; compared in constant time."""

    users: Mapping[str, str]

    @staticmethod
    def parse(entries: Iterable[str], origin: str) -> Credentials:
        users: dict[str, str] = {}
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            user, sep, password = entry.partition(":")
            if not sep or not user or not password:
                raise ConfigError(f"{origin}: each entry must be USER:PASSWORD")  # never echo the entry
            users[user] = password
        if not users:
            raise ConfigError(f"{origin}: no USER:PASSWORD entries")
        return Credentials(MappingProxyType(users))

    def check(self, user: str, password: str) -> bool:
        ok = False
        for known_user, known_password in self.users.items():  # no early exit: timing says nothing
            ok |= hmac.compare_digest(known_user.encode(), user.encode()) & \
                hmac.compare_digest(known_password.encode(), password.encode())
        return ok

    def as_gradio(self) -> list[tuple[str, str]]:
        return list(self.users.items())


@dataclass(frozen=True)
class AuthConfig:
    ui: Credentials | None
    api: Credentials | None

    @property
    def enabled(self) -> bool:
        return self.ui is not None or self.api is not None


def load_auth(gradio_auth: str | None, gradio_auth_path: Path | None, api_auth: str | None) -> AuthConfig:
    """Credentials from the flags. The API uses the UI's unless --api-auth names its own."""
    entries: list[str] = []
    if gradio_auth:
        entries += gradio_auth.split(",")
    if gradio_auth_path:
        try:
            text = gradio_auth_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--gradio-auth-path: cannot read {gradio_auth_path} ({exc.strerror})") from exc
        entries += [part for line in text.splitlines() for part in line.split(",")]
    ui = Credentials.parse(entries, "--gradio-auth") if entries else None
    api = Credentials.parse(api_auth.split(","), "--api-auth") if api_auth else ui
    return AuthConfig(ui=ui, api=api)


class FailureLimiter:
    """Counts failed logins per address; too many in a window means 429 until it passes."""

    def __init__(self, max_failures: int = 10, window_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, address: str) -> deque[float]:
        times = self._failures[address]
        while times and times[0] < self._clock() - self.window:
            times.popleft()
        return times

    def retry_after(self, address: str) -> int | None:
        """Seconds to wait, or None when the address may try."""
        with self._lock:
            times = self._recent(address)
            if len(times) < self.max_failures:
                return None
            return max(1, int(times[0] + self.window - self._clock()) + 1)

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address).append(self._clock())


def basic_credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, matched case-insensitively."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "basic" or not token.strip():
            return None
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None
    return None


async def _send_json(send: Callable[[dict], Awaitable[None]], status: int, body: bytes,
                     extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class AuthMiddleware:
    """Guards every route. ``allow`` names the few paths open to all (the login page and its
    assets); ``is_gradio`` the paths a Gradio login session opens as well as HTTP Basic."""

    def __init__(self, app: ASGIApp, config: AuthConfig, is_gradio: Callable[[str], bool],
                 allow: Callable[[str], bool], has_session: Callable[[Scope], bool] = lambda scope: False,
                 limiter: FailureLimiter | None = None) -> None:
        self.app = app
        self.config = config
        self.is_gradio = is_gradio
        self.allow = allow
        self.has_session = has_session
        self.limiter = limiter or FailureLimiter()

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.startswith("//"):  # clients whose base URL ends in "/" ask for //sdapi/v1/...
            scope = {**scope, "path": "/" + path.lstrip("/"), "raw_path": b"/" + scope["raw_path"].lstrip(b"/")}
            path = scope["path"]
        if not self.config.enabled:
            return await self.app(scope, receive, send)
        address = (scope.get("client") or ("unknown", 0))[0]
        if self.allow(path):
            if scope["type"] == "http" and scope.get("method") == "POST" and path.endswith("/login"):
                if (wait := self.limiter.retry_after(address)) is not None:
                    return await _send_json(send, 429, b'{"detail":"Too many failed logins; try again later."}',
                                            [(b"retry-after", str(wait).encode())])
                send = self._counting_failures(send, address)  # Gradio's own login form
            return await self.app(scope, receive, send)
        wait = self.limiter.retry_after(address)
        if wait is not None and scope["type"] == "http":
            return await _send_json(send, 429, b'{"detail":"Too many failed logins; try again later."}',
                                    [(b"retry-after", str(wait).encode())])
        gradio = self.is_gradio(path)
        credentials = self.config.ui if gradio else self.config.api
        given = basic_credentials(scope.get("headers", []))
        if given is not None and credentials is not None and credentials.check(*given):
            # Who is asking, for per-user jobs (request.state.atelier_user in the routes).
            scope["state"] = {**scope.get("state", {}), "atelier_user": given[0]}
            return await self.app(scope, receive, send)
        if gradio and given is None and self.has_session(scope):
            return await self.app(scope, receive, send)
        if given is not None:
            self.limiter.failed(address)
            log.warning("Failed login from %s for %s", address, path)  # never the credentials
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return None
        return await _send_json(send, 401, b'{"detail":"Not authenticated"}',
                                [(b"www-authenticate", b'Basic realm="Atelier"')])

    def _counting_failures(self, send: Callable[[dict], Awaitable[None]],
                           address: str) -> Callable[[dict], Awaitable[None]]:
        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] in (400, 401):
                self.limiter.failed(address)
            await send(message)

        return wrapped
