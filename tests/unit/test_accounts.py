"""Accounts: who may sign in with which password or token, the rules for names and passwords, the
last admin, limits, and what listeners hear. A fast argon2 hasher keeps each check cheap here."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from modules.errors import AccountError, AccountNotFoundError
from modules.identity import Identity, Role, UserLimits
from modules.services.accounts import AccountEvent, AccountStore
from modules.services.studio_db import StudioDb, db_path, open_studio_db

PASSWORD = "correct horse"


def fast_hasher() -> PasswordHasher:
    return PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


class CountingHasher(PasswordHasher):
    """Counts argon2 verifies: what a remembered check saves, and what a failure always costs."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verifies = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - the base's name
        self.verifies += 1
        return super().verify(hash, password)


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StudioDb]:
    opened = open_studio_db(db_path(tmp_path))
    yield opened
    opened.close()


@pytest.fixture
def store(db: StudioDb) -> AccountStore:
    made = AccountStore(db, hasher=fast_hasher())
    made.add("Ann", PASSWORD, Role.ADMIN)
    return made


def test_sign_in_is_required_once_an_account_exists(db: StudioDb) -> None:
    store = AccountStore(db, hasher=fast_hasher())
    assert store.sign_in_required() is False
    store.add("ann", PASSWORD, Role.ADMIN)
    assert store.sign_in_required() is True


def test_an_account_added_by_another_process_is_noticed_within_seconds(db: StudioDb, monkeypatch) -> None:
    server = AccountStore(db, hasher=fast_hasher())
    assert server.sign_in_required() is False
    AccountStore(db, hasher=fast_hasher()).add("ann", PASSWORD, Role.ADMIN)  # the CLI, with its own store
    assert server.sign_in_required() is False  # cached for a moment (two seconds) ...
    monkeypatch.setattr("modules.services.accounts._FLAG_REFRESH_S", 0.0)
    assert server.sign_in_required() is True  # ... then read again


def test_the_right_password_signs_in_and_a_wrong_one_or_unknown_name_does_not(store: AccountStore) -> None:
    assert store.check_password("Ann", PASSWORD) == Identity("Ann", Role.ADMIN)
    assert store.check_password("Ann", PASSWORD + "x") is None
    assert store.check_password("nobody", PASSWORD) is None
    assert store.check_password("Ann", "") is None
    assert store.check_password("Ann", "x" * 5000) is None


def test_an_unknown_name_costs_one_argon2_verify_like_a_wrong_password(db: StudioDb) -> None:
    hasher = CountingHasher()
    store = AccountStore(db, hasher=hasher)
    store.add("ann", PASSWORD, Role.USER)
    store.check_password("nobody", PASSWORD)
    assert hasher.verifies == 1
    store.check_password("ann", "wrong password")
    store.check_password("ann", "wrong password")  # failures are never remembered
    assert hasher.verifies == 3
    store.check_password("ann", PASSWORD)
    store.check_password("ANN", PASSWORD)  # remembered (names ignore case)
    assert hasher.verifies == 4


def test_names_ignore_case_but_keep_their_spelling(store: AccountStore) -> None:
    assert store.check_password("ann", PASSWORD) == Identity("Ann", Role.ADMIN)
    assert store.identity("ANN") == Identity("Ann", Role.ADMIN)
    with pytest.raises(AccountError, match="taken"):
        store.add("aNN", PASSWORD, Role.USER)
    assert [a.name for a in store.accounts()] == ["Ann"]


@pytest.mark.parametrize("name", ["", " ann", "ann ", "a:b", "a/b", "a\\b", ".", "..", "a\nb", "x" * 65, None])
def test_names_that_cannot_be_accounts_or_folders_are_refused(store: AccountStore, name) -> None:
    with pytest.raises(AccountError):
        store.add(name, PASSWORD, Role.USER)
    assert len(store.accounts()) == 1


def test_unusual_but_sound_names_are_accepted(store: AccountStore) -> None:
    for name in ("bob.smith", "Zoë", "a b", "x" * 64, "..."):
        store.add(name, PASSWORD, Role.USER)
        assert store.check_password(name, PASSWORD) == Identity(name, Role.USER)


@pytest.mark.parametrize("password", ["", "short77", "x" * 1025, None])
def test_too_short_or_too_long_passwords_are_refused(store: AccountStore, password) -> None:
    with pytest.raises(AccountError, match="password|Password"):
        store.add("bob", password, Role.USER)
    with pytest.raises(AccountError):
        store.set_password("Ann", password)
    assert store.check_password("Ann", PASSWORD) is not None


