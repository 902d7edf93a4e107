"""What crosses between the front process and its Ray workers: plain, picklable values only.

A job travels as its frozen spec (a :class:`GenerationRequest`); progress comes back as
:class:`RemoteProgress` (counters and a small preview), the end as :class:`RemoteOutcome` (the
rendered PNG bytes and infotexts, or the error). Workers are named actors ``worker:<host>/<slot>``
in one Ray namespace, so the front finds those that join and notices those that leave.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageChops

NAMESPACE = "atelier"
NAME_PREFIX = "worker:"
PREVIEW_REDUCTION = 8  # a cheap preview is one colour per 8x8 block: it travels at 1/8 and is enlarged back


def worker_name(host: str, slot: str) -> str:
    return f"{NAME_PREFIX}{host}/{slot}"


@dataclass(frozen=True)
class WorkerDescription:
    """A worker as it describes itself: where it runs, what it can load, what it holds."""

    name: str
    host: str
    node_id: str
    device: str
    pid: int
    checkpoints: tuple[str, ...]  # names (paths relative to its checkpoint folder) it can load
    model: str | None = None  # name of the checkpoint it holds
    model_title: str | None = None
    jobs_done: int = 0
    loads: int = 0  # checkpoint loads from disk (not from its RAM cache) since it started
    draining: bool = False  # leaving: finishes its job, takes no new one


def reduced_preview(image: Image.Image) -> tuple[Image.Image, int]:
    """A preview as it travels, and the scale :meth:`RemoteProgress.full_preview` enlarges it by. An
    Approx cheap preview (one colour per 8x8 block) goes at 1/8, exactly restored by nearest
    neighbour; a decoded one (TAESD, Full) has detail in every pixel, and goes as it is."""
    width, height = image.size
    if width % PREVIEW_REDUCTION or height % PREVIEW_REDUCTION:
        return image, 1
    small = image.reduce(PREVIEW_REDUCTION)
    if ImageChops.difference(small.resize(image.size, Image.Resampling.NEAREST), image).getbbox() is not None:
        return image, 1
    return small, PREVIEW_REDUCTION


@dataclass(frozen=True)
class RemoteProgress:
    """A running job's progress, read by the front a few times a second."""

    job_id: str | None  # the job the worker runs now (None: idle)
    step: int = 0
    total_steps: int = 0
    batch_index: int = 0
    batch_count: int = 0
    preview: Image.Image | None = None  # reduced by ``preview_scale``
    preview_scale: int = 1
    draining: bool = False

    def full_preview(self) -> Image.Image | None:
        if self.preview is None or self.preview_scale == 1:
            return self.preview
        size = (self.preview.width * self.preview_scale, self.preview.height * self.preview_scale)
        return self.preview.resize(size, Image.Resampling.NEAREST)


@dataclass(frozen=True)
class RemoteOutcome:
    """How a job ended on a worker: its result (a RenderedJob for generations) or its error."""

    job_id: str
    result: Any = None
    error: BaseException | None = None
    worker: WorkerDescription | None = None  # the worker's state after the job (model held, jobs done)
