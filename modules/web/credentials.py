"""Who may sign in: the accounts (through an :class:`Authenticator`), and the credentials from
``--gradio-auth``, ``--gradio-auth-path`` and ``--api-auth``.

The request guard (:mod:`modules.web.guard`) checks them in front of the whole app. The
``--gradio-auth`` users are seeded into the accounts as admins at start, so the accounts decide
for them; ``--api-auth`` credentials are checked here, for API routes only. Passwords are compared
in constant time and never logged. With auth off, any Authorization header is ignored (several
clients send ``Basic `` with nothing after it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Protocol

from modules.errors import ConfigError
from modules.identity import Identity


class Authenticator(Protocol):
    """The accounts as the guard asks about them (the services' account store implements it)."""

    def check_password(self, name: str, password: str) -> Identity | None:
        """The account's identity when the password is right; as slow for an unknown name."""
        ...

    def check_token(self, secret: str) -> Identity | None:
        """The owner of a live (not revoked) API token."""
        ...

    def identity(self, name: str) -> Identity | None:
        """The account's identity now; None once removed (a session started earlier ends)."""
        ...

    def sign_in_required(self) -> bool:
        """Whether any account exists; asked on every request, so it must be cheap."""
        ...


class NoAccounts:
    """An :class:`Authenticator` with no accounts: only the flags' credentials, if any, sign in."""

    def check_password(self, name: str, password: str) -> Identity | None:
        return None

    def check_token(self, secret: str) -> Identity | None:
        return None

    def identity(self, name: str) -> Identity | None:
        return None

    def sign_in_required(self) -> bool:
        return False


@dataclass(frozen=True)
class Credentials:
    """Usernames and passwords; compared in constant time."""

    users: Mapping[str, str]

    @staticmethod
    def parse(entries: Iterable[str], origin: str) -> Credentials:
        users: dict[str, str] = {}
        for entry in entries:
            entry = entry.strip()
            if not entry:
                continue
            user, sep, password = entry.partition(":")
            if not sep or not user or not password:
                raise ConfigError(f"{origin}: each entry must be USER:PASSWORD")  # never echo the entry
            users[user] = password
        if not users:
            raise ConfigError(f"{origin}: no USER:PASSWORD entries")
        return Credentials(MappingProxyType(users))

    def check(self, user: str, password: str) -> bool:
        ok = False
        for known_user, known_password in self.users.items():  # no early exit: timing says nothing
            ok |= hmac.compare_digest(known_user.encode(), user.encode()) & \
                hmac.compare_digest(known_password.encode(), password.encode())
        return ok

    def as_gradio(self) -> list[tuple[str, str]]:
        return list(self.users.items())


@dataclass(frozen=True)
class AuthConfig:
    """The flags' credentials: ``ui`` (``--gradio-auth[-path]``: the admins seeded into the accounts)
    and ``api`` (``--api-auth``: API routes only, as admins of the server)."""

    ui: Credentials | None
    api: Credentials | None

    @property
    def enabled(self) -> bool:
        """Whether the flags ask for sign-in (an account in the database asks for it too)."""
        return self.ui is not None or self.api is not None


def load_auth(gradio_auth: str | None, gradio_auth_path: Path | None, api_auth: str | None) -> AuthConfig:
    """Credentials from the flags. ``api`` is only ``--api-auth``'s: the UI's users are accounts,
    and accounts sign in to the API too."""
    entries: list[str] = []
    if gradio_auth:
        entries += gradio_auth.split(",")
    if gradio_auth_path:
        try:
            text = gradio_auth_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--gradio-auth-path: cannot read {gradio_auth_path} ({exc.strerror})") from exc
        entries += [part for line in text.splitlines() for part in line.split(",")]
    ui = Credentials.parse(entries, "--gradio-auth") if entries else None
    api = Credentials.parse(api_auth.split(","), "--api-auth") if api_auth else None
    return AuthConfig(ui=ui, api=api)


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The secret of an ``Authorization: Bearer`` header (scheme matched case-insensitively)."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None
    return None


def basic_credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header, matched case-insensitively."""
    for name, value in headers:
        if name.lower() != b"authorization":
            continue
        scheme, _, token = value.decode("latin-1").partition(" ")
        if scheme.lower() != "basic" or not token.strip():
            return None
        try:
            user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return (user, password) if sep else None
    return None
