"""Live preview settings without models: which steps get a preview, the options' parsing and
refusals on every path (config.yaml, options, overrides, requests), the server defaults a job gets,
a job context keeping the latest kept latents, and the size a preview crosses to the front at."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.config import Settings, load_settings, setting_problem
from modules.errors import ConfigError, ValidationError
from modules.options_table import BY_NAME
from modules.params import (
    GenerationLimits,
    GenerationRequest,
    LivePreview,
    PreviewMethod,
)
from modules.request_checks import validate_request
from modules.services.job_types import JobContext
from modules.services.scaleout.protocol import (
    PREVIEW_REDUCTION,
    RemoteProgress,
    reduced_preview,
)
from modules.services.server_options import with_server_defaults


@pytest.mark.parametrize("every, due", [
    (3, [3, 6, 7]), (1, [1, 2, 3, 4, 5, 6, 7]), (0, [1, 2, 3, 4, 5, 6, 7]), (10, [7]), (-1, []),
])
def test_steps_that_get_a_preview(every: int, due: list[int]) -> None:
    plan = LivePreview(PreviewMethod.APPROX_CHEAP, every)
    assert [step for step in range(1, 8) if plan.due(step, 7)] == due


def test_a_request_leaving_them_unset_gets_a1111s_defaults_or_the_servers() -> None:
    assert GenerationRequest().live_preview == LivePreview(PreviewMethod.APPROX_CHEAP, 10)
    served = with_server_defaults(GenerationRequest(), Settings(show_progress_type="Full", show_progress_every_n_steps=2))
    assert (served.preview_method, served.preview_every) == (PreviewMethod.FULL, 2)
    own = GenerationRequest(preview_method=PreviewMethod.TAESD, preview_every=-1)
    assert with_server_defaults(own, Settings(show_progress_type="Full")).live_preview == LivePreview(PreviewMethod.TAESD, -1)


@pytest.mark.parametrize("value", ["Approx NN", "approx cheap", "", 1, None])
def test_the_method_setting_refuses_what_atelier_cannot_draw_naming_what_it_can(value: object) -> None:
    problem = setting_problem("show_progress_type", value)
    assert problem is not None and "Approx cheap, TAESD, Full" in problem
    if value == "Approx NN":
        assert "weights" in problem


@pytest.mark.parametrize("value", [-2, 33, 2.0, "3", True, None])
def test_the_period_setting_refuses_values_outside_a1111s_range(value: object) -> None:
    problem = setting_problem("show_progress_every_n_steps", value)
    assert problem is not None and "-1" in problem and "32" in problem


@pytest.mark.parametrize("value", [-1, 0, 32])
def test_the_period_setting_takes_its_whole_range(value: int) -> None:
    assert setting_problem("show_progress_every_n_steps", value) is None


def test_config_yaml_with_an_unsupported_method_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("show_progress_type: Approx NN\n")
    with pytest.raises(ConfigError, match="show_progress_type.*Approx cheap, TAESD, Full"):
        load_settings(path)
    path.write_text("show_progress_type: TAESD\nshow_progress_every_n_steps: 4\n")
    settings = load_settings(path)
    assert (settings.show_progress_type, settings.show_progress_every_n_steps) == ("TAESD", 4)


def test_overrides_parse_to_the_request_fields() -> None:
    method, every = BY_NAME["show_progress_type"], BY_NAME["show_progress_every_n_steps"]
    assert (method.field, every.field) == ("preview_method", "preview_every")
    assert method.parse("TAESD") is PreviewMethod.TAESD and every.parse("5") == 5 and every.parse(-1) == -1
    with pytest.raises(ValueError, match="Approx cheap, TAESD, Full"):
        method.parse("Approx NN")
    for bad in (33, "x", 1.5):
        with pytest.raises(ValueError, match="-1 to 32"):
            every.parse(bad)


def test_a_request_with_bad_preview_fields_is_refused_naming_them() -> None:
    bad = GenerationRequest(prompt="x", width=64, height=64, preview_method="TAESD", preview_every=40)  # type: ignore[arg-type]
    with pytest.raises(ValidationError) as raised:
        validate_request(bad, GenerationLimits())
    fields = {error.field for error in raised.value.errors}
    assert fields == {"show_progress_type", "show_progress_every_n_steps"}
    validate_request(replace(bad, preview_method=PreviewMethod.TAESD, preview_every=32), GenerationLimits())


# --- the job context -------------------------------------------------------------------------------


def test_the_context_keeps_the_last_kept_latents_until_new_ones_come() -> None:
    context, drawn = JobContext("j"), []

    def render(latents: object) -> Image.Image:
        drawn.append(latents)
        return Image.new("RGB", (8, 8), (int(str(latents)), 0, 0))

    context.begin_batch(0, 1, 5)
    context.on_step(1, 5, None, render)
    assert context.preview() is None  # nothing kept yet
    context.on_step(2, 5, 2, render)
    context.on_step(3, 5, None, render)  # a step without a preview: step 2's stays
    assert context.preview().getpixel((0, 0)) == (2, 0, 0)  # type: ignore[union-attr]
    assert context.preview().getpixel((0, 0)) == (2, 0, 0) and drawn == [2]  # type: ignore[union-attr]
    context.on_step(4, 5, 4, render)
    assert context.preview().getpixel((0, 0)) == (4, 0, 0) and drawn == [2, 4]  # type: ignore[union-attr]


def test_readers_at_the_same_time_share_one_render() -> None:
    context, calls = JobContext("j"), []

    def slow(latents: object) -> Image.Image:
        calls.append(latents)
        time.sleep(0.2)
        return Image.new("RGB", (8, 8))

    context.on_step(1, 2, "latents", slow)
    seen: list[Image.Image | None] = []
    readers = [threading.Thread(target=lambda: seen.append(context.preview())) for _ in range(3)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert len(calls) == 1 and len(seen) == 3 and all(image is seen[0] for image in seen)


# --- what crosses from a Ray worker -----------------------------------------------------------------


def test_a_cheap_preview_travels_at_an_eighth_and_comes_back_exact() -> None:
    rng = np.random.default_rng(0)
    cells = Image.fromarray(rng.integers(0, 255, (8, 12, 3), dtype=np.uint8), "RGB")
    cheap = cells.resize((96, 64), Image.Resampling.NEAREST)
    small, scale = reduced_preview(cheap)
    assert scale == PREVIEW_REDUCTION and small.size == (12, 8)
    back = RemoteProgress(job_id="j", preview=small, preview_scale=scale).full_preview()
    assert back is not None and np.array_equal(np.asarray(back), np.asarray(cheap))


def test_a_decoded_preview_travels_at_full_size() -> None:
    rng = np.random.default_rng(1)
    detailed = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), "RGB")
    sent, scale = reduced_preview(detailed)
    assert scale == 1 and sent.size == (96, 64)
    back = RemoteProgress(job_id="j", preview=sent, preview_scale=scale).full_preview()
    assert back is not None and np.array_equal(np.asarray(back), np.asarray(detailed))
