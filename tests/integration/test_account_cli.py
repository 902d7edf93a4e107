"""``python app.py users ...`` from a shell: add (password given, or typed twice), list, passwd, role,
limits, remove; refusals exit 2 with the reason; a damaged database is refused, naming its backup."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.identity import Identity, Role, UserLimits
from modules.services.account_cli import accounts_main
from modules.services.accounts import AccountStore
from modules.services.studio_db import db_path, open_studio_db
from tests.server_process import free_port

ROOT = Path(__file__).resolve().parents[2]


def users(data: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"} | (env or {})
    return subprocess.run([sys.executable, "app.py", "users", *args, "--data-dir", str(data)], cwd=ROOT,
                          env=environ, capture_output=True, text=True, timeout=60)


def signs_in(data: Path, name: str, password: str) -> Identity | None:
    db = open_studio_db(db_path(data))
    try:
        return AccountStore(db).check_password(name, password)
    finally:
        db.close()


@pytest.fixture
def typed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """What the person types at each password prompt, in order."""
    answers: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt="": answers.pop(0))
    yield answers
    assert answers == [], "a prompt expected here was never shown"


def test_accounts_made_and_changed_from_the_shell(tmp_path: Path) -> None:
    data = tmp_path / "data"
    added = users(data, "add", "Ann", "--role", "admin", "--password", "ann-password")
    assert added.returncode == 0, added.stderr
    assert "Added admin 'Ann'" in added.stdout and "Sign-in is now required" in added.stdout
    assert users(data, "add", "bob", "--role", "user", "--password", "bob-password",
                 "--limits", '{"max_batch": 4, "checkpoints": ["sd15*"]}').returncode == 0
    listed = users(data, "list")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "LIMITS", "CREATED"]
    assert lines[1].split()[:3] == ["Ann", "admin", "-"]
    assert lines[2].split()[:4] == ["bob", "user", "max_batch=4,", "checkpoints=sd15*"]
    assert "ann-password" not in listed.stdout

    taken = users(data, "add", "ANN", "--role", "user", "--password", "other-password")
    assert taken.returncode == 2 and "taken" in taken.stderr
    short = users(data, "passwd", "bob", "--password", "short")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr
    assert users(data, "passwd", "BOB", "--password", "new-bob-password").returncode == 0
    assert signs_in(data, "bob", "bob-password") is None
    assert signs_in(data, "bob", "new-bob-password") == Identity("bob", Role.USER)

    last = users(data, "remove", "ann")
    assert last.returncode == 2 and "last admin" in last.stderr
    assert users(data, "role", "bob", "admin").returncode == 0
    removed = users(data, "remove", "ann")
    assert removed.returncode == 0 and "Removed 'Ann'" in removed.stdout
    assert signs_in(data, "Ann", "ann-password") is None
    missing = users(data, "remove", "nobody")
    assert missing.returncode == 2 and "No account named 'nobody'" in missing.stderr


def test_the_password_is_asked_for_twice_when_not_given(tmp_path: Path, typed: list[str]) -> None:
    typed += ["carol-password", "carol-password"]
    assert accounts_main(["add", "carol", "--role", "user", "--data-dir", str(tmp_path)], {}) == 0
    assert signs_in(tmp_path, "carol", "carol-password") == Identity("carol", Role.USER)
    typed += ["new-password-1", "new-password-2"]  # a typo in the second: nothing changes
    assert accounts_main(["passwd", "carol", "--data-dir", str(tmp_path)], {}) == 2
    assert signs_in(tmp_path, "carol", "carol-password") is not None
    typed += ["new-password-1", "new-password-1"]
    assert accounts_main(["passwd", "carol", "--data-dir", str(tmp_path)], {}) == 0
    assert signs_in(tmp_path, "carol", "new-password-1") is not None


def test_mismatched_passwords_add_nothing(tmp_path: Path, typed: list[str], capsys) -> None:
    typed += ["dave-password", "dave-passw0rd"]
    assert accounts_main(["add", "dave", "--role", "admin", "--data-dir", str(tmp_path)], {}) == 2
    assert "differ" in capsys.readouterr().err
    assert accounts_main(["list", "--data-dir", str(tmp_path)], {}) == 0
    assert "No accounts" in capsys.readouterr().out


def test_the_data_dir_comes_from_commandline_args_like_the_servers(tmp_path: Path) -> None:
    environ = {"COMMANDLINE_ARGS": f"--listen --data-dir {tmp_path / 'server-data'} --port 7861"}
    assert accounts_main(["add", "erin", "--role", "admin", "--password", "erin-password"], environ) == 0
    assert signs_in(tmp_path / "server-data", "erin", "erin-password") is not None


def test_limits_are_set_and_bad_ones_refused(tmp_path: Path, capsys) -> None:
    base = ["--data-dir", str(tmp_path)]
    assert accounts_main(["add", "fay", "--role", "user", "--password", "fay-password", *base], {}) == 0
    assert accounts_main(["limits", "fay", '{"max_steps": 20, "jobs_per_hour": 5}', *base], {}) == 0
    assert accounts_main(["limits", "fay", '{"max_stepz": 20}', *base], {}) == 2
    assert "unknown limit 'max_stepz'" in capsys.readouterr().err
    assert accounts_main(["add", "gus", "--role", "user", "--password", "gus-password", "--limits", "{oops", *base],
                         {}) == 2
    assert "not JSON" in capsys.readouterr().err
    db = open_studio_db(db_path(tmp_path))
    try:
        store = AccountStore(db)
        assert store.limits("fay") == UserLimits(max_steps=20, jobs_per_hour=5) and store.account("gus") is None
    finally:
        db.close()


def test_the_remote_images_limit_is_set_and_listed(tmp_path: Path, capsys) -> None:
    base = ["--data-dir", str(tmp_path)]
    assert accounts_main(["add", "ida", "--role", "user", "--password", "ida-password", *base], {}) == 0
    assert accounts_main(["limits", "ida", '{"remote_images_per_day": 12}', *base], {}) == 0
    assert "remote_images_per_day=12" in capsys.readouterr().out
    assert accounts_main(["limits", "ida", '{"remote_images_per_day": 0}', *base], {}) == 2
    assert "remote_images_per_day must be a whole number" in capsys.readouterr().err
    assert accounts_main(["list", *base], {}) == 0 and "remote_images_per_day=12" in capsys.readouterr().out
    db = open_studio_db(db_path(tmp_path))
    try:
        assert AccountStore(db).limits("ida") == UserLimits(remote_images_per_day=12)
    finally:
        db.close()


def test_a_damaged_database_is_refused_naming_its_backup(tmp_path: Path) -> None:
    assert users(tmp_path, "add", "hal", "--role", "admin", "--password", "hal-password").returncode == 0
    path = db_path(tmp_path)
    open_studio_db(path, server_start=True).close()  # a server's start backs a sound file up
    path.write_bytes(b"this is not a database" * 400)
    refused = users(tmp_path, "list")
    assert refused.returncode == 2
    assert "damaged" in refused.stderr and f"{path.name}.backup-last-start" in refused.stderr
    assert path.read_bytes().startswith(b"this is not a database")  # never reset


def test_the_server_will_not_start_on_a_damaged_database(tmp_path: Path) -> None:
    """A damaged studio database stops the server at start (exit 2) with a message naming the backup
    to go back to; the file is left as it was, never reset."""
    assert users(tmp_path, "add", "hal", "--role", "admin", "--password", "hal-password").returncode == 0
    path = db_path(tmp_path)
    open_studio_db(path, server_start=True).close()  # the last start's backup
    path.write_bytes(b"not a database" * 500)
    environ = {k: v for k, v in os.environ.items() if k != "COMMANDLINE_ARGS"}
    started = subprocess.run([sys.executable, "app.py", "--data-dir", str(tmp_path), "--ckpt-dir", str(tmp_path),
                              "--port", str(free_port())], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=120)
    assert started.returncode == 2, started.stderr[-2000:]
    assert "damaged" in started.stderr and f"{path.name}.backup-last-start" in started.stderr
    assert path.read_bytes() == b"not a database" * 500
