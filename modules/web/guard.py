"""The one guard in front of every route and every UI event: host, body size, origin, content
type, login, the network rule. Nothing reaches Gradio or the API without passing it.

Each request goes through the same numbered checks (:meth:`RequestGuard.__call__`); a refusal is
answered before any work, with a status and a ``detail`` that says which rule said no. The faces
tell the guard the few things only they know (:class:`Faces`): which paths are the UI's, which
are open before a login, whether a Gradio session cookie is live, and which requests change the
server for everyone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from modules.server_effects import Effect
from modules.web import body as bodies
from modules.web.credentials import AuthConfig, Credentials, basic_credentials
from modules.web.hosts import HostPolicy, host_name_of, is_loopback
from modules.web.limiter import FailureLimiter
from modules.web.log_safety import printable
from modules.web.origin import SAFE_METHODS, cross_site

log = logging.getLogger(__name__)
Scope = dict[str, Any]
ASGIApp = Callable[[Scope, bodies.Receive, bodies.Send], Any]

MAX_BODY_BYTES = 64 * 1024 * 1024  # a few large base64 images or one upload; more is refused as it streams
MAX_LOGIN_BODY = 64 * 1024
_JSON_TYPES = ("application/json",)


class EffectResolver(Protocol):
    """What a face says about a request's reach (see :mod:`modules.server_effects`)."""

    def needs_body(self, method: str, path: str) -> bool: ...

    def effect(self, method: str, path: str, body: bytes) -> Effect: ...


@dataclass(frozen=True)
class Faces:
    """What only the faces know, handed to the guard by the composition root."""

    is_ui: Callable[[str], bool] = lambda path: False
    is_open: Callable[[str], bool] = lambda path: False
    has_session: Callable[[Scope], bool] = lambda scope: False
    # The login form's one path for any spelling of it (case, slashes), or None for other paths.
    login_route: Callable[[str], str | None] = lambda path: None
    effects: tuple[EffectResolver, ...] = ()


@dataclass(frozen=True)
class GuardConfig:
    auth: AuthConfig
    hosts: HostPolicy = field(default_factory=HostPolicy)
    listen: bool = False
    cors_origins: frozenset[str] = frozenset()
    max_body: int = MAX_BODY_BYTES


@dataclass(frozen=True)
class Incoming:
    """The parts of a request the checks read."""

    method: str
    path: str
    headers: dict[str, str]
    address: str
    arrived_on: str | None
    websocket: bool

    @staticmethod
    def of(scope: Scope) -> Incoming:
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}; {text}" if key == "cookie" and key in headers else text
        server = scope.get("server")
        return Incoming(method=scope.get("method", "GET").upper(), path=scope["path"], headers=headers,
                        address=(scope.get("client") or ("unknown", 0))[0],
                        arrived_on=str(server[0]) if server else None, websocket=scope["type"] == "websocket")

    @property
    def changes_state(self) -> bool:
        return self.websocket or self.method not in SAFE_METHODS

    @property
    def may_have_body(self) -> bool:
        length = self.headers.get("content-length", "").strip()
        return (length.isdigit() and int(length) > 0) or "transfer-encoding" in self.headers


