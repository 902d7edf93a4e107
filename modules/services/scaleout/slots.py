"""The front's view of remote work: each worker's slot, a remote job's context, and the settings and
hooks the Ray queue runs with. No Ray calls here: the queue's dispatcher thread makes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from PIL import Image

from modules.services.job_types import Job, JobContext, JobSpec
from modules.services.queue_contract import WorkerState, WorkerStatus
from modules.services.scaleout.dispatch import IdleWorker
from modules.services.scaleout.protocol import NAMESPACE, RemoteProgress, WorkerDescription


@dataclass(frozen=True)
class DispatchSettings:
    """How the front dispatches to, watches and retries its workers."""

    namespace: str = NAMESPACE
    discover_seconds: float = 2.0  # how often to look for workers that joined or left
    poll_seconds: float = 0.25  # progress reads of a busy worker
    reply_timeout: float = 60.0  # a busy worker that answers no progress read for this long is lost
    stall_timeout: float = 900.0  # ... and one whose steps do not move for this long (model loads included)
    max_attempts: int = 3  # a job lost with its worker runs again at most twice
    max_bypass: int = 4  # affinity passes over an older job at most this often
    affinity_wait: float = 10.0  # a job waits this long for the worker holding its model before another loads it
    preview_interest: float = 2.0  # fetch previews while someone read one in the last seconds
    stop_grace: float = 10.0  # on stop, wait this long for interrupted jobs to come back


class FrontHooks(Protocol):
    """What the Ray queue needs from the front's services (and what a test fakes)."""

    def pin(self, spec: JobSpec) -> JobSpec:
        """The spec as workers must see it (a concrete checkpoint name); may raise AtelierError."""

    def remote(self, spec: JobSpec) -> bool:
        """Whether a worker runs ``spec`` (generations) or the front does (model selection)."""

    def needs(self, spec: JobSpec) -> tuple[str, ...]:
        """Checkpoint names a worker must have; the first is the affinity key."""

    def run_here(self, spec: JobSpec, context: JobContext) -> Any: ...

    def finish(self, spec: JobSpec, result: Any) -> Any:
        """The caller's result from what the worker returned (the front saves images here)."""

    def unrun(self, spec: JobSpec) -> Any:
        """The result of a job interrupted before it ran."""


class RemoteJobContext(JobContext):
    """A job's context on the front: counters mirrored from its worker; previews fetched only while
    someone looks at them."""

    def __init__(self, job_id: str = "") -> None:
        super().__init__(job_id)
        self._remote_preview: Image.Image | None = None
        self._wanted_at = float("-inf")

    def preview(self) -> Image.Image | None:
        self._wanted_at = time.monotonic()
        return self._remote_preview

    def set_preview(self, image: Image.Image | None) -> None:
        if image is not None:
            self._remote_preview = image

    def preview_wanted(self, within: float) -> bool:
        return time.monotonic() - self._wanted_at < within

    def reset(self) -> None:
        """Back in line after its worker was lost: nothing of the lost attempt shows."""
        self.mirror(0, 0, 0, 0)
        self._remote_preview = None
        self.clear_skip()


@dataclass
class Slot:
    """One worker as the dispatcher tracks it (dispatcher thread only)."""

    actor: Any
    info: WorkerDescription
    job: Job | None = None
    job_model: str | None = None  # the model its running job needs (it holds it, or is loading it)
    run_ref: Any = None
    progress_ref: Any = None
    last_poll: float = 0.0
    last_reply: float = 0.0
    last_change: float = 0.0
    seen: tuple[int, int] = (-1, -1)  # (batch, step) of the latest progress read
    sent_interrupt: bool = False
    sent_skip: bool = False

    @property
    def name(self) -> str:
        return self.info.name

    def idle(self) -> IdleWorker:
        return IdleWorker(self.info.name, self.info.model, frozenset(self.info.checkpoints))

    @property
    def holds(self) -> str | None:
        """The model it holds, or is loading for its running job."""
        return self.job_model if self.job is not None else self.info.model

    def status(self) -> WorkerStatus:
        state = WorkerState.DRAINING if self.info.draining else WorkerState.BUSY if self.job else WorkerState.IDLE
        return WorkerStatus(name=self.info.name.split(":", 1)[-1], host=self.info.host, device=self.info.device,
                            model=self.info.model_title, state=state, jobs_done=self.info.jobs_done,
                            job_id=self.job.id if self.job else None)

    def begin(self, job: Job, model: str | None, run_ref: Any, now: float) -> None:
        self.job, self.job_model, self.run_ref, self.progress_ref = job, model, run_ref, None
        self.last_poll, self.last_reply, self.last_change = 0.0, now, now
        self.seen, self.sent_interrupt, self.sent_skip = (-1, -1), False, False

    def end(self, info: WorkerDescription | None) -> None:
        self.job = self.run_ref = self.progress_ref = None
        if info is not None:
            self.info = info

    def heard(self, progress: RemoteProgress, now: float) -> None:
        """A progress read came back: mirror it into the job, and note whether the job moved."""
        self.progress_ref, self.last_reply = None, now
        if progress.draining != self.info.draining:
            self.info = replace(self.info, draining=progress.draining)
        job = self.job
        if job is None or progress.job_id != job.id:
            return
        position = (progress.batch_index, progress.step)
        if position != self.seen:
            if position[0] != self.seen[0] and self.sent_skip:  # the skipped batch is over
                job.context.clear_skip()
                self.sent_skip = False
            self.seen, self.last_change = position, now
        job.context.mirror(progress.step, progress.total_steps, progress.batch_index, progress.batch_count)
        if isinstance(job.context, RemoteJobContext):
            job.context.set_preview(progress.full_preview())
