"""The job queue: one worker thread owns the device; every face submits here.

A job is described entirely by a frozen, serialisable spec (a :class:`GenerationRequest` or a
:class:`ModelSwitch`), so the local worker can be swapped for remote ones (``scaleout``); both
follow :class:`modules.services.queue_contract.JobQueueContract`. Submitting returns
a :class:`Job` whose ``future`` carries the result or the error back to the caller. Interrupt and
skip are flags the worker checks at every sampling step, never thread cancellation.
"""

from __future__ import annotations

import abc
import enum
import itertools
import logging
import queue
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.errors import AtelierError, QueueFullError
from modules.params import GenerationRequest
from modules.services.queue_contract import QueueMode, WorkerState, WorkerStatus

log = logging.getLogger(__name__)
_HISTORY = 200  # finished jobs kept for lookups by id


@dataclass(frozen=True)
class ModelSwitch:
    """A job that loads a checkpoint, queued so it never races a running generation."""

    checkpoint: str


@dataclass(frozen=True)
class ModelUnload:
    """A job that frees the loaded checkpoint (API unload-checkpoint)."""


JobSpec = GenerationRequest | ModelSwitch | ModelUnload


class JobStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


@dataclass(frozen=True)
class ProgressSnapshot:
    """A consistent view of one job's progress, safe to hand to any thread."""

    job_id: str | None
    status: JobStatus | None
    step: int = 0
    total_steps: int = 0
    batch_index: int = 0
    batch_count: int = 0
    elapsed_seconds: float = 0.0
    queue_position: int = 0  # 0 = running now
    interrupted: bool = False
    skipped: bool = False

    @property
    def fraction(self) -> float:
        """Share of the job done, 0..1, counting finished batches and steps of the current one."""
        if not self.batch_count or not self.total_steps:
            return 0.0
        return min(1.0, (self.batch_index + self.step / self.total_steps) / self.batch_count)

    @property
    def eta_seconds(self) -> float | None:
        done = self.fraction
        if done <= 0.0:
            return None
        return self.elapsed_seconds / done - self.elapsed_seconds


class JobContext:
    """What a running job reports to and is steered by; shared between the worker and readers."""

    def __init__(self, job_id: str = "") -> None:
        self.job_id = job_id
        self._lock = threading.Lock()
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self._started: float | None = None
        self._step = self._total = self._batch = self._batches = 0
        self._latents: Any = None
        self._render: Callable[[Any], Image.Image] | None = None
        self._preview_key: tuple[int, int] | None = None
        self._preview: Image.Image | None = None

    # Steering, from any thread.
    def interrupt(self) -> None:
        self._interrupt.set()

    def skip(self) -> None:
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    @property
    def skipped(self) -> bool:
        return self._skip.is_set()

    def should_stop(self) -> bool:
        return self._interrupt.is_set() or self._skip.is_set()

    # Reporting, from the worker.
    def mark_started(self) -> None:
        with self._lock:
            self._started = time.monotonic()

    def begin_batch(self, index: int, count: int, steps: int) -> None:
        self._skip.clear()  # a skip applies to the batch that was running when it was pressed
        with self._lock:
            self._batch, self._batches, self._step, self._total = index, count, 0, steps

    def on_step(self, step: int, total: int, latents: Any, render: Callable[[Any], Image.Image]) -> None:
        with self._lock:
            self._step, self._total, self._latents, self._render = step, total, latents, render

    def mirror(self, step: int, total: int, batch_index: int, batch_count: int) -> None:
        """Progress that another process reports (a remote worker); the stop flags stay as they are."""
        with self._lock:
            self._step, self._total, self._batch, self._batches = step, total, batch_index, batch_count

    def clear_skip(self) -> None:
        """The skipped batch is over (a remote worker began the next one)."""
        self._skip.clear()

    # Reading, from any thread.
    def preview(self) -> Image.Image | None:
        """The live preview of the latest step, rendered on demand and at most once per step."""
        with self._lock:
            key, latents, render = (self._batch, self._step), self._latents, self._render
            if key == self._preview_key or latents is None or render is None:
                return self._preview
        image = render(latents)
        with self._lock:
            self._preview_key, self._preview = key, image
        return image

    def snapshot(self, job_id: str, status: JobStatus, position: int) -> ProgressSnapshot:
        with self._lock:
            elapsed = time.monotonic() - self._started if self._started is not None else 0.0
            return ProgressSnapshot(job_id=job_id, status=status, step=self._step, total_steps=self._total,
                                    batch_index=self._batch, batch_count=self._batches, elapsed_seconds=elapsed,
                                    queue_position=position, interrupted=self.interrupted, skipped=self.skipped)


