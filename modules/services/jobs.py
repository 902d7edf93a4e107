"""The in-process job queue: one worker thread owns the device; every face submits here.

It follows :class:`modules.services.queue_contract.JobQueueContract` (the Ray-backed queue in
``scaleout`` is the other implementation); the jobs it runs are :mod:`modules.services.job_types`.
Submitting returns a :class:`Job` whose ``future`` carries the result or the error back to the
caller. Interrupt and skip are flags the worker checks at every sampling step, never thread
cancellation.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from modules.errors import AtelierError
from modules.services.job_types import Job, JobContext, JobSpec, JobStatus, drop_frames
from modules.services.queue_contract import JobQueueBase, WorkerState, WorkerStatus, on_worker

log = logging.getLogger(__name__)

Executor = Callable[[JobSpec, JobContext], Any]


class JobQueue(JobQueueBase):
    """A bounded line of jobs (in the fair order of :class:`JobQueueBase`) run one at a time by a
    single worker thread in this process, which takes the head of the line."""

    def __init__(self, executor: Executor, limit: int, shared: bool = True,
                 describe: Callable[[], tuple[str, str | None]] | None = None) -> None:
        super().__init__(limit, shared)
        self._executor = executor
        self._describe = describe  # (device, loaded checkpoint title) for the status panel
        self._stopping = False
        self._current: Job | None = None
        self._thread: threading.Thread | None = None
        self._done = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="atelier-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Interrupt the running job, end waiting ones unrun, and end the worker. The journal keeps
        both unfinished: they run after a restart."""
        self._close_journal()
        with self._lock:
            pending, self._pending = self._pending, []
            current, self._stopping = self._current, True
            self._changed.notify_all()
        for job in pending:
            job.context.interrupt()
            self._end_unrun(job)
        if current is not None:
            current.context.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, spec: JobSpec, owner: str | None = None) -> Job:
        return self._new_job(spec, owner)

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
        # Everything on this thread is the worker's: the job, its hooks, and its caller's future
        # callbacks (they run where the result is set), none of which may wait for the queue.
        with on_worker():
            while (job := self._take()) is not None:
                self._run(job)

    def _take(self) -> Job | None:
        """The head of the line, once there is one; None when the queue stops."""
        with self._changed:
            while not self._pending and not self._stopping:
                self._changed.wait()
            if self._stopping:
                return None
            job = self._pending.pop(0)
            self._current = job
            job.status = JobStatus.RUNNING
            return job

    def _run(self, job: Job) -> None:
        self._on_start(job)
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
        job.context.release()  # the 200 finished jobs kept for lookups hold no device memory
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