def test_unknown_accounts_are_not_found(store: AccountStore) -> None:
    for change in (lambda: store.remove("bob"), lambda: store.set_password("bob", PASSWORD),
                   lambda: store.set_role("bob", Role.ADMIN), lambda: store.set_limits("bob", UserLimits()),
                   lambda: store.create_token("bob")):
        with pytest.raises(AccountNotFoundError):
            change()
    assert store.identity("bob") is None and store.account("bob") is None
    assert store.limits("bob") == UserLimits()  # an --api-auth login has no account and no limits


def test_the_last_admin_can_be_neither_removed_nor_demoted(store: AccountStore) -> None:
    store.add("bob", PASSWORD, Role.USER)
    with pytest.raises(AccountError, match="last admin"):
        store.remove("ann")
    with pytest.raises(AccountError, match="last admin"):
        store.set_role("Ann", Role.USER)
    assert store.identity("Ann") == Identity("Ann", Role.ADMIN)
    store.set_role("bob", Role.ADMIN)
    store.set_role("Ann", Role.USER)  # bob is an admin now
    assert store.identity("Ann") == Identity("Ann", Role.USER)
    with pytest.raises(AccountError, match="last admin"):
        store.remove("bob")
    store.remove("Ann")
    assert [a.name for a in store.accounts()] == ["bob"]


def test_limits_round_trip(store: AccountStore) -> None:
    limits = UserLimits(max_batch=4, max_size=768, max_steps=30, jobs_per_hour=12, checkpoints=("sd15*", "*.gguf"))
    store.add("bob", PASSWORD, Role.USER, limits)
    assert store.limits("BOB") == limits
    store.set_limits("bob", UserLimits(max_steps=10))
    assert store.limits("bob") == UserLimits(max_steps=10)
    assert AccountStore(store.db, hasher=fast_hasher()).account("bob").limits == UserLimits(max_steps=10)


def test_a_password_change_ends_the_remembered_check(db: StudioDb) -> None:
    hasher = CountingHasher()
    store = AccountStore(db, hasher=hasher)
    store.add("ann", PASSWORD, Role.ADMIN)
    assert store.check_password("ann", PASSWORD) is not None
    store.set_password("ann", "another password")
    assert store.check_password("ann", PASSWORD) is None
    assert store.check_password("ann", "another password") is not None


def test_a_password_changed_by_another_process_ends_the_remembered_check(db: StudioDb) -> None:
    server = AccountStore(db, hasher=fast_hasher())
    server.add("ann", PASSWORD, Role.ADMIN)
    assert server.check_password("ann", PASSWORD) is not None
    AccountStore(db, hasher=fast_hasher()).set_password("ann", "another password")  # the CLI
    assert server.check_password("ann", PASSWORD) is None


def test_a_removed_account_cannot_sign_in_even_when_remembered(store: AccountStore) -> None:
    store.add("bob", PASSWORD, Role.USER)
    assert store.check_password("bob", PASSWORD) is not None
    store.remove("bob")
    assert store.check_password("bob", PASSWORD) is None and store.identity("bob") is None


def test_an_old_hash_is_upgraded_on_sign_in(db: StudioDb) -> None:
    AccountStore(db, hasher=fast_hasher()).add("ann", PASSWORD, Role.ADMIN)
    stronger = PasswordHasher(time_cost=2, memory_cost=16, parallelism=1)
    assert AccountStore(db, hasher=stronger).check_password("ann", PASSWORD) is not None
    from sqlalchemy import select

    from modules.services.studio_db import users
    with db.engine.connect() as conn:
        stored = conn.execute(select(users.c.password_hash)).scalar_one()
    assert "t=2" in stored and not stronger.check_needs_rehash(stored)
    assert AccountStore(db, hasher=stronger).check_password("ann", PASSWORD) is not None


def test_tokens_sign_in_until_revoked(store: AccountStore) -> None:
    store.add("bob", PASSWORD, Role.USER)
    info, secret = store.create_token("BOB", "render farm")
    assert secret.startswith("atl_") and info.id.startswith("tok_") and len(info.id) == 16
    assert info.owner == "bob" and info.label == "render farm" and not info.revoked
    assert store.check_token(secret) == Identity("bob", Role.USER)
    assert store.check_token(secret + "x") is None and store.check_token("atl_nope") is None
    [listed] = store.tokens("bob")
    assert listed.id == info.id and listed.last_used_at is not None
    with pytest.raises(AccountNotFoundError):
        store.revoke_token(info.id, "Ann")  # not Ann's token: not found, whoever asks
    assert store.check_token(secret) is not None
    store.revoke_token(info.id, "bob")
    assert store.check_token(secret) is None
    assert store.tokens("bob")[0].revoked


