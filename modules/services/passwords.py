"""Account names and passwords: what is accepted, how a password is hashed and checked.

Hashing is argon2id through argon2-cffi (its defaults unless a caller brings a hasher). A check
for a name that has no account runs against a dummy hash made once, so it takes as long as a
wrong password. A successful check is remembered for a few minutes as an HMAC of the name and
password under a key that lives only in this process: scripts that send HTTP Basic on every
request do not pay argon2 each time, and nothing in memory can be turned back into a password.
Failures are never remembered, so each guess costs one argon2 verify.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from modules.errors import AccountError

NAME_MAX = 64
PASSWORD_MIN = 8
PASSWORD_MAX = 1024
_NAME_FORBIDDEN = frozenset(":/\\")  # ':' ends the name in HTTP Basic; slashes would leave outputs/<name>/
CHECK_TTL_S = 300.0
_CHECK_CACHE_MAX = 4096  # only correct passwords get in, so this bounds memory without helping a guesser


def name_key(name: str) -> str:
    """The key an account is stored under: "Ann" and "ann" are one account."""
    return name.casefold()


def validate_name(name: object) -> str:
    """``name`` when it can name an account (and a folder outputs/<name>/), else AccountError saying why."""
    if not isinstance(name, str) or not name:
        raise AccountError("An account name is required.")
    if len(name) > NAME_MAX:
        raise AccountError(f"An account name has at most {NAME_MAX} characters.")
    if name != name.strip():
        raise AccountError("An account name cannot start or end with a space.")
    if not name.isprintable():
        raise AccountError("An account name cannot hold control characters.")
    bad = sorted(_NAME_FORBIDDEN.intersection(name))
    if bad:
        raise AccountError(f"An account name cannot contain {' or '.join(repr(c) for c in bad)}.")
    if name in (".", ".."):
        raise AccountError("An account name cannot be '.' or '..'.")
    return name


def validate_password(password: object, minimum: int = PASSWORD_MIN) -> str:
    """``password`` when it is long enough and not absurdly long, else AccountError saying why."""
    if not isinstance(password, str):
        raise AccountError("A password is required.")
    if len(password) < minimum:
        raise AccountError(f"A password needs at least {minimum} characters.")
    if len(password) > PASSWORD_MAX:
        raise AccountError(f"A password has at most {PASSWORD_MAX} characters.")
    return password


@dataclass(frozen=True)
class Verdict:
    """What one password check found: whether it matched, and a new hash to store (the old one's
    parameters are weaker than the hasher's now), if any."""

    ok: bool
    new_hash: str | None = None


class Passwords:
    """Hashing and checking with one argon2 hasher; safe from any thread."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self.hasher = hasher or PasswordHasher()
        self._dummy: str | None = None
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> Verdict:
        """Check ``password`` against ``stored_hash`` (None: no such account, checked against the dummy
        hash so the time is the same, and never a match)."""
        target = stored_hash if stored_hash is not None else self._dummy_hash()
        try:
            self.hasher.verify(target, password)
        except (VerificationError, InvalidHashError):
            return Verdict(False)
        if stored_hash is None:  # the dummy's password is random; a match is impossible, but be sure
            return Verdict(False)
        return Verdict(True, self.hasher.hash(password) if self.hasher.check_needs_rehash(stored_hash) else None)

    def _dummy_hash(self) -> str:
        with self._lock:
            if self._dummy is None:
                self._dummy = self.hasher.hash(secrets.token_urlsafe(24))
            return self._dummy


class CheckCache:
    """Recent successful password checks: HMAC(process key, name_key NUL password) -> (expiry, the
    password_changed_at it was made for, name_key). Thread-safe."""

    def __init__(self, ttl_s: float = CHECK_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: dict[bytes, tuple[float, float, str]] = {}
        self._lock = threading.Lock()

    def digest(self, key: str, password: str) -> bytes:
        return hmac.new(self._key, f"{key}\0{password}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def hit(self, digest: bytes, changed_at: float) -> bool:
        """Whether ``digest`` was checked recently against the password set at ``changed_at``."""
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return False
            expiry, made_for, _ = entry
            if expiry <= self._clock() or made_for != changed_at:
                del self._entries[digest]
                return False
            return True

    def remember(self, digest: bytes, changed_at: float, key: str) -> None:
        with self._lock:
            now = self._clock()
            if len(self._entries) >= _CHECK_CACHE_MAX:
                self._entries = {d: e for d, e in self._entries.items() if e[0] > now}
                while len(self._entries) >= _CHECK_CACHE_MAX:  # all still fresh: drop the oldest
                    del self._entries[next(iter(self._entries))]
            self._entries[digest] = (now + self.ttl_s, changed_at, key)

    def forget(self, key: str) -> None:
        """Drop every remembered check of one account (its password changed, or it was removed)."""
        with self._lock:
            self._entries = {d: e for d, e in self._entries.items() if e[2] != key}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
