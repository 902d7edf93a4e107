"""What every job queue and its callers share: job specs, statuses, progress, and the job itself.

A job is described entirely by a frozen, serialisable spec (a :class:`GenerationRequest`, a
:class:`ModelSwitch`, a :class:`ModelUnload` or an :class:`ExtrasJob`), so the local worker can be swapped for remote ones.
A :class:`Job`'s ``future`` carries the result or the error back to the caller; its
:class:`JobContext` carries progress out and interrupt/skip in. The queues themselves follow
:class:`modules.services.queue_contract.JobQueueContract`.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.params import GenerationRequest
from modules.services.extras_request import ExtrasRequest


@dataclass(frozen=True)
class ModelSwitch:
    """A job that loads a checkpoint, queued so it never races a running generation."""

    checkpoint: str


@dataclass(frozen=True)
class ModelUnload:
    """A job that frees the loaded checkpoint (API unload-checkpoint)."""


@dataclass(frozen=True)
class ExtrasJob:
    """A job that upscales and restores images (the Extras tab, ``/sdapi/v1/extra-*``), queued
    like a generation so it shares the GPU with no one."""

    request: ExtrasRequest


JobSpec = GenerationRequest | ModelSwitch | ModelUnload | ExtrasJob


class JobStatus(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class JobEnd(enum.Enum):
    """How a job ended, as the job store and the history record it."""

    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # stopped while it ran (its finished images are kept)
    CANCELLED = "cancelled"  # ended before it ran


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
    part_of: tuple[int, int] | None = None  # (k, n): the job is a script's job k of n (X/Y/Z plot cells)

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
        self._latents: Any = None  # of the latest step that gets a live preview
        self._latents_key: tuple[int, int] | None = None  # (batch, step) they are from
        self._render: Callable[[Any], Image.Image] | None = None
        self._render_lock = threading.Lock()  # one render at a time: a second reader gets the same picture
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
        """Step ``step`` of ``total`` is done. ``latents``: what its live preview is drawn from (by
        ``render``, when a reader asks), or None on a step that gets none (the last ones kept stay)."""
        with self._lock:
            self._step, self._total = step, total
            if latents is not None:
                self._latents, self._latents_key, self._render = latents, (self._batch, step), render

    def mirror(self, step: int, total: int, batch_index: int, batch_count: int) -> None:
        """Progress that another process reports (a remote worker); the stop flags stay as they are."""
        with self._lock:
            self._step, self._total, self._batch, self._batches = step, total, batch_index, batch_count

    def release(self) -> None:
        """The job is over: let go of its last latents (device memory) and their renderer; the
        preview already made stays, so a page that asks late still sees it."""
        with self._lock:
            self._latents = self._render = None

    def clear_skip(self) -> None:
        """The skipped batch is over (a remote worker began the next one)."""
        self._skip.clear()

    # Reading, from any thread.
    def preview(self) -> Image.Image | None:
        """The live preview of the latest step that gets one, rendered on demand (on the caller's
        thread, never the worker's) and at most once per such step."""
        with self._render_lock:
            with self._lock:
                key, latents, render = self._latents_key, self._latents, self._render
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



def drop_frames(error: BaseException) -> None:
    """Cut an error's tracebacks (already logged) before it is kept with the job: their frames hold
    the failed job's tensors, which would otherwise stay alive, on the GPU, for as long as the job."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