class Refusal(Exception):
    """A rule said no: the status, what to tell the client, and extra headers."""

    def __init__(self, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


class RequestGuard:
    """ASGI middleware over the whole app (UI, API, docs, files)."""

    def __init__(self, app: ASGIApp, config: GuardConfig, faces: Faces,
                 limiter: FailureLimiter | None = None) -> None:
        self.app = app
        self.config = config
        self.faces = faces
        self.limiter = limiter or FailureLimiter()

    async def __call__(self, scope: Scope, receive: bodies.Receive, send: bodies.Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        scope = _collapse_leading_slashes(scope)
        request = Incoming.of(scope)
        try:
            # 1. The Host names this server (DNS rebinding), 2. the body is not too large,
            # 3. a browser sent it from this site, 4. API bodies are JSON.
            self._check_host(request)
            self._check_declared_size(request)
            self._check_origin(request)
            self._check_content_type(request)
            # 5. Who is asking (login, HTTP Basic, Gradio session), 6. what the network may change.
            scope, receive, send = await self._authenticate(scope, request, receive, send)
            receive = await self._check_network_rule(scope, request, receive)
        except Refusal as refusal:
            return await _refuse(scope, send, refusal)
        except bodies.BodyTooLarge:
            return await _refuse(scope, send, self._too_large())
        await self._forward(scope, receive, send)

    # --- the checks, in order ---------------------------------------------------------------

    def _check_host(self, request: Incoming) -> None:
        header = request.headers.get("host")
        name = host_name_of(header) if header is not None else None
        if name is None:
            raise Refusal(400, "The request has no valid Host header.")
        if not self.config.hosts.allows(name, request.arrived_on):
            log.warning("Refused a request for host %s from %s (not an allowed host; see --allowed-hosts)",
                        printable(name), request.address)
            raise Refusal(421, f"This server does not answer to the name {name[:100]!r}; "
                               "its operator can allow it with --allowed-hosts.")

    def _check_declared_size(self, request: Incoming) -> None:
        declared = request.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > self.config.max_body:
            raise Refusal(413, f"The request body is {int(declared):,} bytes; the limit is {self.config.max_body:,}.")

    def _too_large(self) -> Refusal:
        return Refusal(413, f"The request body is over the limit of {self.config.max_body:,} bytes.")

    def _check_origin(self, request: Incoming) -> None:
        if not request.changes_state:
            return
        reason = cross_site(request.headers, self.config.cors_origins, self.config.hosts.named_by_operator)
        if reason is not None:
            log.warning("Refused a cross-site %s %s from %s: %s", request.method, printable(request.path),
                        request.address, printable(reason))
            raise Refusal(403, f"Cross-site request refused: {reason}.")

    def _check_content_type(self, request: Incoming) -> None:
        if self.faces.is_ui(request.path) or request.websocket or not request.changes_state:
            return
        content_type = request.headers.get("content-type")
        if content_type is None or not request.may_have_body:
            return  # no type is read as JSON, which a browser cannot send cross-site
        media = content_type.split(";", 1)[0].strip().lower()
        if media not in _JSON_TYPES and not media.endswith("+json"):
            raise Refusal(415, f"The request body must be JSON (Content-Type: application/json), "
                               f"not {media[:60] or 'empty'!r}.")

    async def _authenticate(self, scope: Scope, request: Incoming, receive: bodies.Receive,
                            send: bodies.Send) -> tuple[Scope, bodies.Receive, bodies.Send]:
        """Let the request in as a user, or refuse it; login attempts are counted under any spelling."""
        auth = self.config.auth
        if not auth.enabled:
            return scope, receive, send
        login = self.faces.login_route(request.path) if request.method == "POST" else None
        if login is not None:  # every spelling is the same login, served and counted as one
            scope = {**scope, "path": login, "raw_path": login.encode()}
            return await self._login_attempt(scope, request, receive, send)
        if self.faces.is_open(request.path):
            return scope, receive, send
        credentials = self._credentials_for(request.path)
        if credentials is None:  # this face has no login (--api-auth alone leaves the UI open)
            return scope, receive, send
        given = basic_credentials(scope.get("headers", []))
        self._check_limiter(request.address, given[0] if given else None)
        if given is not None and credentials.check(*given):
            state = {**scope.get("state", {}), "atelier_user": given[0], "atelier_authenticated": True}
            return {**scope, "state": state}, receive, send
        if self.faces.is_ui(request.path) and given is None and self.faces.has_session(scope):
            state = {**scope.get("state", {}), "atelier_authenticated": True}
            return {**scope, "state": state}, receive, send
        if given is not None:
            self.limiter.failed(request.address, given[0])
            log.warning("Failed login from %s for %s", request.address, printable(request.path))  # never the password
        raise Refusal(401, "Not authenticated", ((b"www-authenticate", b'Basic realm="Atelier"'),))

    def _credentials_for(self, path: str) -> Credentials | None:
        return self.config.auth.ui if self.faces.is_ui(path) else self.config.auth.api

    def _check_limiter(self, address: str, user: str | None) -> None:
        if (wait := self.limiter.retry_after(address, user)) is not None:
            raise Refusal(429, "Too many failed logins; try again later.", ((b"retry-after", str(wait).encode()),))

    async def _login_attempt(self, scope: Scope, request: Incoming, receive: bodies.Receive,
                             send: bodies.Send) -> tuple[Scope, bodies.Receive, bodies.Send]:
        body = await bodies.read_all(receive, MAX_LOGIN_BODY) or b""
        user = _login_user(body, request.headers.get("content-type", ""))
        self._check_limiter(request.address, user)
        address, limiter = request.address, self.limiter

        async def counting(message: bodies.Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (400, 401, 403):
                limiter.failed(address, user)
                log.warning("Failed login from %s", address)
            await send(message)

        return scope, bodies.replay(body, receive), counting

    async def _check_network_rule(self, scope: Scope, request: Incoming, receive: bodies.Receive) -> bodies.Receive:
        """Shared on the network with no password, nobody there may change the server for everyone."""
        if not self.config.listen or is_loopback(request.address) or request.websocket:
            return receive
        if scope.get("state", {}).get("atelier_authenticated") or self._credentials_for(request.path) is not None:
            return receive
        needs_body = any(r.needs_body(request.method, request.path) for r in self.faces.effects)
        body = b""
        if needs_body:
            body = await bodies.read_all(receive, self.config.max_body) or b""
        if any(r.effect(request.method, request.path, body) is Effect.SERVER for r in self.faces.effects):
            log.warning("Refused a change to the server from %s (%s): no password is set",
                        request.address, printable(request.path))
            raise Refusal(403, "Settings, models, styles, files and extensions cannot be changed from the "
                               "network while the server runs with --listen and no password; start it with "
                               "--gradio-auth-path (or --gradio-auth) to allow it.")
        return bodies.replay(body, receive) if needs_body else receive

    async def _forward(self, scope: Scope, receive: bodies.Receive, send: bodies.Send) -> None:
        """Run the app with the body limit enforced as it streams in."""
        responded = False
        too_large = False

        async def tracking_send(message: bodies.Message) -> None:
            nonlocal responded
            if too_large:
                return  # the 413 went out; the app's own reply to the cut-off body is dropped
            if message["type"] == "http.response.start":
                responded = True
            await send(message)

        limited = bodies.limited(receive, self.config.max_body)

        async def guarded_receive() -> bodies.Message:
            nonlocal too_large
            try:
                return await limited()
            except bodies.BodyTooLarge:
                if not responded and not too_large:
                    await _refuse(scope, send, self._too_large())
                too_large = True
                raise

        try:
            await self.app(scope, guarded_receive if scope["type"] == "http" else receive, tracking_send)
        except Exception:
            if too_large:  # the app gave up on the cut-off body; the client already has its 413
                return
            raise


def _collapse_leading_slashes(scope: Scope) -> Scope:
    """Clients whose base URL ends in "/" ask for //sdapi/v1/...; serve them the same route."""
    path = scope["path"]
    if not path.startswith("//"):
        return scope
    raw = scope.get("raw_path") or path.encode()
    return {**scope, "path": "/" + path.lstrip("/"), "raw_path": b"/" + raw.lstrip(b"/")}


def _login_user(body: bytes, content_type: str) -> str | None:
    """The user name a login form (or JSON login) names, for the per-user limit."""
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type.lower():
        try:
            data = json.loads(text)
        except ValueError:
            return None
        value = data.get("username") if isinstance(data, dict) else None
        return value if isinstance(value, str) and value else None
    values = parse_qs(text).get("username")
    return values[0] if values and values[0] else None


async def _refuse(scope: Scope, send: bodies.Send, refusal: Refusal) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + refusal.status})
        return
    payload = json.dumps({"detail": refusal.detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               *refusal.headers]
    if refusal.status in (413, 421):
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
