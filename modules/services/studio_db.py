"""The studio's database: accounts, API tokens and jobs, in one SQLite file in the data dir.

SQLAlchemy Core holds the schema and the connections (a maintained layer: pooling per thread,
typed tables, parameters always bound). The file's ``PRAGMA user_version`` is its schema version;
:func:`open_studio_db` checks the file first, refuses a damaged one with the path of its latest
backup (it never resets it), and before each migration copies the file to
``atelier.db.backup-v<old>-<time>`` (and at each start to ``atelier.db.backup-last-start``). Jobs are written in WAL mode with ``synchronous=FULL``: a job
is on disk before its submitter hears it was accepted.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine

from modules.errors import ConfigError

log = logging.getLogger(__name__)

DB_NAME = "atelier.db"
SCHEMA_VERSION = 1

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("name_key", String, primary_key=True),  # the name casefolded: "Ann" and "ann" are one account
    Column("name", String, nullable=False),  # as it was first written
    Column("role", String, nullable=False),  # modules.identity.Role values
    Column("password_hash", String, nullable=False),  # argon2id, PHC string
    Column("limits", Text, nullable=False, default="{}"),  # UserLimits.as_dict() as JSON
    Column("created_at", Float, nullable=False),
    Column("password_changed_at", Float, nullable=False),
)

api_tokens = Table(
    "api_tokens", metadata,
    Column("id", String, primary_key=True),  # public id, shown in lists ("tok_3f2a...")
    Column("user_key", String, ForeignKey("users.name_key", ondelete="CASCADE"), nullable=False),
    Column("secret_hash", String, nullable=False, unique=True),  # sha256 hex of the secret; the secret is never stored
    Column("label", String, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
)

jobs = Table(
    "jobs", metadata,
    Column("id", String, primary_key=True),  # the queue's job id ("12-3fa4b2c1")
    Column("seq", Integer, nullable=False),  # submission order (the id's running number)
    Column("owner", String),  # the account's name, None without sign-in
    Column("kind", String, nullable=False),  # txt2img, img2img, inpaint
    Column("state", String, nullable=False),  # modules.services.job_store.StoredState values
    Column("request", Text, nullable=False),  # the JobSpec as JSON (modules.services.request_codec)
    Column("prompt", Text, nullable=False, default=""),  # for search
    Column("negative_prompt", Text, nullable=False, default=""),
    Column("submitted_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("attempts", Integer, nullable=False, default=0),  # starts: more than 1 after a restart mid-job
    Column("pin", Integer),  # an admin's place for it at the head of the queue (lower first); None: fair order
    Column("error", Text),
    Column("infotext", Text),  # the first image's parameters, for the history
    Index("jobs_state_seq", "state", "seq"),
    Index("jobs_owner_submitted", "owner", "submitted_at"),
)

job_files = Table(
    "job_files", metadata,
    Column("job_id", String, ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String, primary_key=True),  # the OutputKind value (txt2img, txt2img-grids, ...)
    Column("idx", Integer, primary_key=True),  # the image's index in the job, -1 for the grid
    Column("path", Text, nullable=False),
    Column("seed", Integer),
)

# Migrations from version N to N+1, in order; each gets an open connection inside a transaction.
MIGRATIONS: dict[int, Callable[[Any], None]] = {}


@dataclass(frozen=True)
class StudioDb:
    """The open database: its file and the SQLAlchemy engine every store shares."""

    path: Path
    engine: Engine

    def close(self) -> None:
        self.engine.dispose()


def db_path(data_dir: Path) -> Path:
    return data_dir / DB_NAME


def open_studio_db(path: Path, server_start: bool = False) -> StudioDb:
    """The database at ``path``, created or migrated to :data:`SCHEMA_VERSION`. A file that is not a
    sound SQLite database, or one from a newer Atelier, raises ConfigError (startup stops) naming
    the file and its latest backup. ``server_start``: the server is starting on it (a sound file is
    then copied to ``<name>.backup-last-start``; the ``users`` command and tools leave that copy be)."""
    # 1. Check what is there before SQLAlchemy touches it.
    version = _checked_version(path) if path.exists() else 0
    if version > SCHEMA_VERSION:
        raise ConfigError(f"{path} was written by a newer Atelier (schema {version}, this one reads up to "
                          f"{SCHEMA_VERSION}); start that version, or move the file away.")
    # 2. Back a sound file up: before changing its schema, and as the last one that opened.
    if 0 < version < SCHEMA_VERSION:
        backup = _backup(path, f"v{version}-{time.strftime('%Y%m%d-%H%M%S')}")
        log.info("Migrating %s from schema %d to %d (backup: %s)", path, version, SCHEMA_VERSION, backup)
    elif version and server_start:
        _backup(path, "last-start")
    # 3. Open it, with the pragmas every connection needs.
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False, "timeout": 30})
    event.listen(engine, "connect", _pragmas)
    # 4. Create the tables of a new file, or migrate an old one step by step.
    with engine.begin() as conn:
        if version == 0:
            metadata.create_all(conn)
        for step in range(max(version, 1), SCHEMA_VERSION):
            MIGRATIONS[step](conn)
        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return StudioDb(path=path, engine=engine)


def _pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _checked_version(path: Path) -> int:
    """The schema version of an existing file, or ConfigError when SQLite finds it damaged."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as conn:
            result = conn.execute("PRAGMA quick_check").fetchone()
            if result is None or result[0] != "ok":
                raise sqlite3.DatabaseError(str(result[0] if result else "no answer"))
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > 0 and not conn.execute("SELECT name FROM sqlite_master WHERE name = 'users'").fetchone():
                raise sqlite3.DatabaseError("its tables are missing")
            return version
    except sqlite3.DatabaseError as exc:
        raise ConfigError(_damaged_message(path, str(exc))) from exc


def _damaged_message(path: Path, reason: str) -> str:
    backups = sorted(path.parent.glob(f"{path.name}.backup-*"), key=lambda p: p.stat().st_mtime)
    where = (f"the latest backup is {backups[-1]} (copy it to {path} to go back to it)" if backups
             else "no backup of it exists yet (one is made before each migration)")
    return (f"The studio database {path} is damaged ({reason[:200]}); Atelier will not start on it and will not "
            f"reset it. Move it away to start with no accounts and no job history; {where}.")


def _backup(path: Path, tag: str) -> Path:
    """A consistent copy of the database (SQLite's online backup), beside it."""
    target = path.with_name(f"{path.name}.backup-{tag}")
    with sqlite3.connect(path) as source, sqlite3.connect(target) as copy:
        source.backup(copy)
    return target
