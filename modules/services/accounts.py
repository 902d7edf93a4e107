"""Accounts: users, roles, passwords (argon2id) and API tokens, in the studio database.

The one place that decides who may sign in. Password checks take the same time for an unknown
name as for a wrong password (an unknown name is checked against a dummy hash); a successful
check is remembered for a short while as a keyed digest so scripts that send HTTP Basic on every
request do not pay argon2 each time. API tokens are random secrets shown once; only their SHA-256
is stored, and a revoked or removed one stops working at once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from modules.identity import Identity, Role, UserLimits
from modules.services.studio_db import StudioDb


class AccountEvent(enum.Enum):
    """What listeners hear (the sign-in sessions end for PASSWORD_CHANGED and REMOVED)."""

    ADDED = "added"
    REMOVED = "removed"
    PASSWORD_CHANGED = "password_changed"
    ROLE_CHANGED = "role_changed"


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    limits: UserLimits
    created_at: float


@dataclass(frozen=True)
class TokenInfo:
    """An API token as lists show it (never its secret)."""

    id: str
    owner: str
    label: str
    created_at: float
    last_used_at: float | None
    revoked: bool


class AccountStore:
    """Users and tokens. Every method is safe from any thread."""

    def __init__(self, db: StudioDb) -> None:
        self.db = db

    # --- who may sign in ---------------------------------------------------------------------

    def sign_in_required(self) -> bool:
        """Whether any account exists (then every request must sign in)."""
        raise NotImplementedError

    def check_password(self, name: str, password: str) -> Identity | None:
        raise NotImplementedError

    def check_token(self, secret: str) -> Identity | None:
        raise NotImplementedError

    def identity(self, name: str) -> Identity | None:
        """The account's identity now (None once removed): for sessions started earlier."""
        raise NotImplementedError

    def limits(self, name: str) -> UserLimits:
        raise NotImplementedError

    # --- changes (AccountError says why one is refused) --------------------------------------

    def add(self, name: str, password: str, role: Role, limits: UserLimits = UserLimits()) -> Account:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def set_password(self, name: str, password: str) -> None:
        raise NotImplementedError

    def set_role(self, name: str, role: Role) -> None:
        raise NotImplementedError

    def set_limits(self, name: str, limits: UserLimits) -> None:
        raise NotImplementedError

    def accounts(self) -> tuple[Account, ...]:
        raise NotImplementedError

    def account(self, name: str) -> Account | None:
        raise NotImplementedError

    def seed_admins(self, credentials: Mapping[str, str]) -> tuple[str, ...]:
        """Add each ``--gradio-auth`` user not in the database yet as an admin; the names added."""
        raise NotImplementedError

    # --- API tokens ----------------------------------------------------------------------------

    def create_token(self, owner: str, label: str = "") -> tuple[TokenInfo, str]:
        """A new token for ``owner``: its info and its secret (shown once)."""
        raise NotImplementedError

    def tokens(self, owner: str | None) -> tuple[TokenInfo, ...]:
        """``owner``'s tokens (None: everyone's, for admins)."""
        raise NotImplementedError

    def revoke_token(self, token_id: str, owner: str | None) -> None:
        """Revoke ``token_id`` (``owner``: only theirs; None: any, for admins); AccountNotFoundError otherwise."""
        raise NotImplementedError

    def on_change(self, listener: Callable[[AccountEvent, str], None]) -> None:
        raise NotImplementedError
