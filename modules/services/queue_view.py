"""The queue and the history as a viewer may see them: what the queue panel and the queue routes
(``/sdapi/v1/queue``, agent-scheduler's ``/agent-scheduler/v1``) show and do.

Everyone sees every job in line with its owner, state, place and ETA; only its owner and admins
see its prompt and parameters, its id, and may act on it. A job the viewer may not see is not
found (404), never "forbidden": its existence is not revealed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modules.identity import Identity
from modules.params import GenerationRequest
from modules.services.job_store import JobStore, StoredJob
from modules.services.job_types import Job
from modules.services.queue_contract import JobQueueContract

if TYPE_CHECKING:
    from pathlib import Path

    from modules.services.generation import GenerationService


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


class QueueView:
    """Queue and history operations for a viewer (None: a server without sign-in, full access)."""

    def __init__(self, queue: JobQueueContract, store: JobStore, generation: Callable[[], GenerationService],
                 outputs_dir: Path) -> None:
        self.queue = queue
        self.store = store
        self._generation = generation
        self.outputs_dir = outputs_dir

    def entries(self, viewer: Identity | None) -> tuple[QueueEntry, ...]:
        """Running jobs, then waiting ones in the order they will start."""
        raise NotImplementedError

    def entry(self, viewer: Identity | None, job_id: str) -> QueueEntry | HistoryEntry:
        """A job in line or in the history; JobNotFoundError when the viewer may not see it."""
        raise NotImplementedError

    def cancel(self, viewer: Identity | None, job_id: str) -> None:
        """A waiting job ends unrun; a running one is interrupted. JobNotFoundError when not the viewer's."""
        raise NotImplementedError

    def move(self, viewer: Identity | None, job_id: str, position: int) -> None:
        """An admin puts a waiting job at ``position`` (1: next). ForbiddenError for users."""
        raise NotImplementedError

    def history(self, viewer: Identity | None, search: str = "", limit: int = 50,
                offset: int = 0) -> tuple[tuple[HistoryEntry, ...], int]:
        """The viewer's ended jobs (an admin's: everyone's), newest first, and the total."""
        raise NotImplementedError

    def delete(self, viewer: Identity | None, job_id: str) -> int:
        """Forget an ended job and delete its files (those inside the outputs folder); how many."""
        raise NotImplementedError

    def request_of(self, viewer: Identity | None, job_id: str) -> GenerationRequest:
        """The stored request of a job the viewer may see (send to a tab)."""
        raise NotImplementedError

    def run_again(self, viewer: Identity | None, job_id: str) -> Job:
        """Queue the same request again for the viewer (their limits apply)."""
        raise NotImplementedError

    def submit(self, viewer: Identity | None, request: GenerationRequest) -> Job:
        """Queue a request and return at once (agent-scheduler's queue routes)."""
        raise NotImplementedError
