"""The one guard in front of every route and every UI event: host, body size, origin, content
type, sign-in, roles, the network rule, file access. Nothing reaches Gradio or the API without
passing it.

Each request goes through the same numbered checks (:meth:`RequestGuard.__call__`); a refusal is
answered before any work, with a status and a ``detail`` that says which rule said no. The faces
tell the guard the few things only they know (:class:`Faces`): which paths are the UI's, which
are open before a login, whose Gradio session a cookie is, which requests change the server for
everyone, and which files a user may read. The accounts (:class:`Authenticator`) say who may sign
in; the guard records who did (:mod:`modules.web.signin`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

from modules.identity import Identity, Role
from modules.server_effects import Effect
from modules.web import body as bodies
from modules.web import signin
from modules.web.credentials import AuthConfig, Authenticator, NoAccounts, basic_credentials, bearer_token
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
    # The user name of the live Gradio login session a request's cookie names, or None.
    session_user: Callable[[Scope], str | None] = lambda scope: None
    # The login form's one path for any spelling of it (case, slashes), or None for other paths.
    login_route: Callable[[str], str | None] = lambda path: None
    effects: tuple[EffectResolver, ...] = ()
    # Whether the caller (None: no sign-in) may read what a GET names; False is answered 404.
    may_read: Callable[[str, Identity | None], bool] = lambda path, identity: True


@dataclass(frozen=True)
class GuardConfig:
    auth: AuthConfig
    accounts: Authenticator = field(default_factory=NoAccounts)
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
        scope = signin.without_identity(_collapse_leading_slashes(scope))
        request = Incoming.of(scope)
        try:
            # 1. The Host names this server (DNS rebinding), 2. the body is not too large,
            # 3. a browser sent it from this site, 4. API bodies are JSON.
            self._check_host(request)
            self._check_declared_size(request)
            self._check_origin(request)
            self._check_content_type(request)
            # 5. Who is asking (login, HTTP Basic, Bearer token, Gradio session), 6. what a user's role
            # and the network may change, 7. whether the caller may read the file a GET names.
            scope, receive, send = await self._authenticate(scope, request, receive, send)
            receive = await self._check_reach(scope, request, receive)
            self._check_read(scope, request)
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

    def _login_needed(self, path: str) -> bool:
        """Whether ``path`` needs a signed-in caller now: once an account exists, everything does;
        the flags alone protect their own face (``--api-auth`` alone leaves the UI open)."""
        auth = self.config.auth
        if auth.ui is not None or self.config.accounts.sign_in_required():
            return True
        return auth.api is not None and not self.faces.is_ui(path)

    async def _authenticate(self, scope: Scope, request: Incoming, receive: bodies.Receive,
                            send: bodies.Send) -> tuple[Scope, bodies.Receive, bodies.Send]:
        """Let the request in as someone, or refuse it; login attempts are counted under any spelling."""
        if not self._login_needed(request.path):
            return scope, receive, send  # no sign-in here: any Authorization header is ignored (A1111)
        login = self.faces.login_route(request.path) if request.method == "POST" else None
        if login is not None:  # every spelling is the same login, served and counted as one
            scope = {**scope, "path": login, "raw_path": login.encode()}
            return await self._login_attempt(scope, request, receive, send)
        if self.faces.is_open(request.path):
            return scope, receive, send
        headers = scope.get("headers", [])
        given = basic_credentials(headers)
        token = bearer_token(headers) if given is None else None
        self._check_limiter(request.address, given[0] if given else None)
        if given is not None:
            identity = await self._check_password(*given, api=not self.faces.is_ui(request.path))
        elif token is not None:
            identity = await asyncio.to_thread(self.config.accounts.check_token, token)
        else:
            identity = self._session_identity(scope, request)
            if identity is not None:
                self._check_cookie_origin(request)
        if identity is not None:
            return signin.with_identity(scope, identity), receive, send
        if given is not None or token is not None:
            self.limiter.failed(request.address, given[0] if given else None)
            log.warning("Failed login from %s for %s", request.address, printable(request.path))  # never the secret
        raise Refusal(401, "Not authenticated", ((b"www-authenticate", b'Basic realm="Atelier"'),))

    async def _check_password(self, user: str, password: str, api: bool) -> Identity | None:
        """``--api-auth`` credentials (API routes: an admin of the server), else the accounts; an unknown
        name costs the accounts as much as a wrong password."""
        flags = self.config.auth.api
        if api and flags is not None and flags.check(user, password):
            return Identity(user, Role.ADMIN)
        return await asyncio.to_thread(self.config.accounts.check_password, user, password)

    def _session_identity(self, scope: Scope, request: Incoming) -> Identity | None:
        """The account behind a live Gradio session (UI routes only); a removed account's is dead."""
        if not self.faces.is_ui(request.path):
            return None
        name = self.faces.session_user(scope)
        return self.config.accounts.identity(name) if name else None

    def _check_cookie_origin(self, request: Incoming) -> None:
        """A cookie goes with any request the browser makes: a change it carries must come from our page."""
        if not request.changes_state:
            return
        if not signin.names_this_server(request.headers, self.config.cors_origins,
                                        self.config.hosts.named_by_operator):
            log.warning("Refused a %s %s from %s carried by a session cookie without this server's "
                        "Origin or Referer", request.method, printable(request.path), request.address)
            raise Refusal(403, "Cross-site request refused: a change made with a sign-in cookie must come "
                               "from this server's page (Origin or Referer).")

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
            if message["type"] == "http.response.start":
                if message["status"] in (400, 401, 403):
                    limiter.failed(address, user)
                    log.warning("Failed login from %s", address)
                # The session cookie never rides along on a request another site's page makes.
                message = {**message, "headers": signin.strict_cookies(list(message.get("headers", [])))}
            await send(message)

        return scope, bodies.replay(body, receive), counting

    async def _check_reach(self, scope: Scope, request: Incoming, receive: bodies.Receive) -> bodies.Receive:
        """A signed-in user (not an admin) may not change the server for everyone; neither may anyone on
        the network while the server has no sign-in at all."""
        identity = signin.recorded_identity(scope)
        as_user = identity is not None and not identity.is_admin
        from_network = (self.config.listen and not is_loopback(request.address) and identity is None
                        and not self._login_needed(request.path))
        if request.websocket or not (as_user or from_network):
            return receive
        # Without any sign-in every file is everyone's: deleting "own" files from the network is refused too.
        reach = (Effect.SERVER,) if identity is not None else (Effect.SERVER, Effect.OWN_FILES)
        changes, receive = await self._changes_server(request, receive, reach)
        if not changes:
            return receive
        if identity is not None:
            log.warning("Refused a change to the server by %s, a user (%s)", printable(identity.name),
                        printable(request.path))
            raise Refusal(403, "Only an admin may change settings, models, styles, files, extensions or "
                               f"accounts (you are signed in as {identity.name}, a user).")
        log.warning("Refused a change to the server from %s (%s): no password is set",
                    request.address, printable(request.path))
        raise Refusal(403, "Settings, models, styles, files and extensions cannot be changed from the "
                           "network while the server runs with --listen and no password; start it with "
                           "--gradio-auth-path (or --gradio-auth) to allow it.")

    async def _changes_server(self, request: Incoming, receive: bodies.Receive,
                              reach: tuple[Effect, ...]) -> tuple[bool, bodies.Receive]:
        """Whether any face marks the request with one of ``reach`` (reading the body when one needs it),
        and the ``receive`` that still hands the app the whole body."""
        needs_body = any(r.needs_body(request.method, request.path) for r in self.faces.effects)
        body = b""
        if needs_body:
            body = await bodies.read_all(receive, self.config.max_body) or b""
        changes = any(r.effect(request.method, request.path, body) in reach for r in self.faces.effects)
        return changes, (bodies.replay(body, receive) if needs_body else receive)

    def _check_read(self, scope: Scope, request: Incoming) -> None:
        if request.method not in ("GET", "HEAD") or request.websocket:
            return
        if not self.faces.may_read(request.path, signin.recorded_identity(scope)):
            raise Refusal(404, "Not Found")

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
