"""Who may sign in: the credentials from ``--gradio-auth``, ``--gradio-auth-path`` and ``--api-auth``.

The request guard (:mod:`modules.web.guard`) checks them in front of the whole app: API-style
routes need HTTP Basic credentials; Gradio routes accept HTTP Basic too, or Gradio's login
session. Passwords are compared in constant time and never logged. With auth off, any
Authorization header is ignored (several clients send ``Basic `` with nothing after it).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from modules.errors import ConfigError


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
    ui: Credentials | None
    api: Credentials | None

    @property
    def enabled(self) -> bool:
        return self.ui is not None or self.api is not None


def load_auth(gradio_auth: str | None, gradio_auth_path: Path | None, api_auth: str | None) -> AuthConfig:
    """Credentials from the flags. The API uses the UI's unless --api-auth names its own."""
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
    api = Credentials.parse(api_auth.split(","), "--api-auth") if api_auth else ui
    return AuthConfig(ui=ui, api=api)


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
