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
import itertools
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from modules.errors import QueueFullError
from modules.params import GenerationRequest, GenerationResult
from modules.services.job_types import Job, JobContext, JobEnd, JobSpec, JobStatus, ProgressSnapshot

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


class JobJournal(Protocol):
    """Where a queue writes its jobs down (the job store), so they outlive the process. Only
    generation jobs are journalled; the queue calls these on its own threads."""

    def accepted(self, job: Job) -> None:
        """Before ``job`` joins the line: raising (StoreError) refuses it."""

    def started(self, job: Job) -> None: ...

    def ended(self, job: Job, end: JobEnd, error: str | None) -> None: ...

    def pinned(self, order: tuple[str, ...]) -> None:
        """An admin's order for the head of the queue (job ids, first first)."""

    def last_seq(self) -> int:
        """The highest running number of any job written down: new ids continue after it."""


@dataclass(frozen=True)
class RecoveredJob:
    """An accepted job found unfinished at start (waiting, or running when the process died)."""

    id: str
    spec: JobSpec
    owner: str | None
    submitted_at: float
    pin: int | None = None


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

    def move(self, job_id: str, position: int) -> bool:
        """Put a waiting job at ``position`` (1: next) of the line, an admin's order ahead of the fair
        one; False for a job not waiting."""

    def recover(self, jobs: tuple[RecoveredJob, ...]) -> None:
        """Put jobs accepted before a restart back in line (already journalled), before new ones."""

    def set_journal(self, journal: JobJournal | None, admins: Callable[[str], bool] | None = None) -> None:
        """Write jobs down in ``journal`` from now on; ``admins``: whether a name may see and steer
        every job."""


class JobQueueBase(abc.ABC):
    """Bookkeeping every queue shares: ids, the limit, history, owners, and steering by id."""

    mode = QueueMode.LOCAL

    def __init__(self, limit: int, shared: bool = True) -> None:
        self._limit = limit
        # False: with several users signed in, each sees, interrupts and skips only their own jobs.
        self._shared = shared
        self._lock = threading.Lock()
        self._pending: list[Job] = []
        self._history: OrderedDict[str, Job] = OrderedDict()
        self._counter = itertools.count(1)

    def may_control(self, job: Job, user: str | None) -> bool:
        """Whether ``user`` may watch, interrupt or skip ``job``: always on a shared (single-user)
        instance and for jobs submitted without a user; otherwise only the job's own user."""
        return self._shared or job.owner is None or job.owner == user

    def set_journal(self, journal: JobJournal | None, admins: Callable[[str], bool] | None = None) -> None:
        self._journal, self._admins = journal, admins  # CONTRACT-TEMP

    def recover(self, jobs: tuple[RecoveredJob, ...]) -> None:
        if jobs:  # CONTRACT-TEMP
            raise NotImplementedError

    def move(self, job_id: str, position: int) -> bool:
        return False  # CONTRACT-TEMP

    def _new_job(self, spec: JobSpec, owner: str | None, context: JobContext | None = None) -> Job:
        """A job added to the waiting list (under the lock), or QueueFullError at the limit."""
        job_id = f"{next(self._counter)}-{uuid.uuid4().hex[:8]}"
        job = Job(id=job_id, spec=spec, future=Future(), context=context or JobContext(job_id),
                  submitted_at=time.time(), owner=owner)
        job.context.job_id = job_id
        with self._lock:
            if len(self._pending) >= self._limit:
                raise QueueFullError(f"The queue is full ({self._limit} jobs waiting); try again shortly.")
            self._pending.append(job)
            self._history[job.id] = job
            while len(self._history) > _HISTORY + self._limit:
                self._history.popitem(last=False)
        return job

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
        with self._lock:
            return tuple(job for job in self._pending if self.may_control(job, user))

    def cancel(self, job_id: str, user: str | None) -> bool:
        """Take a waiting job out of line (the workers skip a job no longer waiting) and end it unrun."""
        with self._lock:
            job = self._history.get(job_id)
            if job is None or job not in self._pending or not self.may_control(job, user):
                return False
            self._pending.remove(job)
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
