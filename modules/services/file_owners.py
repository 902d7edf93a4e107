"""Whose an output file is: the owner of the job that saved it (the job store's ``job_files``), or
for a folder ``outputs/<name>`` the account of that name (outputs per user).

The request guard's file rule (:mod:`modules.web.file_rule`) asks this for every file Gradio's file
route would serve from the outputs folder, so one user never fetches another's pictures.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from modules.services.studio_db import StudioDb, job_files, jobs


class FileOwners:
    """``owner_of(path)`` for :func:`modules.web.file_rule.file_rule`: an account's name, None for
    nobody's file, "" when the store cannot say (then only admins get it). Safe from any thread."""

    def __init__(self, db: StudioDb, outputs_dir: Path, account_name: Callable[[str], str | None]) -> None:
        self.db = db
        self.outputs_dir = Path(outputs_dir).resolve()
        self.account_name = account_name  # the account a folder name names (its own spelling), or None

    def __call__(self, path: Path) -> str | None:
        resolved = Path(path).resolve()
        if resolved.parent == self.outputs_dir and not resolved.is_file():  # outputs/<name>: that user's folder
            return self.account_name(resolved.name)
        spellings = list(dict.fromkeys((str(path), str(resolved))))
        query = (select(jobs.c.owner).select_from(job_files.join(jobs, job_files.c.job_id == jobs.c.id))
                 .where(job_files.c.path.in_(spellings)).limit(1))
        try:
            with self.db.engine.connect() as conn:
                return conn.execute(query).scalar()
        except SQLAlchemyError:  # an unreadable store: an unknown owner, so no non-admin gets the file
            return ""
