"""Parts of the GPU benchmark (``tests/bench/gpu.py``): the plan of a run, step timing, memory
readings, image checks, and measuring one row (warm-up, timed runs, their images).

Imported by ``gpu.py`` only, after it has set the environment (offline, no progress bars).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.engine import latents as engine_latents
from modules.services.job_types import JobContext

GIB = 1024**3
PROMPT, NEGATIVE, SEED, CFG = "a photo of a cat", "blurry", 1, 7.0
GPU_SIZES = {"sd15": 512, "sdxl": 1024, "flux": 1024}
CPU_SIZE = 64
LABELS = {"sd15": "SD1.5", "sdxl": "SDXL", "flux": "FLUX.1-dev"}

# Image checks, on the 0..255 scale. A NaN decode saves a flat (black) image; random-weight models
# still give images with plenty of spread, so a tiny standard deviation means something broke.
MIN_PIXEL_STD = 1.0
# Mean absolute difference from the reference image of the same seed: the same kernels with the
# weights elsewhere (memory modes, the RAM cache) differ by fp16 rounding at most; other kernels
# (xformers, compiled code, cuDNN autotuning) may round differently at every step, which 20 steps
# can grow, but an unrelated or broken image differs by tens of levels.
SAME_KERNELS_MAX_DIFF = 2.0
OTHER_KERNELS_MAX_DIFF = 8.0


# --- the plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    cuda: bool
    real_size: bool
    steps: int
    repeats: int
    budget_s: float
    started: float = field(default_factory=time.perf_counter)

    def size(self, arch: str) -> int:
        return GPU_SIZES[arch] if self.cuda else CPU_SIZE

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def kernel_flags_kept() -> Iterator[None]:
    """The fast path switches cuDNN autotuning and TF32 on for the whole process; put them back,
    so the next row (an eager diffusers baseline above all) runs with the defaults it would have."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


# --- timing ----------------------------------------------------------------------------------------


class StepClock:
    """When the first and the last denoising step of the current job finished.

    CUDA work is asynchronous: the GPU is synchronised at those two steps only, so the steps in
    between run as they would without the clock."""

    def __init__(self, cuda: bool) -> None:
        self._cuda = cuda
        self.reset()

    def reset(self) -> None:
        self._first: float | None = None
        self._last: float | None = None
        self._total = 0

    def mark(self, step: int, total: int) -> None:
        if step != 1 and step != total:
            return
        if self._cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step == 1:
            self._first, self._total = now, total
        else:
            self._last = now

    def rate(self) -> float | None:
        if self._first is None or self._last is None or self._last <= self._first or self._total < 2:
            return None
        return (self._total - 1) / (self._last - self._first)


def time_atelier_steps(clock: StepClock) -> None:
    """Atelier reports every finished step to the job's context (progress bar, live preview).
    Wrapping that report times the same moments as diffusers' step-end callback, with no change
    to Atelier and no extension in the way."""
    original = JobContext.on_step

    def on_step(self: JobContext, step: int, total: int, *rest: Any, **kwargs: Any) -> None:
        clock.mark(step, total)
        original(self, step, total, *rest, **kwargs)

    JobContext.on_step = on_step  # type: ignore[method-assign]


def compiled_graphs() -> int:
    """Graphs dynamo has compiled so far in this process (a rise during timed runs is a recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


# --- memory ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    """What the process held before a row loaded its model (bytes), subtracted from its peaks."""

    allocated: int
    reserved: int

    @staticmethod
    def now() -> Baseline:
        if not torch.cuda.is_available():
            return Baseline(0, 0)
        synchronize()
        return Baseline(torch.cuda.memory_allocated(), torch.cuda.memory_reserved())


@dataclass(frozen=True)
class MemoryReading:
    """One job's memory in GiB: PyTorch's peaks, and the rest of the process's use of the card."""

    peak_allocated: float  # torch.cuda.max_memory_allocated, above the baseline
    peak_reserved: float  # torch.cuda.max_memory_reserved (the caching allocator's blocks), above the baseline
    context: float  # total - free - reserved after the job: CUDA context, kernel images, non-PyTorch libraries

    @property
    def card(self) -> float:
        """What a user's card must hold for the job: the allocator's peak blocks plus the context."""
        return self.peak_reserved + self.context

    @staticmethod
    def highest(readings: list[MemoryReading]) -> MemoryReading | None:
        if not readings:
            return None
        return MemoryReading(max(r.peak_allocated for r in readings), max(r.peak_reserved for r in readings),
                             max(r.context for r in readings))


def reset_peaks() -> None:
    if torch.cuda.is_available():
        synchronize()
        torch.cuda.reset_peak_memory_stats()


