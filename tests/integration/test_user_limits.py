"""Per-account limits on the generation front: a request past one is refused (403 / 429 with the
limit named) before anything is queued or saved; a job within them runs, per user when outputs go
per user."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from modules.errors import ForbiddenError, RateLimitError
from modules.identity import Role, UserLimits
from modules.params import GenerationRequest, HiresFix, Refiner
from modules.services.user_limits import check_limits
from tests.conftest import TinyModels, make_services

PASSWORD = "correct horse battery"
SMALL = GenerationRequest(prompt="a lighthouse", steps=2, width=64, height=64, seed=1)
LIMITED = UserLimits(max_batch=2, max_size=128, max_steps=4, checkpoints=("tiny-sd15.*",))


@pytest.fixture(scope="module")
def svc(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    services = make_services(tmp_path_factory.mktemp("data"), tiny_models.folder, outputs_per_user=True)
    services.accounts.add("ann", PASSWORD, Role.USER, LIMITED)
    services.accounts.add("hourly", PASSWORD, Role.USER, UserLimits(jobs_per_hour=2))
    services.accounts.add("boss", PASSWORD, Role.ADMIN)
    services.generation.switch_model(tiny_models.sd15_file.name).future.result(timeout=120)
    yield services
    services.close()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []


def _refused(svc: Any, request: GenerationRequest, owner: str) -> ForbiddenError | RateLimitError:
    """The refusal of ``request``, checked to have left the queue, the job store and outputs/ alone."""
    before = (svc.queue.pending_count(), len(svc.queue.running()), len(svc.jobs.accepted_since(owner, 0.0)),
              _files(svc.paths.outputs_dir))
    with pytest.raises((ForbiddenError, RateLimitError)) as caught:
        svc.generation.submit(request, owner=owner)
    after = (svc.queue.pending_count(), len(svc.queue.running()), len(svc.jobs.accepted_since(owner, 0.0)),
             _files(svc.paths.outputs_dir))
    assert after == before  # nothing queued, recorded or written
    return caught.value


@pytest.mark.parametrize(("change", "limit", "words"), [
    ({"batch_size": 2, "batch_count": 2}, "max_batch", "at most 2 images per job; this job asks for 4"),
    ({"width": 192}, "max_size", "at most 128 pixels"),
    ({"hires": HiresFix(scale=4.0)}, "max_size", "this job asks for 256"),
    ({"hires": HiresFix(resize_width=64, resize_height=160)}, "max_size", "asks for 160"),
    ({"steps": 5}, "max_steps", "at most 4 steps; this job asks for 5"),
    ({"hires": HiresFix(scale=1.5, steps=9)}, "max_steps", "this job asks for 9"),
    ({"checkpoint": "tiny-sd15-b.safetensors"}, "checkpoints", "tiny-sd15.*"),
])
def test_each_limit_is_refused_before_anything_is_queued(svc: Any, change: dict[str, Any], limit: str,
                                                         words: str) -> None:
    error = _refused(svc, replace(SMALL, **change), "ann")
    assert isinstance(error, ForbiddenError) and error.limit == limit
    assert str(error).startswith(f"{limit}:") and words in str(error)


def test_a_job_within_the_limits_runs_in_the_users_own_folder(svc: Any) -> None:
    result = svc.generation.generate(SMALL, timeout=120, owner="ann")
    assert len(result.images) == 1
    saved = _files(svc.paths.outputs_dir / "ann" / "txt2img-images")
    assert [p.suffix for p in saved] == [".png"]
    # Jobs without an owner are saved where they always were.
    svc.generation.generate(SMALL, timeout=120)
    assert _files(svc.paths.outputs_dir / "txt2img-images")


def test_checkpoint_globs_match_title_file_name_or_stem(svc: Any, tiny_models: TinyModels) -> None:
    stem_only = UserLimits(checkpoints=("tiny-sd15",))  # the stem, no suffix
    names = ("tiny-sd15.safetensors [0123456789]", "tiny-sd15.safetensors", "tiny-sd15")
    check_limits(SMALL, stem_only, (), time.time(), names)
    check_limits(SMALL, UserLimits(checkpoints=("TINY-SD15.SAFE*",)), (), time.time(), names)  # any case
    with pytest.raises(ForbiddenError, match="checkpoints"):
        check_limits(SMALL, stem_only, (), time.time(), ("tiny-sd15-b.safetensors", "tiny-sd15-b"))
    # The server's current checkpoint (the job names none) is allowed; another named one is not, nor a refiner.
    svc.generation.prepare(SMALL, owner="ann")
    error = _refused(svc, replace(SMALL, refiner=Refiner(tiny_models.sd15_other.name)), "ann")
    assert isinstance(error, ForbiddenError) and "refiner" in str(error)


def test_jobs_per_hour_answers_when_to_try_again(svc: Any) -> None:
    for _ in range(2):
        svc.generation.generate(SMALL, timeout=120, owner="hourly")
    error = _refused(svc, SMALL, "hourly")
    assert isinstance(error, RateLimitError) and error.limit == "jobs_per_hour"
    assert 3500 < error.retry_after <= 3600 and "at most 2 jobs per hour" in str(error)
    # The oldest of the hour leaving the window frees one place: retry_after counts to it.
    now = time.time()
    with pytest.raises(RateLimitError) as caught:
        check_limits(SMALL, UserLimits(jobs_per_hour=2), (now - 3000, now - 100, now - 5000), now, ())
    assert caught.value.retry_after == 600
    check_limits(SMALL, UserLimits(jobs_per_hour=2), (now - 3700, now - 100), now, ())


def test_admins_and_jobs_without_owner_have_no_limits(svc: Any) -> None:
    big = replace(SMALL, steps=6, checkpoint="tiny-sd15-b.safetensors")
    assert svc.generation.prepare(big, owner="boss").steps == 6
    assert svc.generation.prepare(big).steps == 6
    assert svc.generation.prepare(big, owner="not-an-account").steps == 6  # an --api-auth login
