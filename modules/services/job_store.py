"""The job store: every accepted generation job, its state, its saved files, and the history.

It is the queue's :class:`~modules.services.queue_contract.JobJournal` (a job is written here
before it is accepted, and each start and end after), the output store's ledger of saved files
(so a job run again after a crash finds the images it already saved and writes none twice), and
what the history lists, searches and deletes. It lives with the front, beside the studio
database, whichever queue runs the jobs.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from modules.params import GenerationRequest
from modules.services.job_types import Job, JobEnd
from modules.services.queue_contract import RecoveredJob
from modules.services.studio_db import StudioDb

ALL_OWNERS = object()  # history(owner=ALL_OWNERS): everyone's jobs (admins)


class StoredState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self not in (StoredState.QUEUED, StoredState.RUNNING)


@dataclass(frozen=True)
class StoredFile:
    kind: str  # OutputKind value: txt2img-images, txt2img-grids, ...
    index: int  # the image's index in the job, -1 for the grid
    path: Path
    seed: int | None


@dataclass(frozen=True)
class StoredJob:
    id: str
    seq: int
    owner: str | None
    kind: str  # txt2img, img2img, inpaint
    state: StoredState
    request: GenerationRequest
    submitted_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    pin: int | None
    error: str | None
    infotext: str | None
    files: tuple[StoredFile, ...] = ()


class JobStore:
    """Jobs in the studio database. Every method is safe from any thread."""

    def __init__(self, db: StudioDb) -> None:
        self.db = db

    # --- the queue's journal -------------------------------------------------------------------

    def accepted(self, job: Job) -> None:
        return None  # CONTRACT-TEMP

    def started(self, job: Job) -> None:
        return None  # CONTRACT-TEMP

    def ended(self, job: Job, end: JobEnd, error: str | None) -> None:
        return None  # CONTRACT-TEMP

    def pinned(self, order: tuple[str, ...]) -> None:
        return None  # CONTRACT-TEMP

    def last_seq(self) -> int:
        return 0  # CONTRACT-TEMP

    def unfinished(self) -> tuple[RecoveredJob, ...]:
        """Jobs accepted and not ended (running ones first, then in submission order), for recovery;
        a row that no longer decodes is marked failed with the reason and left out."""
        return ()  # CONTRACT-TEMP

    # --- the output store's ledger ----------------------------------------------------------

    def saved_file(self, job_id: str, kind: str, index: int) -> Path | None:
        """The file this job already saved for image ``index`` of ``kind`` (if it is still there)."""
        return None  # CONTRACT-TEMP

    def record_file(self, job_id: str, kind: str, index: int, path: Path, seed: int | None) -> None:
        return None  # CONTRACT-TEMP

    # --- the history --------------------------------------------------------------------------

    def get(self, job_id: str) -> StoredJob | None:
        raise NotImplementedError

    def history(self, owner: object = ALL_OWNERS, search: str = "", limit: int = 50,
                offset: int = 0) -> tuple[tuple[StoredJob, ...], int]:
        """Ended jobs, newest first, of ``owner`` (a name, None for jobs without one, or
        ALL_OWNERS) whose prompts contain ``search``; and how many match in all."""
        raise NotImplementedError

    def delete(self, job_id: str) -> tuple[Path, ...]:
        """Forget an ended job; the files it saved (for the caller to delete)."""
        raise NotImplementedError

    def accepted_since(self, owner: str, since: float) -> Sequence[float]:
        """When ``owner``'s jobs accepted after ``since`` were submitted, oldest first (jobs per hour)."""
        raise NotImplementedError
