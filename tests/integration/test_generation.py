"""txt2img through the one service path on tiny models: files, seeds, infotext, reproducibility."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.errors import ModelLoadError, ModelNotFoundError, ValidationError
from modules.infotext import parse_infotext
from modules.infotext_request import request_from_infotext
from modules.params import GenerationRequest
from modules.samplers import ScheduleType
from modules.services.images import read_infotext

BASE = GenerationRequest(prompt="a red cube, studio light", negative_prompt="blurry, low quality",
                         steps=3, width=64, height=64, cfg_scale=6.5)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("checkpoint", ["tiny-sd15.safetensors", "tiny-sdxl"], ids=["sd15-single-file", "sdxl-folder"])
def test_batch_of_two_saves_files_seeds_and_infotext(services, checkpoint: str) -> None:
    request = GenerationRequest(**{**BASE.__dict__, "seed": 1234, "batch_size": 2, "clip_skip": 2,
                                   "sampler": "Euler a", "checkpoint": checkpoint})
    result = services.generation.generate(request)

    assert [img.seed for img in result.images] == [1234, 1235]
    today = services.outputs.saver.folder(
        __import__("modules.services.images", fromlist=["OutputKind"]).OutputKind.TXT2IMG)
    for img in result.images:
        assert img.path.parent == today
        assert img.path.name.endswith(f"-{img.seed}.png") and img.path.name[:5].isdigit()
        with Image.open(img.path) as image:
            assert image.size == (64, 64) and image.format == "PNG"
        text = read_infotext(img.path)
        assert text == img.infotext
        parsed = parse_infotext(text)
        back, warnings = request_from_infotext(parsed)
        assert warnings == []
        assert parsed.prompt == request.prompt and parsed.negative_prompt == request.negative_prompt
        assert (back.steps, back.sampler, back.cfg_scale, back.width, back.height, back.seed, back.clip_skip) == (
            3, "Euler a", 6.5, 64, 64, img.seed, 2)
        assert back.schedule is ScheduleType.AUTOMATIC
        stem = Path(checkpoint).stem if checkpoint.endswith(".safetensors") else checkpoint
        assert parsed.params["Model"] == stem
        assert parsed.params["Model hash"] == result.model_title.split("[")[1].rstrip("]")
        assert parsed.params["Version"].startswith("Atelier")
    assert result.grid is not None and result.grid.path.exists()
    with Image.open(result.grid.path) as grid:
        assert grid.size == (128, 64)
    # Two different seeds give two different images.
    assert not np.array_equal(pixels(result.images[0].path), pixels(result.images[1].path))


def test_same_request_and_seed_gives_identical_pixels(services) -> None:
    request = GenerationRequest(**{**BASE.__dict__, "seed": 77, "checkpoint": "tiny-sd15.safetensors"})
    first = services.generation.generate(request).images[0]
    second = services.generation.generate(request).images[0]
    assert first.path != second.path
    assert np.array_equal(pixels(first.path), pixels(second.path))
    other = services.generation.generate(GenerationRequest(**{**request.__dict__, "seed": 78})).images[0]
    assert not np.array_equal(pixels(first.path), pixels(other.path))


def test_batch_image_matches_the_single_image_of_its_seed(services) -> None:
    """Image i of a batch uses seed+i: the second image equals a single image made from seed+1."""
    request = GenerationRequest(**{**BASE.__dict__, "seed": 500, "batch_size": 2, "checkpoint": "tiny-sd15.safetensors"})
    batch = services.generation.generate(request).images
    single = services.generation.generate(GenerationRequest(**{**request.__dict__, "seed": 501, "batch_size": 1}))
    diff = np.abs(pixels(batch[1].path).astype(int) - pixels(single.images[0].path).astype(int))
    assert diff.max() <= 1  # batching may flip the last bit of a few pixels


def test_random_seed_is_resolved_and_recorded(services) -> None:
    result = services.generation.generate(GenerationRequest(**{**BASE.__dict__, "seed": -1, "batch_count": 2}))
    seeds = [img.seed for img in result.images]
    assert seeds[0] >= 0 and seeds[1] == seeds[0] + 1
    assert f"Seed: {seeds[0]}," in result.images[0].infotext


@pytest.mark.parametrize("schedule", list(ScheduleType), ids=[s.value for s in ScheduleType])
def test_every_schedule_type_produces_an_image_and_is_recorded(services, schedule) -> None:
    request = GenerationRequest(**{**BASE.__dict__, "steps": 3, "seed": 3, "sampler": "DPM++ 2M",
                                   "schedule": schedule, "checkpoint": "tiny-sd15.safetensors"})
    result = services.generation.generate(request)
    assert len(result.images) == 1
    assert f"Sampler: DPM++ 2M, Schedule type: {schedule.value}," in result.images[0].infotext


def test_legacy_combined_sampler_name_is_split(services) -> None:
    result = services.generation.generate(GenerationRequest(**{**BASE.__dict__, "sampler": "DPM++ 2M Karras", "seed": 9}))
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in result.images[0].infotext


def test_invalid_request_is_refused_before_any_work(services) -> None:
    before = services.queue.pending_count()
    with pytest.raises(ValidationError) as err:
        services.generation.submit(GenerationRequest(width=65, steps=0, sampler="Nope"))
    fields = {e.field for e in err.value.errors}
    assert fields == {"width", "steps", "sampler"}
    assert "DPM++ 2M" in str(err.value)  # the message lists the valid samplers
    assert services.queue.pending_count() == before
    with pytest.raises(ModelNotFoundError, match="no-such-model"):
        services.generation.submit(GenerationRequest(checkpoint="no-such-model"))


class _StopAt:
    """Presses Interrupt (or Skip) from another thread once the job reaches a given step."""

    def __init__(self, services, step: int, action: str) -> None:
        self.services, self.step, self.action = services, step, action
        self.pressed_at: int | None = None
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def start(self, job) -> None:
        self.job = job
        self._thread.start()

    def _watch(self) -> None:
        while not self.job.future.done():
            snap = self.services.queue.snapshot(self.job)
            if snap.batch_index == 1 and snap.step >= self.step:
                getattr(self.services.queue, self.action)(self.job.id)
                # Read after pressing: a busy machine may have run more steps since the check above.
                self.pressed_at = self.services.queue.snapshot(self.job).step
                return
            threading.Event().wait(0.002)


def test_interrupt_stops_within_a_step_keeps_finished_images_and_next_job_runs(services) -> None:
    request = GenerationRequest(**{**BASE.__dict__, "steps": 60, "seed": 10, "batch_count": 3,
                                   "checkpoint": "tiny-sd15.safetensors"})
    job = services.generation.submit(request)
    stopper = _StopAt(services, step=5, action="interrupt")
    stopper.start(job)
    result = job.future.result(timeout=120)
    assert result.interrupted
    assert [img.seed for img in result.images] == [10]  # batch 1 finished; batch 2 stopped; batch 3 never ran
    snap = services.queue.snapshot(job)
    assert snap.batch_index == 1 and snap.step <= stopper.pressed_at + 1  # stopped within one step
    assert all(img.path.exists() for img in result.images)
    after = services.generation.generate(GenerationRequest(**{**BASE.__dict__, "seed": 11}))
    assert len(after.images) == 1 and not after.interrupted


def test_skip_moves_on_to_the_next_batch(services) -> None:
    request = GenerationRequest(**{**BASE.__dict__, "steps": 60, "seed": 20, "batch_count": 3,
                                   "checkpoint": "tiny-sd15.safetensors"})
    job = services.generation.submit(request)
    _StopAt(services, step=3, action="skip").start(job)
    result = job.future.result(timeout=120)
    assert not result.interrupted
    assert [img.seed for img in result.images] == [20, 22]


def test_corrupt_checkpoint_is_refused_and_previous_model_keeps_serving(services, tiny_models) -> None:
    services.generation.generate(GenerationRequest(**{**BASE.__dict__, "checkpoint": "tiny-sd15.safetensors"}))
    data = tiny_models.sd15_file.read_bytes()
    broken = tiny_models.folder / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    services.registry.refresh()
    try:
        job = services.generation.switch_model("broken.safetensors")
        with pytest.raises(ModelLoadError, match="broken.safetensors.*truncated"):
            job.future.result(timeout=60)
        assert services.models.current().name == "tiny-sd15.safetensors"
        result = services.generation.generate(GenerationRequest(**{**BASE.__dict__, "seed": 5}))
        assert "Model: tiny-sd15," in result.images[0].infotext
    finally:
        broken.unlink()
        services.registry.refresh()
