"""Extensions' REST routes (``ext.add_route``), mounted on the API next to ``/sdapi/v1``.

Each enabled extension's routes are served under its prefix: ``/ext/<name>`` unless it chose one
with ``ext.set_route_prefix("/controlnet")``. A chosen prefix is one path segment of lower-case
letters, digits, ``_`` and ``-``, none of the server's own (:data:`RESERVED`, which covers every
top-level path Gradio serves) and not another extension's; a bad one fails that extension's routes
(the extension is marked failed, with the reason, and nothing of it is mounted).

The routes sit behind the one request guard exactly as ``/sdapi/v1`` does: the guard treats their
prefixes as API paths (:meth:`MountedRoutes.covers`), so ``--api-auth``, body limits, origin and
host checks apply. For the network rule (``--listen`` without a password), a GET route reads, and a
POST route changes nothing server-wide unless the extension marked its handler with
:func:`modules.server_effects.changes_server` (or ``changes_server_when``): the mark is carried to
the endpoint that :class:`modules.api.route_effects.ApiRouteEffects` reads.

A handler runs off the event loop with a :class:`RouteCall`; its value is the JSON reply. A
ValidationError is a 422 naming the fields (the app's AtelierError handler); any other exception is
a 500 naming the extension, logged, and the next request is served as usual. The routes of an
extension switched off since start-up (failed) answer 503 with the reason.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from modules.api.routes import _json_body, _user
from modules.errors import AtelierError, ExtensionError
from modules.extension_api import Route, RouteCall
from modules.server_effects import Effect, changes_server, changes_server_when, depends_on_body, effect_of
from modules.services.extensions import ExtensionManager, ExtensionState

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/ext"  # an extension without a prefix of its own is served under /ext/<name>
# First path segments the server itself answers (its API, docs, login, Gradio's routes and files).
RESERVED = frozenset({
    "", "sdapi", "docs", "redoc", "openapi.json", "login", "logout", "gradio_api", "file=", "file", "assets",
    "static", "svelte", "theme.css", "config", "queue", "upload", "upload_progress", "info", "heartbeat",
    "favicon.ico", "manifest.json", "robots.txt", "pwa_icon", "monitoring", "proxy=", "custom_component", "dev",
    "stream", "run", "call", "api", "reset", "app_id", "login_check", "startup-events", "user", "token",
    "gradio", "ext", "agent-scheduler",
})
_SEGMENT = re.compile(r"^/[a-z0-9_-]+$")


@dataclass(frozen=True)
class MountedRoutes:
    """The prefixes extensions' routes were mounted under, for the request guard."""

    prefixes: tuple[str, ...] = ()

    def covers(self, path: str) -> bool:
        """Whether ``path`` is one of the extensions' API paths (the prefix itself or below it)."""
        return any(path == prefix or path.startswith(prefix + "/") for prefix in self.prefixes)


def prefix_problem(prefix: str, taken: Iterable[str], reserved: Iterable[str] = ()) -> str | None:
    """Why an extension may not serve its routes under ``prefix`` (its own choice), or None."""
    if not _SEGMENT.match(prefix):
        return (f"route prefix {prefix!r} must be one path segment of lower-case letters, digits, '_' and '-' "
                "(e.g. '/controlnet')")
    if prefix[1:] in RESERVED or prefix[1:] in set(reserved):
        return f"route prefix {prefix!r} is one of the server's own paths"
    if prefix in set(taken):
        return f"route prefix {prefix!r} is already taken by another extension"
    return None


def _route_problem(routes: list[Route]) -> str | None:
    seen: set[tuple[str, str]] = set()
    for route in routes:
        if (route.method, route.path) in seen:
            return f"route {route.method} {route.path} is registered twice"
        seen.add((route.method, route.path))
    return None


def install(app: FastAPI, extensions: ExtensionManager, reserved: Iterable[str] = ()) -> MountedRoutes:
    """Mount every enabled extension's routes on ``app`` (before Gradio's catch-all mount);
    ``reserved``: more first segments the server answers (the UI's ``--subpath``)."""
    reserved = tuple(reserved)
    prefixes: list[str] = []
    for record in extensions.records():
        setup = record.setup
        if record.state is not ExtensionState.ENABLED or setup is None or not setup.routes:
            continue
        prefix = setup.route_prefix or f"{DEFAULT_PREFIX}/{record.name}"
        problem = (prefix_problem(prefix, prefixes, reserved) if setup.route_prefix else None) \
            or _route_problem(setup.routes)
        if problem is not None:
            extensions.fail(record.name, "routes", ExtensionError(problem))
            continue
        router = APIRouter(prefix=prefix, tags=[f"extension {record.name}"])
        for route in setup.routes:
            router.add_api_route(route.path, _endpoint(extensions, record.name, prefix, route),
                                 methods=[route.method], name=f"{record.name}:{route.method} {route.path}")
        app.include_router(router)
        prefixes.append(prefix)
        log.info("Extension %s serves %d route(s) under %s", record.name, len(setup.routes), prefix)
    return MountedRoutes(tuple(prefixes))


def _endpoint(extensions: ExtensionManager, name: str, prefix: str,
              route: Route) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> JSONResponse:
        record = extensions.get(name)
        if record is None or record.state is not ExtensionState.ENABLED:  # failed since start-up
            reason = f" ({record.error})" if record is not None and record.error else ""
            return JSONResponse({"detail": f"Extension {name} is switched off{reason}", "error": "ExtensionError"},
                                status_code=503)
        body = await _json_body(request) if route.method == "POST" else None  # bad JSON: 422
        user = _user(request)
        call = RouteCall(method=route.method, path=request.url.path[len(prefix):] or "/",
                         query=dict(request.query_params), body=body, user=user,
                         host=extensions.host(name, user))
        try:
            # Off the event loop: a handler may load models or run a preprocessor for seconds.
            value = await run_in_threadpool(lambda: jsonable_encoder(route.call(call)))
        except AtelierError:
            raise  # the app's handler: a ValidationError is a 422 naming the fields
        except Exception as exc:  # the extension's bug: this request fails, the server serves on
            log.error("Extension %s failed in %s %s%s", name, route.method, prefix, route.path, exc_info=exc)
            return JSONResponse({"detail": f"Extension {name} failed in {route.method} {prefix}{route.path}: "
                                           f"{type(exc).__name__}: {exc}", "error": type(exc).__name__},
                                status_code=500)
        return JSONResponse(value)

    endpoint.__name__ = f"ext_{name}_{route.method.lower()}_{route.path.strip('/').replace('/', '_')}"
    if route.method == "POST":  # a GET reads; a POST carries the mark its extension gave the handler
        _carry_effect(route.call, endpoint)
    return endpoint


def _carry_effect(source: Callable[..., Any], target: Callable[..., Any]) -> None:
    if depends_on_body(source):
        changes_server_when(lambda body: effect_of(source, body) is Effect.SERVER)(target)
    elif effect_of(source) is Effect.SERVER:
        changes_server(target)
