"""Per-account limits, checked on the front before any work for a job is done.

An admin may give an account limits (:class:`modules.identity.UserLimits`): images per job, the
larger side (hires fix's target included), sampling steps of any pass, jobs accepted per hour and
the checkpoints it may use (globs). :func:`check_limits` refuses a request that goes past one with
:class:`~modules.errors.ForbiddenError` (HTTP 403) or, for the hourly count,
:class:`~modules.errors.RateLimitError` (HTTP 429, with when to try again); each message names the
limit and its value. It reads nothing but its arguments, so the caller decides where the numbers
come from (the account store, the job store, the checkpoint registry).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from modules.errors import ForbiddenError, RateLimitError
from modules.identity import UserLimits
from modules.params import GenerationRequest

HOUR = 3600.0


def job_size(request: GenerationRequest) -> int:
    """The larger side of what the job makes: its size, or hires fix's target when that is larger
    (the size the renderer runs the second pass at)."""
    sides = [request.width, request.height]
    if request.hires is not None and request.width > 0 and request.height > 0:
        sides.extend(request.hires.final_size(request.width, request.height))
    return max(sides)


def job_steps(request: GenerationRequest) -> int:
    """The most sampling steps one pass of the job takes (hires fix's own steps, when set)."""
    hires_steps = request.hires.steps if request.hires is not None and request.hires.steps else 0
    return max(request.steps, hires_steps)


def checkpoint_names(*names: str | None) -> tuple[str, ...]:
    """The names a checkpoint is matched by (title, file name, stem), without blanks or repeats."""
    return tuple(dict.fromkeys(n for n in names if n))


def check_limits(request: GenerationRequest, limits: UserLimits, recent: Sequence[float], now: float,
                 checkpoint_names: tuple[str, ...], refiner_names: tuple[str, ...] = ()) -> None:
    """Refuse ``request`` when it goes past one of ``limits``. ``recent``: when the account's jobs of
    the last hour were accepted (in any order); ``checkpoint_names``: the names of the checkpoint the
    job would use (its own, or the server's), empty when there is none; ``refiner_names``: the
    refiner's, when the job has one."""
    images = request.batch_size * request.batch_count
    if limits.max_batch is not None and images > limits.max_batch:
        raise ForbiddenError(f"max_batch: your account may make at most {limits.max_batch} images per job; "
                             f"this job asks for {images} ({request.batch_size} x {request.batch_count})",
                             limit="max_batch")
    size = job_size(request)
    if limits.max_size is not None and size > limits.max_size:
        raise ForbiddenError(f"max_size: your account may make images of at most {limits.max_size} pixels on "
                             f"the larger side (hires fix's target included); this job asks for {size}",
                             limit="max_size")
    steps = job_steps(request)
    if limits.max_steps is not None and steps > limits.max_steps:
        raise ForbiddenError(f"max_steps: your account may use at most {limits.max_steps} steps; "
                             f"this job asks for {steps}", limit="max_steps")
    if limits.checkpoints and not limits.allows_checkpoint(*checkpoint_names):
        named = checkpoint_names[0] if checkpoint_names else "no checkpoint"
        raise ForbiddenError(f"checkpoints: your account may use only the checkpoints matching "
                             f"{', '.join(limits.checkpoints)}; this job would use {named}", limit="checkpoints")
    if limits.checkpoints and refiner_names and not limits.allows_checkpoint(*refiner_names):
        raise ForbiddenError(f"checkpoints: your account may use only the checkpoints matching "
                             f"{', '.join(limits.checkpoints)}; this job's refiner is {refiner_names[0]}",
                             limit="checkpoints")
    if limits.jobs_per_hour is not None:
        window = sorted(t for t in recent if t > now - HOUR)
        if len(window) >= limits.jobs_per_hour:
            # The oldest job of the last hour that must leave the window before one more fits.
            oldest = window[len(window) - limits.jobs_per_hour]
            retry_after = max(1, math.ceil(oldest + HOUR - now))
            raise RateLimitError(f"jobs_per_hour: your account may submit at most {limits.jobs_per_hour} jobs per "
                                 f"hour; try again in {retry_after} s", limit="jobs_per_hour",
                                 retry_after=retry_after)


DAY = 24 * 3600.0


def check_remote_images(limits: UserLimits, images: int, recent: Sequence[tuple[float, int]], now: float) -> None:
    """Refuse a remote job of ``images`` past the account's ``remote_images_per_day``. ``recent``:
    (accepted at, images) of its remote jobs of the last 24 hours that did not fail or get cancelled."""
    allowed = limits.remote_images_per_day
    if allowed is None:
        return
    window = sorted((t, n) for t, n in recent if t > now - DAY)
    used = sum(n for _, n in window)
    if used + images <= allowed:
        return
    if images > allowed:
        raise ForbiddenError(f"remote_images_per_day: your account may ask remote engines for at most {allowed} "
                             f"images per day; this job asks for {images}", limit="remote_images_per_day")
    freed, retry_at = used + images - allowed, now + DAY  # wait until enough of the oldest leave the window
    for accepted_at, count in window:
        freed -= count
        if freed <= 0:
            retry_at = accepted_at + DAY
            break
    retry_after = max(1, math.ceil(retry_at - now))
    raise RateLimitError(f"remote_images_per_day: your account has asked remote engines for {used} of its {allowed} "
                         f"images of the last 24 hours; this job asks for {images}; try again in {retry_after} s",
                         limit="remote_images_per_day", retry_after=retry_after)
