"""A1111's sampler parameters and img2img/live-preview options, as a user sees them in the pixels:
eta of the ancestral samplers and of DDIM, sigma churn and noise of Euler/Heun/DPM2, the schedule's
sigma range, img2img's exact step count and switching live previews off. Tiny models, 64x64."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from modules.params import GenerationRequest
from modules.samplers import ScheduleType
from modules.services.job_types import JobContext
from modules.services.preview_decoders import PreviewDecoders
from modules.services.renderer import EncodingSink, Renderer


class WatchedContext(JobContext):
    """A job's context that records every step's total and whether a preview was there to show."""

    def __init__(self) -> None:
        super().__init__("watched")
        self.steps: list[tuple[int, int]] = []
        self.previews: list[Image.Image | None] = []

    def on_step(self, step: int, total: int, latents: object, render: Callable[[object], Image.Image]) -> None:
        super().on_step(step, total, latents, render)
        self.steps.append((step, total))
        self.previews.append(self.preview())


@pytest.fixture(scope="module")
def prepared(services) -> Iterator[Callable[..., GenerationRequest]]:
    services.generation.switch_model("tiny-sd15.safetensors").future.result(timeout=120)

    def make(**fields: object) -> GenerationRequest:
        base = GenerationRequest(prompt="a red cube", steps=4, width=64, height=64, seed=21, sampler="Euler",
                                 save_images=False)
        return services.generation.prepare(GenerationRequest(**{**base.__dict__, **fields}))

    yield make


def run(services, request: GenerationRequest) -> tuple[np.ndarray, WatchedContext]:
    context, sink = WatchedContext(), EncodingSink()
    Renderer(services.models, services.addons, PreviewDecoders(None)).render(request, context, sink)
    image = Image.open(io.BytesIO(sink.images[0].png)).convert("RGB")
    return np.asarray(image).astype(np.int16), context


def png_of(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(out, format="PNG")
    return out.getvalue()


# --- eta -----------------------------------------------------------------------------------------


def test_eta_0_makes_euler_a_draw_exactly_eulers_image(services, prepared) -> None:
    euler, _ = run(services, prepared(sampler="Euler"))
    ancestral, _ = run(services, prepared(sampler="Euler a"))
    no_noise, _ = run(services, prepared(sampler="Euler a", eta_ancestral=0.0))
    assert np.abs(ancestral - euler).max() > 0  # eta 1 (A1111's default) adds fresh noise every step
    assert np.array_equal(no_noise, euler)  # eta 0: no ancestral noise, Euler's trajectory


def test_eta_ddim_adds_noise_to_ddim_only(services, prepared) -> None:
    plain, _ = run(services, prepared(sampler="DDIM"))
    noisy, _ = run(services, prepared(sampler="DDIM", eta_ddim=1.0))
    assert np.abs(noisy - plain).max() > 0
    # eta_ancestral does not reach DDIM (A1111 gives DDIM its own eta).
    assert np.array_equal(run(services, prepared(sampler="DDIM", eta_ancestral=0.0))[0], plain)


# --- churn --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM2"])
def test_sigma_churn_and_sigma_noise_change_the_image_of_euler_heun_and_dpm2(services, prepared, sampler: str) -> None:
    plain, _ = run(services, prepared(sampler=sampler))
    churned, _ = run(services, prepared(sampler=sampler, s_churn=2.0))
    quieter, _ = run(services, prepared(sampler=sampler, s_churn=2.0, s_noise=0.5))
    assert np.abs(churned - plain).max() > 0
    assert np.abs(quieter - churned).max() > 0
    # Without churn no noise is added, so s_noise alone changes nothing (as in A1111).
    assert np.array_equal(run(services, prepared(sampler=sampler, s_noise=0.5))[0], plain)


def test_churn_outside_s_tmin_s_tmax_changes_nothing(services, prepared) -> None:
    plain, _ = run(services, prepared())
    # Every sigma of the tiny model's schedule lies above 0.0001 and below 1000: a window of [0, 0.0001]
    # churns no step, while s_tmax 0 (no upper end) churns them all.
    assert np.array_equal(run(services, prepared(s_churn=2.0, s_tmin=0.0, s_tmax=0.0001))[0], plain)
    assert np.abs(run(services, prepared(s_churn=2.0, s_tmax=0.0))[0] - plain).max() > 0


# --- the schedule's sigma range -------------------------------------------------------------------


def test_sigma_max_changes_a_karras_image_but_not_a_uniform_one(services, prepared) -> None:
    karras, _ = run(services, prepared(schedule=ScheduleType.KARRAS))
    assert np.abs(run(services, prepared(schedule=ScheduleType.KARRAS, sigma_max=3.0))[0] - karras).max() > 0
    uniform, _ = run(services, prepared(schedule=ScheduleType.UNIFORM))
    assert np.array_equal(run(services, prepared(schedule=ScheduleType.UNIFORM, sigma_max=3.0))[0], uniform)


# --- img2img steps --------------------------------------------------------------------------------


def test_img2img_runs_steps_times_denoising_unless_fix_steps_asks_for_exactly_steps(services, prepared) -> None:
    img2img = {"init_image": png_of((200, 40, 40)), "denoising_strength": 0.5, "steps": 6}
    _, usual = run(services, prepared(**img2img))
    _, exact = run(services, prepared(**img2img, img2img_fix_steps=True))
    # Euler: one model call a step. A1111: int(0.5 * 6) + 1 = 4 steps; with the option, exactly 6.
    assert [total for _, total in usual.steps] == [4] * 4
    assert [total for _, total in exact.steps] == [6] * 6


# --- live previews --------------------------------------------------------------------------------


def test_live_previews_off_means_no_preview_at_any_step(services, prepared) -> None:
    _, on = run(services, prepared(preview_every=1))
    assert all(image is not None for image in on.previews)
    _, off = run(services, prepared(preview_every=1, live_previews=False))
    assert off.previews == [None] * 4 and off.preview() is None
