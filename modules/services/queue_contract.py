"""The job queue contract: what the faces and the generation service may ask of any job queue.

Two implementations stand behind it: the in-process worker (:class:`modules.services.jobs.JobQueue`,
the default) and the Ray-backed one (:mod:`modules.services.scaleout.ray_queue`), which spreads jobs
over GPU workers on several hosts. Both build on :class:`JobQueueBase` (ids, the limit, history,
owners, steering) and mark where jobs run with :func:`on_worker`. The job types they share live in
:mod:`modules.services.job_types`. ``tests/integration/test_job_queue_contract.py`` runs one test
suite against both.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import dataclasses
import enum
import functools
import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from modules.errors import QueueFullError
from modules.params import GenerationRequest, GenerationResult
from modules.services.fair_order import Rank, Waiting, fair_order, moved
from modules.services.job_journal import JobJournal, RecoveredJob, end_of, seq_of
from modules.services.job_types import Job, JobContext, JobEnd, JobSpec, JobStatus, ProgressSnapshot

log = logging.getLogger(__name__)

_HISTORY = 200  # finished jobs kept for lookups by id

# True while the code running is a queue's job (or storing a job's results, with the Ray queue):
# an extension there must not wait for the queue (see ``ExtensionManager.refusal_for_generate``).
_running_on_worker: contextvars.ContextVar[bool] = contextvars.ContextVar("running_on_worker", default=False)


@contextlib.contextmanager
def on_worker() -> Iterator[None]:
    """Mark the code run inside as running on a queue's worker."""
    token = _running_on_worker.set(True)
    try:
        yield
    finally:
        _running_on_worker.reset(token)


def running_on_worker() -> bool:
    """Whether the caller runs on a queue's worker (inside :func:`on_worker`)."""
    return _running_on_worker.get()


class QueueMode(enum.Enum):
    LOCAL = "local"  # one worker thread in this process
    RAY = "ray"  # workers on a Ray cluster


