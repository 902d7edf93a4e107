"""Accounts: users, roles, passwords (argon2id) and API tokens, in the studio database.

The one place that decides who may sign in. Password checks take the same time for an unknown
name as for a wrong password (an unknown name is checked against a dummy hash); a successful
check is remembered for a short while as a keyed digest so scripts that send HTTP Basic on every
request do not pay argon2 each time. API tokens are random secrets shown once; only their SHA-256
is stored, and a revoked or removed one stops working at once.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from modules.errors import AccountError, AccountNotFoundError
from modules.identity import Identity, Role, UserLimits
from modules.services.passwords import (
    PASSWORD_MAX,
    CheckCache,
    Passwords,
    name_key,
    validate_name,
    validate_password,
)
from modules.services.studio_db import StudioDb, api_tokens, users

log = logging.getLogger(__name__)

TOKEN_PREFIX = "atl_"
TOKEN_ID_PREFIX = "tok_"
TOKEN_LABEL_MAX = 100
_TOKEN_SECRET_MAX = 200  # far above a real one: longer input is refused before hashing it
_TOKEN_TOUCH_S = 60.0  # last_used_at is written at most this often per token
_FLAG_REFRESH_S = 2.0  # how stale "any account exists" may be (a CLI in another process adds one)


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
    """Users and tokens. Every method is safe from any thread.

    ``hasher``: the argon2 hasher (argon2-cffi's defaults when None; tests bring a fast one).
    """

    def __init__(self, db: StudioDb, hasher: PasswordHasher | None = None) -> None:
        self.db = db
        self._passwords = Passwords(hasher)
        self._checks = CheckCache()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[AccountEvent, str], None]] = []
        self._any: tuple[bool, float] | None = None  # (an account exists, when that was read)
        # Each account's (name, role, password_changed_at) as last read: changes made by another
        # process (the `users` command) are told to the listeners when the flag is read again.
        self._seen: dict[str, tuple[str, str, float]] | None = None

    # --- who may sign in ---------------------------------------------------------------------

    def sign_in_required(self) -> bool:
        """Whether any account exists (then every request must sign in). Read from the database at most
        every two seconds; changes another process made meanwhile reach the listeners then."""
        now = time.monotonic()
        with self._lock:
            cached = self._any
        if cached is not None and now - cached[1] < _FLAG_REFRESH_S:
            return cached[0]
        return self._sync(notice=True)

    def check_password(self, name: str, password: str) -> Identity | None:
        """The account's identity when ``password`` is its password, else None. An unknown name costs
        what a wrong password costs; a correct one is remembered for a few minutes."""
        if not isinstance(name, str) or not isinstance(password, str) or len(password) > PASSWORD_MAX:
            self._passwords.verify(None, password[:PASSWORD_MAX] if isinstance(password, str) else "")
            return None
        key = name_key(name)
        row = self._user_row(key)
        digest = self._checks.digest(key, password)
        if row is not None and self._checks.hit(digest, row["password_changed_at"]):
            return Identity(row["name"], Role(row["role"]))
        verdict = self._passwords.verify(row["password_hash"] if row is not None else None, password)
        if row is None or not verdict.ok:
            return None
        if verdict.new_hash is not None:  # stronger parameters than when it was set; same password
            with self.db.engine.begin() as conn:
                conn.execute(update(users).where(users.c.name_key == key,
                                                 users.c.password_hash == row["password_hash"])
                             .values(password_hash=verdict.new_hash))
        self._checks.remember(digest, row["password_changed_at"], key)
        return Identity(row["name"], Role(row["role"]))

    def check_token(self, secret: str) -> Identity | None:
        """The identity of a live token's account; None for an unknown, revoked or orphaned one."""
        if not isinstance(secret, str) or not secret.startswith(TOKEN_PREFIX) or len(secret) > _TOKEN_SECRET_MAX:
            return None
        query = (select(api_tokens.c.id, api_tokens.c.last_used_at, users.c.name, users.c.role)
                 .join(users, users.c.name_key == api_tokens.c.user_key)
                 .where(api_tokens.c.secret_hash == _secret_hash(secret), api_tokens.c.revoked_at.is_(None)))
        with self.db.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            return None
        now = time.time()
        if row["last_used_at"] is None or now - row["last_used_at"] >= _TOKEN_TOUCH_S:
            with self.db.engine.begin() as conn:
                conn.execute(update(api_tokens).where(api_tokens.c.id == row["id"]).values(last_used_at=now))
        return Identity(row["name"], Role(row["role"]))

    def identity(self, name: str) -> Identity | None:
        """The account's identity now (None once removed): for sessions started earlier."""
        row = self._user_row(name_key(name)) if isinstance(name, str) else None
        return Identity(row["name"], Role(row["role"])) if row is not None else None

    def limits(self, name: str) -> UserLimits:
        """The account's limits; none for a name without an account (an ``--api-auth`` login)."""
        found = self.account(name)
        return found.limits if found is not None else UserLimits()

    # --- changes (AccountError says why one is refused) --------------------------------------

    def add(self, name: str, password: str, role: Role, limits: UserLimits = UserLimits()) -> Account:
        validate_name(name)
        validate_password(password)
        return self._insert(name, password, role, limits)

    def remove(self, name: str) -> None:
        """Remove an account and its tokens; the last admin stays (AccountError)."""
        key = name_key(name)
        row = self._existing(name)
        with self.db.engine.begin() as conn:
            # One statement decides, so two removals at once cannot leave no admin.
            gone = conn.execute(delete(users).where(users.c.name_key == key, or_(
                users.c.role != Role.ADMIN.value, _admin_count() > 1))).rowcount
            if gone:
                conn.execute(delete(api_tokens).where(api_tokens.c.user_key == key))
        if not gone:
            self._refuse_last_admin(name, "removed")
        self._checks.forget(key)
        self._sync()
        self._emit(AccountEvent.REMOVED, row["name"])

    def set_password(self, name: str, password: str) -> None:
        validate_password(password)
        key = name_key(name)
        row = self._existing(name)
        new_hash = self._passwords.hash(password)
        # Strictly later than the old one: remembered checks (here and in other processes) are made for it.
        changed_at = max(time.time(), row["password_changed_at"] + 1e-3)
        with self.db.engine.begin() as conn:
            done = conn.execute(update(users).where(users.c.name_key == key)
                                .values(password_hash=new_hash, password_changed_at=changed_at)).rowcount
        if not done:
            raise AccountNotFoundError(f"No account named {name!r}.")
        self._checks.forget(key)
        self._sync()
        self._emit(AccountEvent.PASSWORD_CHANGED, row["name"])

    def set_role(self, name: str, role: Role) -> None:
        """Make an account an admin or a user; the last admin cannot become a user (AccountError)."""
        if not isinstance(role, Role):
            raise AccountError(f"Unknown role {role!r}; roles are {', '.join(r.value for r in Role)}.")
        key = name_key(name)
        row = self._existing(name)
        if row["role"] == role.value:
            return
        keeps_an_admin = or_(users.c.role != Role.ADMIN.value, _admin_count() > 1)
        with self.db.engine.begin() as conn:
            done = conn.execute(update(users).where(users.c.name_key == key, keeps_an_admin)
                                .values(role=role.value)).rowcount
        if not done:
            self._refuse_last_admin(name, "made a user")
        self._sync()
        self._emit(AccountEvent.ROLE_CHANGED, row["name"])

    def set_limits(self, name: str, limits: UserLimits) -> None:
        if not isinstance(limits, UserLimits):
            raise AccountError("Limits must be UserLimits.")
        with self.db.engine.begin() as conn:
            done = conn.execute(update(users).where(users.c.name_key == name_key(name))
                                .values(limits=json.dumps(limits.as_dict()))).rowcount
        if not done:
            raise AccountNotFoundError(f"No account named {name!r}.")

    def accounts(self) -> tuple[Account, ...]:
        """Every account, by name (case-insensitively)."""
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(users).order_by(users.c.name_key)).mappings().all()
        return tuple(_account(row) for row in rows)

    def account(self, name: str) -> Account | None:
        row = self._user_row(name_key(name)) if isinstance(name, str) else None
        return _account(row) if row is not None else None

    def seed_admins(self, credentials: Mapping[str, str]) -> tuple[str, ...]:
        """Add each ``--gradio-auth`` user not in the database yet as an admin; the names added.

        A name that has an account keeps the password in the database (the flag's is not used; a
        warning says so). Seeded passwords may be shorter than new ones must be (they worked before);
        a name that cannot be an account raises AccountError."""
        added: list[str] = []
        for name, password in credentials.items():
            validate_name(name)
            if self.account(name) is not None:
                log.warning("The --gradio-auth user %r has an account in the database already: its password there "
                            "is used, not the one the flag gives (change it with `app.py users passwd`).", name)
                continue
            validate_password(password, minimum=1)
            self._insert(name, password, Role.ADMIN, UserLimits())
            added.append(name)
        return tuple(added)

    # --- API tokens ----------------------------------------------------------------------------

    def create_token(self, owner: str, label: str = "") -> tuple[TokenInfo, str]:
        """A new token for ``owner``: its info and its secret (shown once)."""
        label = _checked_label(label)
        row = self._existing(owner)
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        info = TokenInfo(id=TOKEN_ID_PREFIX + secrets.token_hex(6), owner=row["name"], label=label,
                         created_at=time.time(), last_used_at=None, revoked=False)
        try:
            with self.db.engine.begin() as conn:
                conn.execute(insert(api_tokens).values(id=info.id, user_key=row["name_key"], label=label,
                                                       secret_hash=_secret_hash(secret), created_at=info.created_at))
        except IntegrityError as exc:  # the account went away meanwhile (or 48 random bits collided)
            raise AccountNotFoundError(f"No account named {owner!r}.") from exc
        return info, secret

    def tokens(self, owner: str | None) -> tuple[TokenInfo, ...]:
        """``owner``'s tokens (None: everyone's, for admins)."""
        query = (select(api_tokens, users.c.name).join(users, users.c.name_key == api_tokens.c.user_key)
                 .order_by(api_tokens.c.created_at, api_tokens.c.id))
        if owner is not None:
            query = query.where(api_tokens.c.user_key == name_key(owner))
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).mappings().all()
        return tuple(TokenInfo(id=r["id"], owner=r["name"], label=r["label"], created_at=r["created_at"],
                               last_used_at=r["last_used_at"], revoked=r["revoked_at"] is not None) for r in rows)

    def revoke_token(self, token_id: str, owner: str | None) -> None:
        """Revoke ``token_id`` (``owner``: only theirs; None: any, for admins); AccountNotFoundError otherwise.
        Revoking a revoked token again changes nothing."""
        mine = [api_tokens.c.id == token_id]
        if owner is not None:
            mine.append(api_tokens.c.user_key == name_key(owner))
        with self.db.engine.begin() as conn:
            conn.execute(update(api_tokens).where(*mine, api_tokens.c.revoked_at.is_(None))
                         .values(revoked_at=time.time()))
            found = conn.execute(select(api_tokens.c.id).where(*mine)).first()
        if found is None:  # another user's token is "not found" too: its existence is not revealed
            raise AccountNotFoundError(f"No API token {token_id!r}.")

    def on_change(self, listener: Callable[[AccountEvent, str], None]) -> None:
        """Call ``listener(event, name)`` after each change to an account (its errors are logged)."""
        with self._lock:
            self._listeners.append(listener)

    # --- inside ----------------------------------------------------------------------------------

    def _insert(self, name: str, password: str, role: Role, limits: UserLimits) -> Account:
        if not isinstance(role, Role):
            raise AccountError(f"Unknown role {role!r}; roles are {', '.join(r.value for r in Role)}.")
        if not isinstance(limits, UserLimits):
            raise AccountError("Limits must be UserLimits.")
        password_hash = self._passwords.hash(password)
        now = time.time()
        try:
            with self.db.engine.begin() as conn:
                conn.execute(insert(users).values(name_key=name_key(name), name=name, role=role.value,
                                                  password_hash=password_hash, limits=json.dumps(limits.as_dict()),
                                                  created_at=now, password_changed_at=now))
        except IntegrityError as exc:
            taken = self.account(name)
            raise AccountError(f"The name {name!r} is taken (by the account {taken.name if taken else name!r}; "
                               "names are compared ignoring case).") from exc
        self._sync()
        self._emit(AccountEvent.ADDED, name)
        return Account(name=name, role=role, limits=limits, created_at=now)

    def _user_row(self, key: str) -> Mapping[str, Any] | None:
        with self.db.engine.connect() as conn:
            return conn.execute(select(users).where(users.c.name_key == key)).mappings().first()

    def _existing(self, name: str) -> Mapping[str, Any]:
        row = self._user_row(name_key(name)) if isinstance(name, str) else None
        if row is None:
            raise AccountNotFoundError(f"No account named {name!r}.")
        return row

    def _refuse_last_admin(self, name: str, what: str) -> None:
        self._existing(name)  # gone meanwhile: AccountNotFoundError
        raise AccountError(f"{name!r} is the last admin and cannot be {what}; make another account an admin first.")

    def _sync(self, notice: bool = False) -> bool:
        """Read which accounts exist; ``notice``: tell the listeners what changed since the last read
        (only others' changes: this store's own call this without it, right after telling them)."""
        query = select(users.c.name_key, users.c.name, users.c.role, users.c.password_changed_at)
        with self.db.engine.connect() as conn:
            now = {row[0]: (row[1], row[2], row[3]) for row in conn.execute(query)}
        with self._lock:
            before, self._seen = self._seen, now
            self._any = (bool(now), time.monotonic())
        if notice and before is not None:
            for event, name in _differences(before, now):
                if event in (AccountEvent.PASSWORD_CHANGED, AccountEvent.REMOVED):
                    self._checks.forget(name_key(name))
                self._emit(event, name)
        return bool(now)

    def _emit(self, event: AccountEvent, name: str) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event, name)
            except Exception:  # a listener's bug must not undo or block the change that already happened
                log.exception("An account listener failed on %s of %r", event.value, name)


