"""Which API routes change the server for everyone, for the request guard's network rule: the
mark (:func:`modules.server_effects.changes_server`) on each route's endpoint, looked up by
method and path, for every route the app holds (extensions' routes included)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from fastapi.routing import APIRoute

from modules.server_effects import Effect, depends_on_body, effect_of


@dataclass(frozen=True)
class ApiRouteEffects:
    """Over the app's live route list, so routes added after start-up are covered too."""

    routes: Sequence[object]

    def needs_body(self, method: str, path: str) -> bool:
        route = self._route(method, path)
        return route is not None and depends_on_body(route.endpoint)

    def effect(self, method: str, path: str, body: bytes) -> Effect:
        route = self._route(method, path)
        return Effect.OWN if route is None else effect_of(route.endpoint, body)

    def _route(self, method: str, path: str) -> APIRoute | None:
        for prefix, route in _api_routes(self.routes, ""):
            local = path[len(prefix):] if path.startswith(prefix) else None
            if local is not None and method in (route.methods or ()) and route.path_regex.match(local):
                return route
        return None


def _api_routes(routes: Sequence[object], prefix: str) -> Iterator[tuple[str, APIRoute]]:
    """Every API route with the prefix it is served under, through included routers."""
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI keeps included routers as such
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from _api_routes(included.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif isinstance(route, APIRoute):
            yield prefix, route
