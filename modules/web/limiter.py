"""Failed logins, counted per address and per user name, whatever route or spelling they came by.

One limiter sees every failure: HTTP Basic on any route, and the login form under any spelling of
its path. Too many failures from one address, or against one user name, in a window means 429
until the window has passed.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable


class FailureLimiter:
    """Counts failures per key ("address", "user"); ``max_failures`` in ``window_seconds`` blocks."""

    def __init__(self, max_failures: int = 10, window_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window = window_seconds
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        times = self._failures[key]
        while times and times[0] < self._clock() - self.window:
            times.popleft()
        if not times:
            del self._failures[key]  # forget quiet keys: the table stays as small as the attack
            return deque()
        return times

    def retry_after(self, address: str, user: str | None = None) -> int | None:
        """Seconds to wait before ``address`` (or anyone, for ``user``) may try again; None: now."""
        with self._lock:
            waits = [self._wait(key) for key in self._keys(address, user)]
        blocked = [w for w in waits if w is not None]
        return max(blocked) if blocked else None

    def _wait(self, key: tuple[str, str]) -> int | None:
        times = self._recent(key)
        if len(times) < self.max_failures:
            return None
        return max(1, int(times[0] + self.window - self._clock()) + 1)

    def failed(self, address: str, user: str | None = None) -> None:
        with self._lock:
            now = self._clock()
            for key in self._keys(address, user):
                self._recent(key)
                self._failures[key].append(now)

    @staticmethod
    def _keys(address: str, user: str | None) -> list[tuple[str, str]]:
        return [("address", address)] + ([("user", user.casefold())] if user else [])
