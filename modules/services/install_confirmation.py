"""One-time confirmations for putting outside code into Atelier: installing an extension from a URL,
updating one, and installing an extension's pip requirements.

Asking records on the server exactly what would be installed (the extension, its version, the git
commit and manifest on disk, its requirement lines, or the URL), who asked (the Gradio session and
the signed-in user, if any) and until when; the asker gets an opaque token and a summary to show.
Confirming presents that token from the same session and user. A token is used up when it is
presented, whatever happens next, and the installer then checks that what is on disk is still what
the summary named. No value a request sends can stand in for this: a forged event can neither skip
the question nor answer one asked in another session or by another user.
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from modules.errors import ExtensionError

CONFIRM_TTL_S = 300.0  # long enough to read the summary, short enough that a stale one is not reused
MAX_PENDING = 64  # asks nobody confirms must not pile up in memory


class Action(enum.Enum):
    """What a confirmation allows, in the words of its summary."""

    INSTALL = "Install the extension"
    UPDATE = "Update the extension"
    REQUIREMENTS = "Install the requirements of the extension"


@dataclass(frozen=True)
class Requester:
    """Who asks or confirms: the Gradio session, and the signed-in user (None without auth)."""

    session: str
    user: str | None = None


@dataclass(frozen=True)
class Subject:
    """Exactly what one confirmation allows; compared field by field with the disk when confirmed."""

    action: Action
    name: str  # the extension's name; for INSTALL, the URL as git gets it
    folder: str = ""  # its folder; for INSTALL, the folder name asked for ("" for the manifest's name)
    version: str = ""  # its manifest's version when asked
    revision: str = ""  # its git commit when asked ("" outside git)
    digest: str = ""  # sha256 of its extension.yaml when asked
    target: str = ""  # UPDATE: the commit it moves to; INSTALL: the branch ("" for the default one)
    requirements: tuple[str, ...] = ()
    note: str = ""  # for the summary only (an update's new version and commit count)

    def summary(self, redacted_name: str) -> str:
        """What the user is asked to confirm; ``redacted_name`` is the name or URL without credentials."""
        if self.action is Action.INSTALL:
            branch = f" (branch {self.target})" if self.target else ""
            return (f"{self.action.value} from {redacted_name}{branch}? Its code runs inside Atelier, with "
                    "your permissions, from the next start.")
        at = f" ({self.revision[:10]})" if self.revision else ""
        if self.action is Action.UPDATE:
            return (f"{self.action.value} {self.name} {self.version}{at} to {self.target[:10]}{self.note}? "
                    "Its new code runs from the next start.")
        return (f"{self.action.value} {self.name} {self.version}{at} into Atelier's Python environment? "
                f"pip runs these packages' own build code: {', '.join(self.requirements)}")


@dataclass(frozen=True)
class Confirmation:
    """An ask's answer: the token to present when confirming, and what to show the user."""

    token: str
    summary: str
    expires_in_s: float


@dataclass(frozen=True)
class _Pending:
    subject: Subject
    requester: Requester
    expires_at: float


def checked_requester(requester: Requester) -> Requester:
    if not isinstance(requester.session, str) or not requester.session.strip():
        raise ExtensionError("This request has no browser session: install from the Extensions tab of the page.")
    return requester


class ConfirmationLedger:
    """Pending confirmations by token; thread-safe, bounded, each one usable once."""

    def __init__(self, ttl_s: float = CONFIRM_TTL_S, clock: Callable[[], float] = time.monotonic,
                 capacity: int = MAX_PENDING) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._capacity = capacity
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}  # insertion order: the oldest first

    def issue(self, subject: Subject, requester: Requester) -> str:
        """A new token for ``subject``; it replaces this requester's earlier ask of the same action."""
        requester = checked_requester(requester)
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._pending = {t: p for t, p in self._pending.items() if p.expires_at > now and not (
                p.requester == requester and p.subject.action is subject.action)}
            while len(self._pending) >= self._capacity:
                del self._pending[next(iter(self._pending))]
            self._pending[token] = _Pending(subject, requester, now + self.ttl_s)
        return token

    def redeem(self, token: str, requester: Requester) -> Subject:
        """The subject ``token`` allows, if ``requester`` asked for it and it has not expired; the
        token is gone afterwards either way (one shown to the wrong session may have leaked)."""
        requester = checked_requester(requester)
        with self._lock:
            pending = self._pending.pop(token, None) if isinstance(token, str) and token else None
        if pending is None:
            raise ExtensionError("Nothing to confirm: this confirmation was already used, replaced by a newer "
                                 "question, or never asked. Ask again.")
        if pending.requester.session != requester.session:
            raise ExtensionError("This confirmation was asked for in another browser session. Ask again here.")
        if pending.requester.user != requester.user:
            raise ExtensionError("This confirmation was asked for by another user. Ask again.")
        if self._clock() >= pending.expires_at:
            raise ExtensionError(f"This confirmation expired ({self.ttl_s / 60:g} minutes). Ask again.")
        return pending.subject