@dataclass
class Job:
    """A submitted job. ``future`` resolves to the executor's result or raises its error."""

    id: str
    spec: JobSpec
    future: Future[Any]
    context: JobContext
    submitted_at: float
    status: JobStatus = JobStatus.QUEUED
    owner: str | None = None  # the signed-in user who submitted it; None without auth


Executor = Callable[[JobSpec, JobContext], Any]


WORKER_THREAD = "atelier-worker"  # the one thread that runs jobs


def drop_frames(error: BaseException) -> None:
    """Cut an error's tracebacks (already logged) before it is kept with the job: their frames hold
    the failed job's tensors, which would otherwise stay alive, on the GPU, for as long as the job."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__


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
        return job.context.snapshot(job.id, job.status, self.position(job))

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


class JobQueue(JobQueueBase):
    """A bounded FIFO of jobs run one at a time by a single worker thread in this process."""

    def __init__(self, executor: Executor, limit: int, shared: bool = True,
                 describe: Callable[[], tuple[str, str | None]] | None = None) -> None:
        super().__init__(limit, shared)
        self._executor = executor
        self._describe = describe  # (device, loaded checkpoint title) for the status panel
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._done = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=WORKER_THREAD, daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Interrupt the running job, drop waiting ones, and end the worker."""
        with self._lock:
            pending, self._pending = self._pending, []
            current = self._current
        for job in pending:
            job.context.interrupt()
        if current is not None:
            current.context.interrupt()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, spec: JobSpec, owner: str | None = None) -> Job:
        job = self._new_job(spec, owner)
        self._queue.put(job)
        return job

    def current(self) -> Job | None:
        with self._lock:
            return self._current

    def running(self) -> tuple[Job, ...]:
        current = self.current()
        return (current,) if current is not None else ()

    def workers(self) -> tuple[WorkerStatus, ...]:
        """The one worker thread of this process."""
        device, model = self._describe() if self._describe is not None else ("this process", None)
        with self._lock:
            current, done = self._current, self._done
        state = WorkerState.BUSY if current is not None else WorkerState.IDLE
        return (WorkerStatus(name="local", host=socket.gethostname(), device=device, model=model, state=state,
                             jobs_done=done, job_id=current.id if current else None),)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                if job not in self._pending:  # dropped by stop()
                    continue
                self._pending.remove(job)
                self._current = job
                job.status = JobStatus.RUNNING
            job.context.mark_started()
            result: object = None
            error: BaseException | None = None
            try:
                result = self._executor(job.spec, job.context)
            except AtelierError as exc:
                log.warning("Job %s failed: %s", job.id, exc)
                error = exc
            except Exception as exc:  # a bug: keep the worker alive, report it with its traceback
                log.exception("Job %s failed unexpectedly", job.id)
                error = exc
            # The job leaves the worker before its caller hears back, so a client that polls
            # progress right after its reply already sees an idle queue.
            with self._lock:
                self._current = None
                self._done += 1
                job.status = JobStatus.FAILED if error is not None else JobStatus.FINISHED
            if error is not None:
                drop_frames(error)
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