def read_memory(base: Baseline) -> MemoryReading | None:
    """Peaks since :func:`reset_peaks`, above ``base``; None without CUDA. ``mem_get_info`` sees the
    whole card, so the context counts any other process on it too (none on a dedicated machine)."""
    if not torch.cuda.is_available():
        return None
    synchronize()
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()
    return MemoryReading((torch.cuda.max_memory_allocated() - base.allocated) / GIB,
                         (torch.cuda.max_memory_reserved() - base.reserved) / GIB, max(context, 0) / GIB)


# --- images ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Picture:
    """One job's first image as floats on the 0..255 scale, and whether its latents were finite."""

    pixels: np.ndarray
    latents_finite: bool
    note: str = ""  # e.g. the VAE's precision, when it is worth showing


@dataclass(frozen=True)
class ImageCheck:
    ok: bool
    text: str  # "ok std 51.2, diff 0.00" or what failed


def png_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def check_picture(picture: Picture, reference: Picture | None, max_diff: float) -> ImageCheck:
    """Finite latents and pixels, not flat, and (with a reference of the same seed) close to it."""
    pixels = picture.pixels
    if not picture.latents_finite:
        return ImageCheck(False, "FAIL: latents not finite")
    if not np.isfinite(pixels).all():
        return ImageCheck(False, "FAIL: pixels not finite")
    std = float(pixels.std())
    if std <= MIN_PIXEL_STD:
        return ImageCheck(False, f"FAIL: flat image (std {std:.2f})")
    if reference is None:
        return ImageCheck(True, f"ok std {std:.1f}")
    if reference.pixels.shape != pixels.shape:
        return ImageCheck(False, f"FAIL: size {pixels.shape} vs reference {reference.pixels.shape}")
    diff = float(np.abs(pixels - reference.pixels).mean())
    if diff > max_diff:
        return ImageCheck(False, f"FAIL: differs from the reference by {diff:.2f} (limit {max_diff:g})")
    return ImageCheck(True, f"ok std {std:.1f}, diff {diff:.2f}")


def check_pictures(pictures: list[Picture], reference: Picture | None, max_diff: float) -> ImageCheck | None:
    """Every run's image is checked on its own; the last one is also compared with the reference."""
    if not pictures:
        return None
    for picture in pictures[:-1]:
        if not (found := check_picture(picture, None, max_diff)).ok:
            return found
    return check_picture(pictures[-1], reference, max_diff)


class LatentWatch:
    """Sees the latents every Atelier job decodes (whether they are finite, and the VAE's dtype),
    and can poison them with NaN (``sabotage``), which checks the image checks themselves."""

    def __init__(self) -> None:
        self.finite: bool | None = None
        self.vae_dtype = ""
        self.sabotage = False

    def install(self) -> None:
        original = engine_latents.decode_latents

        def decode_latents(model: Any, samples: torch.Tensor) -> list[Image.Image]:
            if self.sabotage:
                samples = samples * float("nan")
            self.finite = bool(torch.isfinite(samples).all())  # after the last step: no step waits on it
            images = original(model, samples)
            self.vae_dtype = str(model.pipeline.vae.dtype).removeprefix("torch.")
            return images

        engine_latents.decode_latents = decode_latents  # type: ignore[assignment]

    def picture(self, png: Path) -> Picture:
        finite, self.finite = self.finite, None
        return Picture(png_pixels(png), bool(finite), f"VAE {self.vae_dtype}")


# --- measuring a row ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measured:
    its: float | None  # denoising steps per second, median of the timed runs
    job_s: float  # whole job, median
    warmup_s: float  # all warm-up runs together (compilation included)
    memory: MemoryReading | None  # highest of the timed runs
    pictures: list[Picture]
    recompiled: bool  # dynamo compiled a new graph during the timed runs


def measure(job: Callable[[], Any], picture: Callable[[Any], Picture], clock: StepClock, warmup: int,
            repeats: int, base: Baseline) -> Measured:
    """Warm-up runs (never timed), then timed runs; ``picture`` reads each timed run's image
    outside its timing."""
    started = time.perf_counter()
    for _ in range(warmup):
        job()
    synchronize()
    warmup_s = time.perf_counter() - started
    graphs = compiled_graphs()
    rates: list[float] = []
    seconds: list[float] = []
    readings: list[MemoryReading] = []
    pictures: list[Picture] = []
    for _ in range(repeats):
        reset_peaks()
        clock.reset()
        started = time.perf_counter()
        out = job()
        synchronize()
        seconds.append(time.perf_counter() - started)
        if (rate := clock.rate()) is not None:
            rates.append(rate)
        if (reading := read_memory(base)) is not None:
            readings.append(reading)
        pictures.append(picture(out))
    return Measured(statistics.median(rates) if rates else None, statistics.median(seconds), warmup_s,
                    MemoryReading.highest(readings), pictures, compiled_graphs() != graphs)