def test_an_admin_revokes_anyones_token_and_lists_all(store: AccountStore) -> None:
    store.add("bob", PASSWORD, Role.USER)
    _, anns = store.create_token("Ann")
    bobs_info, bobs = store.create_token("bob")
    assert {t.owner for t in store.tokens(None)} == {"Ann", "bob"}
    assert [t.owner for t in store.tokens("ann")] == ["Ann"]
    store.revoke_token(bobs_info.id, None)
    assert store.check_token(bobs) is None and store.check_token(anns) is not None
    with pytest.raises(AccountNotFoundError):
        store.revoke_token("tok_000000000000", None)


def test_only_the_tokens_hash_is_stored(store: AccountStore) -> None:
    _, secret = store.create_token("Ann")
    assert secret.encode() not in store.db.path.read_bytes()
    assert PASSWORD.encode() not in store.db.path.read_bytes()


def test_a_removed_accounts_tokens_stop_working(store: AccountStore) -> None:
    store.add("bob", PASSWORD, Role.USER)
    _, secret = store.create_token("bob")
    store.remove("bob")
    assert store.check_token(secret) is None and store.tokens(None) == ()
    store.add("bob", PASSWORD, Role.USER)  # a new account of the same name does not inherit them
    assert store.check_token(secret) is None


def test_a_token_follows_its_accounts_role(store: AccountStore) -> None:
    store.add("bob", PASSWORD, Role.USER)
    _, secret = store.create_token("bob")
    store.set_role("bob", Role.ADMIN)
    assert store.check_token(secret) == Identity("bob", Role.ADMIN)


def test_listeners_hear_each_change_and_their_errors_do_not_break_it(store: AccountStore, caplog) -> None:
    heard: list[tuple[AccountEvent, str]] = []

    def broken(_event: AccountEvent, _name: str) -> None:
        raise RuntimeError("listener bug")

    store.on_change(broken)
    store.on_change(lambda event, name: heard.append((event, name)))
    with caplog.at_level(logging.ERROR):
        store.add("bob", PASSWORD, Role.USER)
        store.set_password("BOB", "another password")
        store.set_role("bob", Role.ADMIN)
        store.set_role("bob", Role.ADMIN)  # no change, nothing heard
        store.remove("bob")
    assert heard == [(AccountEvent.ADDED, "bob"), (AccountEvent.PASSWORD_CHANGED, "bob"),
                     (AccountEvent.ROLE_CHANGED, "bob"), (AccountEvent.REMOVED, "bob")]
    assert "listener bug" in caplog.text and store.account("bob") is None


def test_changes_made_by_another_process_reach_the_listeners(db: StudioDb, monkeypatch) -> None:
    server = AccountStore(db, hasher=fast_hasher())
    server.add("ann", PASSWORD, Role.ADMIN)
    server.add("bob", PASSWORD, Role.USER)
    heard: list[tuple[AccountEvent, str]] = []
    server.on_change(lambda event, name: heard.append((event, name)))
    monkeypatch.setattr("modules.services.accounts._FLAG_REFRESH_S", 0.0)
    server.sign_in_required()
    assert heard == []  # its own changes were told once, when made
    cli = AccountStore(db, hasher=fast_hasher())
    cli.set_password("bob", "another password")
    cli.set_role("bob", Role.ADMIN)
    cli.add("carol", PASSWORD, Role.USER)
    cli.remove("ann")
    assert server.sign_in_required() is True
    assert sorted(heard, key=lambda e: (e[1], e[0].value)) == [
        (AccountEvent.REMOVED, "ann"), (AccountEvent.PASSWORD_CHANGED, "bob"), (AccountEvent.ROLE_CHANGED, "bob"),
        (AccountEvent.ADDED, "carol")]
    server.sign_in_required()
    assert len(heard) == 4


def test_seeding_adds_missing_admins_and_keeps_existing_passwords(store: AccountStore, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        added = store.seed_admins({"ann": "flag password", "carol": "short"})
    assert added == ("carol",)
    assert store.identity("carol") == Identity("carol", Role.ADMIN)
    assert store.check_password("carol", "short") is not None  # a flag's password that worked before still does
    assert store.check_password("Ann", PASSWORD) is not None and store.check_password("Ann", "flag password") is None
    assert "'ann'" in caplog.text and "flag password" not in caplog.text
    assert store.seed_admins({"carol": "short"}) == ()


def test_two_admins_removed_at_once_leave_one(db: StudioDb) -> None:
    import threading

    store = AccountStore(db, hasher=fast_hasher())
    for name in ("ann", "bob"):
        store.add(name, PASSWORD, Role.ADMIN)
    refused: list[Exception] = []
    start = threading.Barrier(2)

    def remove(name: str) -> None:
        start.wait()
        try:
            store.remove(name)
        except AccountError as exc:
            refused.append(exc)

    threads = [threading.Thread(target=remove, args=(name,)) for name in ("ann", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(refused) == 1 and "last admin" in str(refused[0])
    assert [a.role for a in store.accounts()] == [Role.ADMIN]
