"""What a UI event or an API route does to the server, read by the one request guard.

Most requests only read, or start and steer the caller's own jobs. A few change what every user
of the server gets: settings, the loaded model, the model and style lists, files on disk,
extensions. Those are marked here with :func:`changes_server`, where the event or route is
defined, and the guard refuses them from the network while the server has no password
(``--listen`` without ``--gradio-auth``/``--api-auth``), in one place for every route and event,
including ones added later and by extensions.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
_MARK = "__atelier_effect__"


class Effect(enum.Enum):
    """How far a request reaches."""

    OWN = "own"  # reads, or starts/steers the caller's own jobs
    SERVER = "server"  # changes what every user gets (settings, models, lists, files, extensions)
    # Deletes the caller's own jobs and their files: a signed-in user may (their own only); without
    # any sign-in every file is everyone's, so from the network it is refused as SERVER is.
    OWN_FILES = "own_files"


def changes_server(fn: F) -> F:
    """Mark an event handler or route endpoint as changing the server for everyone."""
    setattr(fn, _MARK, Effect.SERVER)
    return fn


def deletes_own_files(fn: F) -> F:
    """Mark a handler that deletes the caller's own jobs and files (see :attr:`Effect.OWN_FILES`)."""
    setattr(fn, _MARK, Effect.OWN_FILES)
    return fn


def changes_server_when(test: Callable[[bytes], bool]) -> Callable[[F], F]:
    """Mark a route whose request body decides: it changes the server for everyone when
    ``test(body)`` says so (an API request whose overrides are to stay after it, say)."""

    def mark(fn: F) -> F:
        setattr(fn, _MARK, test)
        return fn

    return mark


def effect_of(fn: object, body: bytes = b"") -> Effect:
    """The effect a handler was marked with (given the request ``body`` for a body-dependent mark);
    unmarked handlers only read or run own jobs."""
    mark = getattr(fn, _MARK, None)
    if callable(mark):
        return Effect.SERVER if mark(body) else Effect.OWN
    return mark if isinstance(mark, Effect) else Effect.OWN


def depends_on_body(fn: object) -> bool:
    return callable(getattr(fn, _MARK, None))