def _differences(before: Mapping[str, tuple[str, str, float]],
                 now: Mapping[str, tuple[str, str, float]]) -> list[tuple[AccountEvent, str]]:
    found = [(AccountEvent.REMOVED, before[key][0]) for key in before.keys() - now.keys()]
    found += [(AccountEvent.ADDED, now[key][0]) for key in now.keys() - before.keys()]
    for key in before.keys() & now.keys():
        if before[key][2] != now[key][2]:
            found.append((AccountEvent.PASSWORD_CHANGED, now[key][0]))
        if before[key][1] != now[key][1]:
            found.append((AccountEvent.ROLE_CHANGED, now[key][0]))
    return found


def _admin_count() -> Any:
    return select(func.count()).select_from(users).where(users.c.role == Role.ADMIN.value).scalar_subquery()


def _secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _checked_label(label: object) -> str:
    if not isinstance(label, str):
        raise AccountError("A token's label must be text.")
    label = label.strip()
    if len(label) > TOKEN_LABEL_MAX or not label.isprintable():
        raise AccountError(f"A token's label has at most {TOKEN_LABEL_MAX} printable characters.")
    return label


def _account(row: Mapping[str, Any]) -> Account:
    try:
        limits = UserLimits.from_dict(json.loads(row["limits"] or "{}"))
    except ValueError:  # only a hand-edited file gets here; say so, and apply none rather than stop every request
        log.error("The limits stored for %r cannot be read; none apply until an admin sets them again.", row["name"])
        limits = UserLimits()
    return Account(name=row["name"], role=Role(row["role"]), limits=limits, created_at=row["created_at"])
