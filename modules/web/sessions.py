"""The UI's sign-in sessions: Gradio's token table, with an age limit, an idle limit and revocation.

Gradio keeps its login sessions in ``app.tokens`` (cookie value -> user name) and only ever
indexes, tests, lists and deletes entries of it. :class:`SessionTable` replaces that dict: it
remembers when each session began and was last used, and a session past ``max_age`` or idle
longer than ``idle`` is absent to every reader (and dropped). :meth:`SessionTable.end_user` ends
all of one user's sessions at once: the composition root calls it when an account's password,
role or existence changes, so a stolen or stale cookie stops working at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class SessionTable(dict):  # type: ignore[type-arg]  # Gradio reads it as dict[str, str]
    """Token -> user name, as Gradio expects, where expired sessions do not exist."""

    def __init__(self, max_age: float, idle: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        if max_age <= 0 or (idle is not None and idle <= 0):
            raise ValueError("session lifetimes must be positive")
        self.max_age = max_age
        self.idle = max_age if idle is None else idle
        self._clock = clock
        self._times: dict[str, tuple[float, float]] = {}  # token -> (created, last used)
        self._lock = threading.RLock()

    # --- what Gradio calls ----------------------------------------------------------------------

    def __setitem__(self, token: str, user: str) -> None:
        with self._lock:
            now = self._clock()
            self._times[token] = (now, now)
            super().__setitem__(token, user)

    def __getitem__(self, token: str) -> str:
        user = self.get(token)
        if user is None:
            raise KeyError(token)
        return user

    def get(self, token: Any, default: Any = None) -> Any:
        """The session's user (and the session counts as used now), or ``default``."""
        with self._lock:
            if not self._live(token):
                return default
            created, _ = self._times[token]
            self._times[token] = (created, self._clock())
            return super().__getitem__(token)

    def __contains__(self, token: object) -> bool:
        with self._lock:
            return self._live(token)

    def __delitem__(self, token: str) -> None:
        with self._lock:
            self._times.pop(token, None)
            super().__delitem__(token)

    def pop(self, token: Any, *default: Any) -> Any:
        with self._lock:
            self._times.pop(token, None)
            return super().pop(token, *default)

    def keys(self) -> Any:
        with self._lock:
            self._prune()
            return list(super().keys())

    def items(self) -> Any:
        with self._lock:
            self._prune()
            return list(super().items())

    def values(self) -> Any:
        with self._lock:
            self._prune()
            return list(super().values())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return super().__len__()

    # --- revocation -------------------------------------------------------------------------------

    def end_user(self, user: str) -> int:
        """End every session of ``user``; how many there were."""
        with self._lock:
            ended = [token for token, name in super().items() if name == user]
            for token in ended:
                del self[token]
            return len(ended)

    # --- expiry -----------------------------------------------------------------------------------

    def _live(self, token: object) -> bool:
        if not isinstance(token, str) or not super().__contains__(token):
            return False
        created, used = self._times[token]
        now = self._clock()
        if now - created > self.max_age or now - used > self.idle:
            del self[token]
            return False
        return True

    def _prune(self) -> None:
        for token in list(super().keys()):
            self._live(token)
