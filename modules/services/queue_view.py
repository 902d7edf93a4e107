"""The queue and the history as a viewer may see them: what the queue panel and the queue routes
(``/sdapi/v1/queue``, agent-scheduler's ``/agent-scheduler/v1``) show and do.

Everyone sees every job in line with its owner, state, place and ETA; only its owner and admins
see its prompt and parameters, its id, and may act on it. A job the viewer may not see is not
found (404), never "forbidden": its existence is not revealed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from modules.errors import FieldError, ForbiddenError, JobNotFoundError, StoreError, ValidationError
from modules.identity import Identity, is_admin
from modules.output_dirs import is_within
from modules.params import GenerationRequest
from modules.services.job_store import ALL_OWNERS, JobStore, StoredJob, job_kind, step_count
from modules.services.job_types import ExtrasJob, Job, ProgressSnapshot
from modules.services.queue_contract import JobQueueContract

if TYPE_CHECKING:
    from pathlib import Path

    from modules.services.generation import GenerationService

log = logging.getLogger(__name__)

RATE_TTL = 10.0  # seconds the average step time is reused: the queue route is polled often


@dataclass(frozen=True)
class QueueEntry:
    """One job in line (running or waiting) as a viewer sees it."""

    id: str | None  # None for another user's job (non-admin viewers)
    owner: str | None
    state: str  # "running" or "queued"
    position: int  # 0 running; n: n-th to start
    kind: str  # txt2img, img2img, inpaint, extras, model
    prompt: str | None  # None when hidden from the viewer
    negative_prompt: str | None
    submitted_at: float
    started_at: float | None
    eta_seconds: float | None  # until it ends (running) or starts (waiting); None: unknown
    progress: float  # 0..1
    step: int
    total_steps: int
    width: int | None
    height: int | None
    steps: int | None
    images: int | None  # batch size x batch count
    checkpoint: str | None
    mine: bool
    pinned: bool  # an admin put it at the head of the line


@dataclass(frozen=True)
class HistoryEntry:
    """One ended job (from the store) as its owner or an admin sees it."""

    job: StoredJob
    urls: tuple[str, ...] = ()  # filled by the face that shows it


def spec_kind(job: Job) -> str:
    if isinstance(job.spec, GenerationRequest):
        return job_kind(job.spec)
    return "extras" if isinstance(job.spec, ExtrasJob) else "model"


class QueueView:
    """Queue and history operations for a viewer (None: a server without sign-in, full access)."""

    def __init__(self, queue: JobQueueContract, store: JobStore, generation: Callable[[], GenerationService],
                 outputs_dir: Path, admins: Callable[[str], bool] | None = None) -> None:
        self.queue = queue
        # Whether a signed-in admin's name is an account's admin (the queue's own predicate): an
        # ``--api-auth`` login counts as an admin for server changes but sees only its own jobs.
        # None: the role the request guard recorded decides.
        self._admins = admins
        self.store = store
        self._generation = generation
        self.outputs_dir = outputs_dir
        self._rate_lock = threading.Lock()
        self._rate: tuple[float, float | None] | None = None  # (when read, seconds per step)

    def entries(self, viewer: Identity | None) -> tuple[QueueEntry, ...]:
        """Running jobs, then waiting ones in the order they will start."""
        running, waiting = self.queue.running(), self.queue.all_waiting()
        pinned = set(self.queue.pinned_ids()) if hasattr(self.queue, "pinned_ids") else set()
        rate = self._seconds_per_step() if running or waiting else None
        admin = self._is_admin(viewer)
        found: list[QueueEntry] = []
        busy: float | None = 0.0  # seconds of work before the next waiting job can start
        for job in running:
            snap = self.queue.snapshot(job)
            eta = snap.eta_seconds
            if eta is None and rate is not None:
                eta = max(0.0, self._duration(job, rate) - snap.elapsed_seconds)
            busy = None if busy is None or eta is None else busy + eta
            found.append(self._entry(viewer, admin, job, 0, snap, eta, job.id in pinned,
                                     started_at=time.time() - snap.elapsed_seconds))
        workers = max(1, len(running))  # jobs run side by side on several workers (Ray)
        for place, job in enumerate(waiting, start=1):
            eta = None if busy is None else busy / workers
            found.append(self._entry(viewer, admin, job, place, None, eta, job.id in pinned, started_at=None))
            busy = None if busy is None or rate is None else busy + self._duration(job, rate)
        return tuple(found)

    def entry(self, viewer: Identity | None, job_id: str) -> QueueEntry | HistoryEntry:
        """A job in line or in the history; JobNotFoundError when the viewer may not see it."""
        job = self.queue.get(job_id)
        if job is not None and self._sees(viewer, job.owner) and not job.future.done():
            for entry in self.entries(viewer):
                if entry.id == job_id:
                    return entry
        return HistoryEntry(self._stored(viewer, job_id))

    def cancel(self, viewer: Identity | None, job_id: str) -> None:
        """A waiting job ends unrun; a running one is interrupted. JobNotFoundError when not the viewer's."""
        job = self.queue.get(job_id)
        if job is None:
            self._stored(viewer, job_id)  # an ended job has nothing left to cancel; an unknown one is not found
            return
        if not self._sees(viewer, job.owner):
            raise JobNotFoundError(_not_found(job_id))
        # The view has checked the viewer may act on the job; the queue is asked as its owner, so
        # an admin (or anyone on a server without sign-in) reaches any job.
        if not self.queue.cancel(job_id, job.owner):
            self.queue.interrupt(job_id, job.owner)

    def move(self, viewer: Identity | None, job_id: str, position: int) -> None:
        """An admin puts a waiting job at ``position`` (1: next). ForbiddenError for users."""
        if not self._is_admin(viewer):
            raise ForbiddenError("Reordering the queue is for admins only.")
        if isinstance(position, bool) or not isinstance(position, int) or position < 1:
            raise ValidationError([FieldError("position", f"must be a whole number from 1 (next), got {position!r}")])
        if not self.queue.move(job_id, position):
            raise JobNotFoundError(f"No job {job_id} is waiting in the queue.")

    def history(self, viewer: Identity | None, search: str = "", limit: int = 50,
                offset: int = 0) -> tuple[tuple[HistoryEntry, ...], int]:
        """The viewer's ended jobs (an admin's: everyone's), newest first, and the total."""
        owner: object = ALL_OWNERS if self._is_admin(viewer) else viewer.name  # type: ignore[union-attr]
        found, total = self.store.history(owner, search=search, limit=limit, offset=offset)
        return tuple(HistoryEntry(job) for job in found), total

    def delete(self, viewer: Identity | None, job_id: str) -> int:
        """Forget an ended job and delete its files (those inside the outputs folder); how many.
        A file elsewhere (an outputs folder moved since, a link out) is left where it is; each
        deleted image's ``.txt`` sidecar goes with it."""
        self._stored(viewer, job_id)
        removed = 0
        for path in self.store.delete(job_id):
            if not is_within(path, self.outputs_dir):
                log.warning("Job %s's file %s is outside the outputs folder: left in place", job_id, path)
                continue
            for target in (path, path.with_suffix(".txt")):
                try:
                    if target.is_file() and is_within(target, self.outputs_dir):
                        target.unlink()
                        removed += target == path
                except OSError as exc:
                    log.warning("Could not delete %s of job %s: %s", target, job_id, exc)
        return removed

    def request_of(self, viewer: Identity | None, job_id: str) -> GenerationRequest:
        """The stored request of a job the viewer may see (send to a tab)."""
        job = self.queue.get(job_id)
        if job is not None and self._sees(viewer, job.owner) and isinstance(job.spec, GenerationRequest):
            request = job.spec
        else:
            request = self._stored(viewer, job_id).request
        # Its seeds are fixed already, so the same request makes the same images; the id and the
        # owner are the queue's and the submitter's to set again.
        return replace(request, job_id=None, owner=None)

    def run_again(self, viewer: Identity | None, job_id: str) -> Job:
        """Queue the same request again for the viewer (their limits apply)."""
        return self.submit(viewer, self.request_of(viewer, job_id))

    def submit(self, viewer: Identity | None, request: GenerationRequest) -> Job:
        """Queue a request and return at once (agent-scheduler's queue routes)."""
        return self._generation().submit(request, owner=viewer.name if viewer is not None else None)

    # --- helpers ------------------------------------------------------------------------------

    def _is_admin(self, viewer: Identity | None) -> bool:
        """Whether ``viewer`` sees and steers every job (anyone on a server without sign-in)."""
        if viewer is None:
            return True
        return is_admin(viewer) and (self._admins is None or self._admins(viewer.name))

    def _sees(self, viewer: Identity | None, owner: str | None, admin: bool | None = None) -> bool:
        """Whether ``viewer`` may see a job of ``owner``: their own, or any for an admin."""
        if admin is None:
            admin = self._is_admin(viewer)
        return admin or (viewer is not None and owner == viewer.name)

    def _stored(self, viewer: Identity | None, job_id: str) -> StoredJob:
        """The stored job ``viewer`` may see, or JobNotFoundError (the same for one they may not)."""
        stored = self.store.get(job_id)
        if stored is None or not self._sees(viewer, stored.owner):
            raise JobNotFoundError(_not_found(job_id))
        return stored

    def _entry(self, viewer: Identity | None, admin: bool, job: Job, position: int, snap: ProgressSnapshot | None,
               eta: float | None, pinned: bool, started_at: float | None) -> QueueEntry:
        visible = self._sees(viewer, job.owner, admin)
        request = job.spec if visible and isinstance(job.spec, GenerationRequest) else None
        width, height = request.output_size if request is not None else (None, None)
        return QueueEntry(
            id=job.id if visible else None, owner=job.owner, state="running" if position == 0 else "queued",
            position=position, kind=spec_kind(job), prompt=request.prompt if request else None,
            negative_prompt=request.negative_prompt if request else None, submitted_at=job.submitted_at,
            started_at=started_at, eta_seconds=eta, progress=snap.fraction if snap is not None else 0.0,
            step=snap.step if snap is not None and visible else 0,
            total_steps=snap.total_steps if snap is not None and visible else 0,
            width=width, height=height, steps=request.steps if request else None,
            images=request.images_per_job if request else None, checkpoint=request.checkpoint if request else None,
            mine=visible and (viewer is None or job.owner == viewer.name), pinned=pinned)

    def _seconds_per_step(self) -> float | None:
        """The store's average step time, read at most every RATE_TTL seconds."""
        now = time.monotonic()
        with self._rate_lock:
            if self._rate is not None and now - self._rate[0] < RATE_TTL:
                return self._rate[1]
        try:
            rate = self.store.seconds_per_step()
        except StoreError:
            rate = None  # no ETAs rather than no queue
        with self._rate_lock:
            self._rate = (now, rate)
        return rate

    @staticmethod
    def _duration(job: Job, rate: float) -> float:
        """How long ``job`` should run, from the average step time (model loads and Extras jobs,
        short beside a generation, count as nothing)."""
        return step_count(job.spec) * rate if isinstance(job.spec, GenerationRequest) else 0.0


def _not_found(job_id: str) -> str:
    return f"No job {job_id} in the queue or the history."
