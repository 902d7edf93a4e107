"""``python app.py users ...``: add, list, remove accounts and change passwords from a shell.

``users add NAME --role admin|user [--password PW] [--limits JSON] [--data-dir DIR]`` asks for the
password twice when ``--password`` is not given; ``users list``, ``users remove NAME``,
``users passwd NAME [--password PW]``, ``users role NAME admin|user``, ``users limits NAME JSON``.

The database is the server's: ``DIR/atelier.db``, where DIR is ``--data-dir``, else the
``--data-dir`` in ``COMMANDLINE_ARGS`` (the server reads that variable too), else the project
folder. Changes reach a running server within seconds (it reads the accounts from the same file).
"""

from __future__ import annotations

import argparse
import getpass
import json
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from modules.errors import AccountError, AccountNotFoundError, ConfigError
from modules.identity import Role, UserLimits
from modules.paths import resolve_paths
from modules.services.accounts import Account, AccountStore
from modules.services.passwords import validate_name
from modules.services.studio_db import db_path, open_studio_db

_DATA_DIR_HELP = "the server's data dir (default: --data-dir in COMMANDLINE_ARGS, else the project folder)"


def accounts_main(args: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run one ``users`` command; the exit status (0 done, 2 refused, with the reason on stderr)."""
    parser = _parser()
    try:
        ns = parser.parse_args(list(args))
    except SystemExit as exc:  # --help (0) or a usage error (2, argparse printed why)
        return 0 if exc.code in (0, None) else 2
    data_dir = getattr(ns, "data_dir", None) or _data_dir_from(environ)
    path = db_path(resolve_paths(data_dir).data_dir)
    try:
        db = open_studio_db(path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return ns.run(AccountStore(db), ns)
    except (AccountError, ValueError) as exc:  # AccountNotFoundError too; ValueError: bad limits
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("\nerror: no password given; nothing changed.", file=sys.stderr)
        return 2
    finally:
        db.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py users", description="Manage Atelier's accounts.")
    # On the command and on each subcommand; SUPPRESS keeps a subcommand's default from hiding the other.
    parser.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=_DATA_DIR_HELP)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=_DATA_DIR_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add = commands.add_parser("add", parents=[common], help="add an account")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--password", help="its password (asked for when left out; a command line can be seen by others)")
    add.add_argument("--limits", help='limits as JSON, e.g. \'{"max_batch": 4, "checkpoints": ["sd15*"]}\'')
    add.set_defaults(run=_add)

    commands.add_parser("list", parents=[common], help="list the accounts").set_defaults(run=_list)

    remove = commands.add_parser("remove", parents=[common], help="remove an account and its API tokens")
    remove.add_argument("name")
    remove.set_defaults(run=_remove)

    passwd = commands.add_parser("passwd", parents=[common], help="change an account's password")
    passwd.add_argument("name")
    passwd.add_argument("--password", help="the new password (asked for when left out)")
    passwd.set_defaults(run=_passwd)

    role = commands.add_parser("role", parents=[common], help="make an account an admin or a user")
    role.add_argument("name")
    role.add_argument("role", choices=[r.value for r in Role])
    role.set_defaults(run=_role)

    limits = commands.add_parser("limits", parents=[common], help="set an account's limits ('{}': none)")
    limits.add_argument("name")
    limits.add_argument("limits", metavar="JSON")
    limits.set_defaults(run=_limits)
    return parser


def _data_dir_from(environ: Mapping[str, str]) -> Path | None:
    """The ``--data-dir`` the server would take from ``COMMANDLINE_ARGS`` (None: the project folder)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data-dir", type=Path)
    known, _ = parser.parse_known_args(shlex.split(environ.get("COMMANDLINE_ARGS", "")))
    return known.data_dir


def _add(store: AccountStore, ns: argparse.Namespace) -> int:
    limits = _parsed_limits(ns.limits) if ns.limits else UserLimits()
    validate_name(ns.name)
    if store.account(ns.name) is not None:  # say so before asking for a password twice
        raise AccountError(f"The name {ns.name!r} is taken (names are compared ignoring case).")
    password = ns.password if ns.password is not None else _ask_password(f"Password for {ns.name}: ")
    account = store.add(ns.name, password, Role(ns.role), limits)
    print(f"Added {account.role.value} {account.name!r} to {store.db.path}.")
    accounts = store.accounts()
    if len(accounts) == 1:
        print("Sign-in is now required for the web UI and the API (a running server notices within seconds).")
    if not any(a.role is Role.ADMIN for a in accounts):
        print("Note: no account is an admin yet; add one with --role admin to manage users and settings.")
    return 0


def _list(store: AccountStore, _ns: argparse.Namespace) -> int:
    accounts = store.accounts()
    if not accounts:
        print(f"No accounts in {store.db.path}: sign-in is not required.")
        return 0
    rows = [("NAME", "ROLE", "LIMITS", "CREATED"), *(_row(a) for a in accounts)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


def _remove(store: AccountStore, ns: argparse.Namespace) -> int:
    name = _stored_name(store, ns.name)
    store.remove(name)
    print(f"Removed {name!r} and its API tokens.")
    return 0


def _passwd(store: AccountStore, ns: argparse.Namespace) -> int:
    name = _stored_name(store, ns.name)  # before asking for a password twice
    password = ns.password if ns.password is not None else _ask_password(f"New password for {name}: ")
    store.set_password(name, password)
    print(f"Changed the password of {name!r}; its signed-in sessions end.")
    return 0


def _role(store: AccountStore, ns: argparse.Namespace) -> int:
    name = _stored_name(store, ns.name)
    store.set_role(name, Role(ns.role))
    print(f"{name!r} is now {'an admin' if ns.role == Role.ADMIN.value else 'a user'}.")
    return 0


def _limits(store: AccountStore, ns: argparse.Namespace) -> int:
    limits = _parsed_limits(ns.limits)
    name = _stored_name(store, ns.name)
    store.set_limits(name, limits)
    print(f"Limits of {name!r}: {_limits_text(limits)}.")
    return 0


def _stored_name(store: AccountStore, name: str) -> str:
    """The account's name as it was first written; AccountNotFoundError when there is none."""
    found = store.account(name)
    if found is None:
        raise AccountNotFoundError(f"No account named {name!r}.")
    return found.name


def _ask_password(prompt: str) -> str:
    """The password, typed twice without echo; AccountError when the two differ."""
    first = getpass.getpass(prompt)
    if getpass.getpass("Again: ") != first:
        raise AccountError("The two passwords differ; nothing changed.")
    return first


def _parsed_limits(text: str) -> UserLimits:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--limits is not JSON ({exc.msg}); e.g. '{{\"max_batch\": 4}}'") from exc
    if not isinstance(data, dict):
        raise ValueError('limits must be a JSON object, e.g. \'{"max_steps": 30}\'')
    return UserLimits.from_dict(data)


def _limits_text(limits: UserLimits) -> str:
    parts = [f"{k}={v}" for k, v in limits.as_dict().items() if v is not None and k != "checkpoints"]
    if limits.checkpoints:
        parts.append("checkpoints=" + ",".join(limits.checkpoints))
    return ", ".join(parts) or "none"


def _row(account: Account) -> tuple[str, str, str, str]:
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(account.created_at))
    limits = _limits_text(account.limits)
    return account.name, account.role.value, "-" if limits == "none" else limits, created