class WorkerState(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"  # finishing its job before it leaves; takes no new one


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as the status panel and ``GET /sdapi/v1/workers`` show it."""

    name: str
    host: str
    device: str
    model: str | None  # the checkpoint it holds (title), None before its first job
    state: WorkerState
    jobs_done: int
    job_id: str | None = None  # the job it runs now

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "host": self.host, "device": self.device, "model": self.model,
                "state": self.state.value, "busy": self.state is not WorkerState.IDLE, "jobs_done": self.jobs_done,
                "job_id": self.job_id}


@runtime_checkable
class JobQueueContract(Protocol):
    """A bounded queue of jobs run by one or more workers. Every method is safe from any thread."""

    mode: QueueMode

    def start(self) -> None:
        """Begin running jobs (idempotent)."""

    def stop(self, timeout: float | None = None) -> None:
        """Interrupt running jobs, end waiting ones unrun, and stop the workers' dispatch."""

    def submit(self, spec: JobSpec, owner: str | None = None) -> Job:
        """Queue a job; raises QueueFullError at the limit. ``job.future`` carries the result or error."""

    def get(self, job_id: str) -> Job | None: ...

    def current(self) -> Job | None:
        """The longest-running job (the only one, in process)."""

    def running(self) -> tuple[Job, ...]:
        """Every running job, oldest first."""

    def pending_count(self) -> int: ...

    def position(self, job: Job) -> int:
        """0 while running (or done); n when the job is n-th in line."""

    def snapshot(self, job: Job) -> ProgressSnapshot: ...

    def may_control(self, job: Job, user: str | None) -> bool: ...

    def visible_current(self, user: str | None) -> Job | None:
        """The oldest running job ``user`` may see: what /progress shows and a bare interrupt stops."""

    def interrupt(self, job_id: str | None = None, user: str | None = None) -> bool: ...

    def skip(self, job_id: str | None = None, user: str | None = None) -> bool: ...

    def waiting(self, user: str | None) -> tuple[Job, ...]:
        """The jobs still waiting that ``user`` may see, first in line first."""

    def cancel(self, job_id: str, user: str | None) -> bool:
        """End a job that has not started without running it (its caller gets an interrupted, empty
        result); False for a running or finished job, an unknown id, or another user's job."""

    def workers(self) -> tuple[WorkerStatus, ...]:
        """The workers that run jobs, for the status panel."""

    def all_waiting(self) -> tuple[Job, ...]:
        """Every waiting job, first in line first (whoever owns it)."""

    def pinned_ids(self) -> tuple[str, ...]:
        """The ids an admin pinned to the head of the line, first first."""

    def move(self, job_id: str, position: int) -> bool:
        """Put a waiting job at ``position`` (1: next) of the line, an admin's order ahead of the fair
        one; False for a job not waiting."""

    def recover(self, jobs: tuple[RecoveredJob, ...]) -> None:
        """Put jobs accepted before a restart back in line (already journalled), before new ones."""

    def set_journal(self, journal: JobJournal | None, admins: Callable[[str], bool] | None = None) -> None:
        """Write jobs down in ``journal`` from now on; ``admins``: whether a name may see and steer
        every job."""


class JobQueueBase(abc.ABC):
    """Bookkeeping every queue shares: ids, the limit, history, owners, steering by id, the fair
    order of ``_pending`` (:mod:`modules.services.fair_order`) and the journal."""

    mode = QueueMode.LOCAL

    def __init__(self, limit: int, shared: bool = True) -> None:
        self._limit = limit
        # False: with several users signed in, each sees, interrupts and skips only their own jobs.
        self._shared = shared
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified whenever the waiting line changes
        self._pending: list[Job] = []  # in the order the jobs will start (kept by _reorder)
        self._history: OrderedDict[str, Job] = OrderedDict()
        self._seq = 0  # the running number of the latest job
        self._reserved = 0  # jobs past the limit check, being journalled
        self._journal: JobJournal | None = None
        self._admins: Callable[[str], bool] | None = None
        self._closing = False  # stopping: ends caused by the stop are not journalled (the jobs run after a restart)
        self._ranks: dict[str, Rank] = {}  # submission order of every unfinished job
        self._pins: dict[str, int] = {}  # an admin's order for the head of the line
        self._last_started: dict[str | None, int] = {}  # owner -> number of their latest start
        self._starts = itertools.count()
        self._ran: set[str] = set()  # unfinished jobs that have started (an end without a start is a cancel)
        self._journalled: set[str] = set()  # unfinished jobs the journal holds

    def may_control(self, job: Job, user: str | None) -> bool:
        """Whether ``user`` may watch, interrupt or skip ``job``: always on a shared (single-user)
        instance, for jobs submitted without a user, and for admins; otherwise only the job's own user."""
        return self._shared or job.owner is None or job.owner == user or self._is_admin(user)

    def _is_admin(self, user: str | None) -> bool:
        return user is not None and self._admins is not None and self._admins(user)

    def set_journal(self, journal: JobJournal | None, admins: Callable[[str], bool] | None = None) -> None:
        last = journal.last_seq() if journal is not None else 0
        with self._lock:
            self._journal, self._admins = journal, admins
            self._seq = max(self._seq, last)

    def recover(self, jobs: tuple[RecoveredJob, ...]) -> None:
        """Jobs accepted before a restart back in line, ahead of any new one of their owners, in the
        order given (the one that was running first). Nobody waits on their futures: the journal
        records how they end."""
        with self._lock:
            for found in jobs:
                spec = found.spec
                if isinstance(spec, GenerationRequest):
                    spec = dataclasses.replace(spec, job_id=found.id)
                job = Job(id=found.id, spec=spec, future=Future(), context=self._new_context(found.id),
                          submitted_at=found.submitted_at, owner=found.owner)
                job.future.add_done_callback(functools.partial(self._ended, job, self._journal))
                self._ranks[job.id] = (0, len(self._ranks))  # ahead of every new job, in the order given
                self._journalled.add(job.id)
                if found.pin is not None:
                    self._pins[job.id] = found.pin
                self._seq = max(self._seq, seq_of(job.id))
                self._pending.append(job)
                self._history[job.id] = job
            self._reorder()

    def move(self, job_id: str, position: int) -> bool:
        with self._lock:
            job = self._history.get(job_id)
            if job is None or job not in self._pending:
                return False
            order = moved([j.id for j in self._pending], sorted(self._pins, key=self._pins.__getitem__), job_id,
                          position)
            self._pins = {pinned: n for n, pinned in enumerate(order)}
            self._reorder()
            journal, written = self._journal, tuple(i for i in order if i in self._journalled)
        if journal is not None:
            try:
                journal.pinned(written)
            except Exception:  # the line here is already changed; only a restart would lose the order
                log.exception("Could not write the new order of the queue down")
        return True

    def all_waiting(self) -> tuple[Job, ...]:
        with self._lock:
            return tuple(self._pending)

    def pinned_ids(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._pins, key=self._pins.__getitem__))

    def _new_context(self, job_id: str) -> JobContext:
        """A fresh context for a job (a queue whose jobs run elsewhere mirrors their progress)."""
        return JobContext(job_id)

    def _new_job(self, spec: JobSpec, owner: str | None, context: JobContext | None = None) -> Job:
        """A job added to the waiting list, or QueueFullError at the limit. A generation is
        written down in the journal first: its error (StoreError) refuses the job."""
        with self._lock:
            if len(self._pending) + self._reserved >= self._limit:
                raise QueueFullError(f"The queue is full ({self._limit} jobs waiting); try again shortly.")
            self._seq, self._reserved = self._seq + 1, self._reserved + 1
            seq = self._seq
            journal = self._journal if isinstance(spec, GenerationRequest) else None
        job_id = f"{seq}-{uuid.uuid4().hex[:8]}"
        if isinstance(spec, GenerationRequest):
            spec = dataclasses.replace(spec, job_id=job_id)
        job = Job(id=job_id, spec=spec, future=Future(), context=context or self._new_context(job_id),
                  submitted_at=time.time(), owner=owner)
        job.context.job_id = job_id
        try:
            if journal is not None:
                journal.accepted(job)
        except BaseException:
            with self._lock:
                self._reserved -= 1
            raise
        job.future.add_done_callback(functools.partial(self._ended, job, journal))
        with self._lock:
            self._reserved -= 1  # in the same hold as the append: the limit stays exact
            self._ranks[job.id] = (1, seq)
            if journal is not None:
                self._journalled.add(job.id)
            self._pending.append(job)
            self._history[job.id] = job
            while len(self._history) > _HISTORY + self._limit:
                self._history.popitem(last=False)
            self._reorder()
        return job

    def _reorder(self) -> None:
        """Put ``_pending`` in start order (under the lock) and wake whoever waits for a job."""
        by_id = {job.id: job for job in self._pending}
        self._pins = {job_id: pin for job_id, pin in self._pins.items() if job_id in by_id}
        waiting = [Waiting(job.id, job.owner, self._ranks[job.id]) for job in self._pending]
        self._pending[:] = [by_id[job_id] for job_id in fair_order(waiting, self._pins, self._last_started)]
        self._changed.notify_all()

    def _on_start(self, job: Job) -> None:
        """``job`` has just started (its status is RUNNING): its owner goes to the back of the round."""
        with self._lock:
            self._last_started[job.owner] = next(self._starts)
            self._ran.add(job.id)
            self._pins.pop(job.id, None)
            self._reorder()
            journal = self._journal if job.id in self._journalled else None
        if journal is not None:
            try:
                journal.started(job)
            except Exception:  # the job runs all the same; after a crash it would count one attempt fewer
                log.exception("Could not write down that job %s started", job.id)

    def _close_journal(self) -> None:
        """The queue stops: jobs it interrupts or ends unrun now stay unfinished in the journal."""
        self._closing = True  # one flag, read under the lock

    def _ended(self, job: Job, journal: JobJournal | None, future: Future[Any]) -> None:
        """The job's future is done (on the thread that completed it): write down how it ended."""
        with self._lock:
            ran, closing = job.id in self._ran, self._closing
            self._ran.discard(job.id)
            self._journalled.discard(job.id)
            self._ranks.pop(job.id, None)
        if journal is None:
            return
        end = end_of(job, future, ran)
        if closing and end in (JobEnd.INTERRUPTED, JobEnd.CANCELLED):
            return  # ended by the stop: it runs again after the restart
        error = future.exception() if end is JobEnd.FAILED and not future.cancelled() else None
        try:
            journal.ended(job, end, str(error) if error is not None else None)
        except Exception:
            log.exception("Could not write down how job %s ended", job.id)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._history.get(job_id)

    @abc.abstractmethod
    def running(self) -> tuple[Job, ...]:
        """The jobs running now, oldest first (one with the in-process worker)."""

    def current(self) -> Job | None:
        running = self.running()
        return running[0] if running else None

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def position(self, job: Job) -> int:
        """0 while running (or done), n when n-1 jobs wait ahead of it plus the running one."""
        with self._lock:
            return self._pending.index(job) + 1 if job in self._pending else 0

    def snapshot(self, job: Job) -> ProgressSnapshot:
        snap = job.context.snapshot(job.id, job.status, self.position(job))
        part_of = getattr(job.spec, "part_of", None)  # a script's job k of n (X/Y/Z plot cells)
        return dataclasses.replace(snap, part_of=part_of) if part_of else snap

    def visible_current(self, user: str | None) -> Job | None:
        """The oldest running job ``user`` may see."""
        return next((job for job in self.running() if self.may_control(job, user)), None)

    def interrupt(self, job_id: str | None = None, user: str | None = None) -> bool:
        """Interrupt one job (by id) or the running one ``user`` sees, if ``user`` may. A waiting job
        ends without running."""
        job = self.get(job_id) if job_id else self.visible_current(user)
        if job is None or job.future.done() or not self.may_control(job, user):
            return False
        job.context.interrupt()
        return True

    def skip(self, job_id: str | None = None, user: str | None = None) -> bool:
        job = self.get(job_id) if job_id else self.visible_current(user)
        if job is None or job.status is not JobStatus.RUNNING or not self.may_control(job, user):
            return False
        job.context.skip()
        return True

    def waiting(self, user: str | None) -> tuple[Job, ...]:
        every = self._shared or self._is_admin(user)  # asked once: the admins predicate may read the database
        with self._lock:
            return tuple(job for job in self._pending if every or job.owner is None or job.owner == user)

    def cancel(self, job_id: str, user: str | None) -> bool:
        """Take a waiting job out of line (the workers skip a job no longer waiting) and end it unrun."""
        job = self.get(job_id)
        if job is None or not self.may_control(job, user):  # asked outside the lock: it may read the database
            return False
        with self._lock:
            if job not in self._pending:
                return False
            self._pending.remove(job)
            self._reorder()
        job.context.interrupt()
        self._end_unrun(job)
        return True

    def _end_unrun(self, job: Job) -> None:
        """Give a job that never ran its result: an empty, interrupted generation (None for other jobs)."""
        with self._lock:
            job.status = JobStatus.FINISHED
        if not job.future.done():
            job.future.set_result(unrun_result(job.spec))


def unrun_result(spec: JobSpec) -> GenerationResult | None:
    """What a job ended before it ran returns: a generation without images, marked interrupted."""
    return GenerationResult(request=spec, images=(), interrupted=True) if isinstance(spec, GenerationRequest) else None
