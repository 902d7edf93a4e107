"""How a queue writes its jobs down so they outlive the process: the journal a queue calls (the job
store implements it), the jobs found unfinished at start, and how a finished job's end is named.

The queues (:mod:`modules.services.queue_contract`) journal generation jobs only.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from modules.params import GenerationResult
from modules.services.job_types import Job, JobEnd, JobSpec


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


def end_of(job: Job, future: Future[Any], ran: bool) -> JobEnd:
    """How ``job`` ended, from its done ``future``: FAILED on an error, CANCELLED when it never
    started, INTERRUPTED when its result says so (or, for other results, its context was
    interrupted), FINISHED otherwise."""
    if future.cancelled() or future.exception() is not None:
        return JobEnd.FAILED
    if not ran:
        return JobEnd.CANCELLED
    result = future.result()
    stopped = result.interrupted if isinstance(result, GenerationResult) else job.context.interrupted
    return JobEnd.INTERRUPTED if stopped else JobEnd.FINISHED


def seq_of(job_id: str) -> int:
    """A job id's running number (ids begin with it; the journal's ``last_seq`` is the highest)."""
    head = job_id.split("-", 1)[0]
    return int(head) if head.isdigit() else 0
