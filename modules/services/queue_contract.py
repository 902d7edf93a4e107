"""The job queue contract: what the faces and the generation service may ask of any job queue.

Two implementations stand behind it: the in-process worker (:class:`modules.services.jobs.JobQueue`,
the default) and the Ray-backed one (:mod:`modules.services.scaleout.ray_queue`), which spreads jobs
over GPU workers on several hosts. ``tests/integration/test_job_queue_contract.py`` runs one test
suite against both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # jobs.py imports this module for WorkerStatus
    from modules.services.jobs import Job, JobSpec, ProgressSnapshot


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

    def workers(self) -> tuple[WorkerStatus, ...]:
        """The workers that run jobs, for the status panel."""
