"""Which Gradio requests change the server for everyone, for the request guard's network rule.

A UI event reaches the server as a POST naming its function: ``gradio_api/queue/join`` with a
``fn_index`` in the body (what the browser sends), or ``gradio_api/run|call|api/<api_name>``.
The function's mark (:func:`modules.server_effects.changes_server`) says what it does. A request
that names no known function, and Gradio's own routes that write outside an event (run history,
the vibe editor), count as changing the server: refused rather than guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from modules.server_effects import Effect, effect_of

_EVENT = re.compile(r"^/gradio_api/(?:queue/join|(?:run|api|call(?:/v2)?)/(?P<api_name>[^/]+))/?$")
_WRITES_OUTSIDE_EVENTS = re.compile(r"^/gradio_api/(?:run-history/|vibe-|undo-vibe-)")


@dataclass(frozen=True)
class GradioEventEffects:
    """Resolves a Gradio request to the mark of the event function it runs."""

    blocks: Any = field(repr=False)  # gr.Blocks
    subpath: str = ""

    def _local(self, path: str) -> str | None:
        if not self.subpath:
            return path
        return path[len(self.subpath):] if path.startswith(self.subpath + "/") else None

    def needs_body(self, method: str, path: str) -> bool:
        local = self._local(path)
        return method == "POST" and local is not None and _EVENT.match(local) is not None

    def effect(self, method: str, path: str, body: bytes) -> Effect:
        local = self._local(path)
        if method != "POST" or local is None:
            return Effect.OWN
        if _WRITES_OUTSIDE_EVENTS.match(local):
            return Effect.SERVER
        match = _EVENT.match(local)
        if match is None:
            return Effect.OWN
        fn = self._function(_fn_index(body), match.group("api_name"))
        return Effect.SERVER if fn is None else effect_of(fn)

    def _function(self, fn_index: int | None, api_name: str | None) -> Any:
        fns = self.blocks.fns  # Gradio's own lookup: the body's fn_index wins over the name
        if fn_index is not None:
            block_fn = fns.get(fn_index)
        else:
            block_fn = next((f for f in fns.values() if api_name is not None and f.api_name == api_name), None)
        return None if block_fn is None else block_fn.fn


def _fn_index(body: bytes) -> int | None:
    try:
        data = json.loads(body) if body.strip() else {}
    except ValueError:
        return None
    value = data.get("fn_index") if isinstance(data, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None
