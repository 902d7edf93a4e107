"""The job store: every accepted generation job, its state, its saved files, and the history.

It is the queue's :class:`~modules.services.queue_contract.JobJournal` (a job is written here
before it is accepted, and each start and end after), the output store's ledger of saved files
(so a job run again after a crash finds the images it already saved and writes none twice), and
what the history lists, searches and deletes. It lives with the front, beside the studio
database, whichever queue runs the jobs.

Requests are kept as JSON (:mod:`modules.services.request_codec`), never pickled. Each method is
one short transaction on the shared engine, so any thread may call any of them.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, bindparam, case, delete, func, or_, select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from modules.errors import JobNotFoundError, StoreError
from modules.params import GenerationRequest, GenerationResult
from modules.services.job_types import Job, JobEnd
from modules.services.queue_contract import RecoveredJob
from modules.services.remote.catalog import split_title
from modules.services.request_codec import decode_spec, encode_spec
from modules.services.studio_db import StudioDb, job_files, jobs

log = logging.getLogger(__name__)

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


_OPEN = (StoredState.QUEUED.value, StoredState.RUNNING.value)
_DONE = tuple(s.value for s in StoredState if s.done)


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


def remote_images(stored: str) -> int:
    """The images a stored request asks of a remote engine (0 for a local checkpoint's job)."""
    try:
        spec = json.loads(stored).get("spec") or {}
    except (ValueError, AttributeError):
        return 0
    checkpoint = spec.get("checkpoint") if isinstance(spec, dict) else None
    if not isinstance(checkpoint, str) or split_title(checkpoint) is None:
        return 0
    size, count = spec.get("batch_size", 1), spec.get("batch_count", 1)
    return size * count if isinstance(size, int) and isinstance(count, int) else 0


def job_kind(request: GenerationRequest) -> str:
    """txt2img, img2img or inpaint: what the history and the queue call a request."""
    if request.init_image is None:
        return "txt2img"
    return "inpaint" if request.mask is not None else "img2img"


def step_count(request: GenerationRequest) -> int:
    """Sampling steps the job runs over all its images (hires fix's second pass included): what its
    duration is estimated from."""
    steps = request.steps
    if request.hires is not None:
        steps += request.hires.steps or request.steps
    return max(1, steps) * max(1, request.images_per_job)


def like_pattern(text: str) -> str:
    """A LIKE pattern (escape ``\\``) matching ``text`` anywhere, its % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class JobStore:
    """Jobs in the studio database. Every method is safe from any thread."""

    def __init__(self, db: StudioDb) -> None:
        self.db = db

    # --- the queue's journal -------------------------------------------------------------------

    def accepted(self, job: Job) -> None:
        """Write ``job`` down; StoreError when it cannot be (the queue then does not accept it)."""
        if not isinstance(job.spec, GenerationRequest):
            return  # only generation jobs are journalled; model and extras jobs are not history
        request = job.spec
        try:
            row = {"id": job.id, "seq": int(job.id.split("-")[0]), "owner": job.owner, "kind": job_kind(request),
                   "state": StoredState.QUEUED.value, "request": encode_spec(request), "prompt": request.prompt,
                   "negative_prompt": request.negative_prompt, "submitted_at": job.submitted_at, "attempts": 0}
            with self.db.engine.begin() as conn:
                conn.execute(jobs.insert().values(**row))
        except (SQLAlchemyError, ValueError) as exc:
            log.error("Could not record job %s: %s", job.id, exc)
            raise StoreError(f"The job was not accepted: it could not be recorded ({_short(exc)}).") from exc

    def started(self, job: Job) -> None:
        # A failure to record a start or an end is logged, never raised into the worker: at worst
        # the job shows its older state, or runs again after a restart.
        self._update(job.id, "start", state=StoredState.RUNNING.value, started_at=time.time(),
                     attempts=jobs.c.attempts + 1)

    def ended(self, job: Job, end: JobEnd, error: str | None) -> None:
        self._update(job.id, "end", state=StoredState(end.value).value, finished_at=time.time(), error=error,
                     pin=None, infotext=_first_infotext(job))

    def pinned(self, order: tuple[str, ...]) -> None:
        try:
            with self.db.engine.begin() as conn:
                conn.execute(update(jobs).where(jobs.c.pin.is_not(None)).values(pin=None))
                if order:
                    conn.execute(update(jobs).where(jobs.c.id == bindparam("job_id"),
                                                      jobs.c.state == StoredState.QUEUED.value)
                                 .values(pin=bindparam("place")),
                                 [{"job_id": job_id, "place": place} for place, job_id in enumerate(order)])
        except SQLAlchemyError as exc:
            log.error("Could not record the queue's pinned order: %s", exc)

    def last_seq(self) -> int:
        with self._reading() as conn:
            return int(conn.execute(select(func.max(jobs.c.seq))).scalar() or 0)

    def unfinished(self) -> tuple[RecoveredJob, ...]:
        """Jobs accepted and not ended (running ones first, then in submission order), for recovery;
        a row that no longer decodes is marked failed with the reason and left out."""
        running_first = case((jobs.c.state == StoredState.RUNNING.value, 0), else_=1)
        query = (select(jobs.c.id, jobs.c.request, jobs.c.owner, jobs.c.submitted_at, jobs.c.pin)
                 .where(jobs.c.state.in_(_OPEN))
                 .order_by(running_first, jobs.c.pin.is_(None), jobs.c.pin, jobs.c.seq))
        with self._reading() as conn:
            rows = conn.execute(query).all()
        found: list[RecoveredJob] = []
        for row in rows:
            try:
                spec = decode_spec(row.request)
            except ValueError as exc:
                log.error("Job %s cannot be run again: its stored request is damaged (%s); marked failed",
                          row.id, exc)
                self._update(row.id, "failure", state=StoredState.FAILED.value, finished_at=time.time(),
                             error=f"its stored request could not be read: {exc}", pin=None)
                continue
            found.append(RecoveredJob(id=row.id, spec=spec, owner=row.owner, submitted_at=row.submitted_at,
                                      pin=row.pin))
        return tuple(found)

    # --- the output store's ledger ----------------------------------------------------------

    def saved_file(self, job_id: str, kind: str, index: int) -> Path | None:
        """The file this job already saved for image ``index`` of ``kind`` (if it is still there)."""
        query = select(job_files.c.path).where(job_files.c.job_id == job_id, job_files.c.kind == kind,
                                               job_files.c.idx == index)
        try:
            with self.db.engine.connect() as conn:
                found = conn.execute(query).scalar()
        except SQLAlchemyError as exc:
            log.error("Could not read the files of job %s: %s", job_id, exc)
            return None
        return Path(found) if found and Path(found).is_file() else None

    def record_file(self, job_id: str, kind: str, index: int, path: Path, seed: int | None) -> None:
        row = {"job_id": job_id, "kind": kind, "idx": index, "path": str(path), "seed": seed}
        statement = sqlite_insert(job_files).values(**row).on_conflict_do_update(
            index_elements=["job_id", "kind", "idx"], set_={"path": str(path), "seed": seed})
        try:
            with self.db.engine.begin() as conn:
                conn.execute(statement)
        except SQLAlchemyError as exc:  # the image is saved; only a rerun after a crash could repeat it
            log.error("Could not record file %s of job %s: %s", path, job_id, exc)

    # --- the history --------------------------------------------------------------------------

    def get(self, job_id: str) -> StoredJob | None:
        with self._reading() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
            found = self._with_files(conn, [row] if row is not None else [])
        return found[0] if found else None

    def history(self, owner: object = ALL_OWNERS, search: str = "", limit: int = 50,
                offset: int = 0) -> tuple[tuple[StoredJob, ...], int]:
        """Ended jobs, newest first, of ``owner`` (a name, None for jobs without one, or
        ALL_OWNERS) whose prompts contain ``search``; and how many match in all."""
        conditions: list[Any] = [jobs.c.state.in_(_DONE)]
        if owner is None:
            conditions.append(jobs.c.owner.is_(None))
        elif owner is not ALL_OWNERS:
            conditions.append(jobs.c.owner == owner)
        if search:
            pattern = like_pattern(search)
            conditions.append(or_(jobs.c.prompt.like(pattern, escape="\\"),
                                  jobs.c.negative_prompt.like(pattern, escape="\\")))
        newest = func.coalesce(jobs.c.finished_at, jobs.c.submitted_at)
        query = (select(jobs).where(*conditions).order_by(newest.desc(), jobs.c.seq.desc())
                 .limit(max(0, limit)).offset(max(0, offset)))
        with self._reading() as conn:
            total = int(conn.execute(select(func.count()).select_from(jobs).where(*conditions)).scalar() or 0)
            found = self._with_files(conn, conn.execute(query).all())
        return tuple(found), total

    def delete(self, job_id: str) -> tuple[Path, ...]:
        """Forget an ended job; the files it saved (for the caller to delete)."""
        with self._reading(write=True) as conn:
            state = conn.execute(select(jobs.c.state).where(jobs.c.id == job_id)).scalar()
            if state is None:
                raise JobNotFoundError(f"No job {job_id} in the history.")
            if state in _OPEN:
                raise JobNotFoundError(f"Job {job_id} is still in the queue, not in the history; cancel it first.")
            paths = conn.execute(select(job_files.c.path).where(job_files.c.job_id == job_id)).scalars().all()
            conn.execute(delete(job_files).where(job_files.c.job_id == job_id))
            conn.execute(delete(jobs).where(jobs.c.id == job_id))
        return tuple(Path(p) for p in paths)

    def accepted_since(self, owner: str, since: float) -> Sequence[float]:
        """When ``owner``'s jobs accepted after ``since`` were submitted, oldest first (jobs per hour)."""
        query = (select(jobs.c.submitted_at).where(jobs.c.owner == owner, jobs.c.submitted_at > since)
                 .order_by(jobs.c.submitted_at))
        with self._reading() as conn:
            return [float(t) for t in conn.execute(query).scalars().all()]

    def remote_images_since(self, owner: str, since: float) -> Sequence[tuple[float, int]]:
        """(accepted at, images) of ``owner``'s jobs on remote engines since ``since`` that did not
        fail or get cancelled (what their daily limit counts)."""
        query = (select(jobs.c.submitted_at, jobs.c.request)
                 .where(jobs.c.owner == owner, jobs.c.submitted_at > since,
                        jobs.c.state.notin_([StoredState.FAILED.value, StoredState.CANCELLED.value])))
        with self._reading() as conn:
            rows = conn.execute(query).all()
        return [(float(at), count) for at, text in rows if (count := remote_images(text))]

    def seconds_per_step(self, recent: int = 20) -> float | None:
        """Seconds one sampling step of one image took, on average over the ``recent`` latest
        finished jobs (for the queue's ETAs); None before any job finished."""
        query = (select(jobs.c.request, jobs.c.started_at, jobs.c.finished_at)
                 .where(jobs.c.state == StoredState.FINISHED.value, jobs.c.started_at.is_not(None),
                        jobs.c.finished_at.is_not(None))
                 .order_by(jobs.c.finished_at.desc()).limit(recent))
        with self._reading() as conn:
            rows = conn.execute(query).all()
        seconds = steps = 0.0
        for row in rows:
            try:
                request = decode_spec(row.request)
            except ValueError:
                continue
            if isinstance(request, GenerationRequest):
                seconds += max(0.0, row.finished_at - row.started_at)
                steps += step_count(request)
        return seconds / steps if steps else None

    # --- helpers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self, write: bool = False) -> Iterator[Connection]:
        """A connection (a transaction when ``write``) whose database errors reach callers as
        StoreError (503)."""
        try:
            with self.db.engine.begin() if write else self.db.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            log.error("The studio database failed: %s", exc)
            raise StoreError(f"The job history is not available ({_short(exc)}).") from exc

    def _update(self, job_id: str, what: str, **values: Any) -> None:
        try:
            with self.db.engine.begin() as conn:
                conn.execute(update(jobs).where(jobs.c.id == job_id).values(**values))
        except SQLAlchemyError as exc:
            log.error("Could not record the %s of job %s: %s", what, job_id, exc)

    def _with_files(self, conn: Connection, rows: Sequence[Row[Any]]) -> list[StoredJob]:
        """The jobs of ``rows`` with their files; a row whose request no longer decodes is left out."""
        ids = [row.id for row in rows]
        files: dict[str, list[StoredFile]] = {job_id: [] for job_id in ids}
        if ids:
            query = select(job_files).where(job_files.c.job_id.in_(ids)).order_by(job_files.c.kind, job_files.c.idx)
            for f in conn.execute(query):
                files[f.job_id].append(StoredFile(kind=f.kind, index=f.idx, path=Path(f.path), seed=f.seed))
        found = []
        for row in rows:
            try:
                request = decode_spec(row.request)
            except ValueError as exc:
                log.warning("Job %s is left out of the history: its stored request is damaged (%s)", row.id, exc)
                continue
            if not isinstance(request, GenerationRequest):
                continue
            found.append(StoredJob(
                id=row.id, seq=row.seq, owner=row.owner, kind=row.kind, state=StoredState(row.state),
                request=request, submitted_at=row.submitted_at, started_at=row.started_at,
                finished_at=row.finished_at, attempts=row.attempts, pin=row.pin, error=row.error,
                infotext=row.infotext, files=tuple(files[row.id])))
        return found


def _first_infotext(job: Job) -> str | None:
    """The parameters of the job's first image (or its grid), when it ended with a result."""
    future = job.future
    try:
        if not future.done() or future.cancelled() or future.exception(timeout=0) is not None:
            return None
        result = future.result(timeout=0)
    except Exception:  # noqa: BLE001 - the infotext is a nicety; the end is recorded without it
        return None
    if not isinstance(result, GenerationResult):
        return None
    first = result.images[0] if result.images else result.grid
    return first.infotext if first is not None and first.infotext else None


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
