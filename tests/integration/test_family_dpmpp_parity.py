"""DPM++ 2M on every flow family against diffusers' own DPM-Solver++ on the same model outputs.

Atelier's "DPM++ 2M" (schedule Simple) runs through the engine (``sample_task``) on a tiny random
SD 3.5 Large, FLUX.1 dev, FLUX.2 klein and Z-Image; the reference is the family's own diffusers
pipeline, unchanged, with its scheduler swapped for ``DPMSolverMultistepScheduler(use_flow_sigmas=True,
prediction_type="flow_prediction", algorithm_type="dpmsolver++", solver_order=2)`` (every other
option at its default: midpoint solver, lower_order_final, final sigma 0), given the same start noise.

The pipelines cannot be handed our sigmas directly: ``DPMSolverMultistepScheduler.set_timesteps``
takes no ``sigmas`` (SD3 and Z-Image pass them, so ``retrieve_timesteps`` would refuse), FluxPipeline
and Flux2KleinPipeline drop theirs for a ``use_flow_sigmas`` scheduler and let it make its own table,
and that table's timesteps are rounded to integers (the transformer would see other times). So the
scheduler below pins its table: whatever a pipeline asks ``set_timesteps`` for, it gets Atelier's
sigmas and float timesteps ``sigma * 1000``, as tests/unit/test_flow_parity.py sets them. The
pipeline's own loop still calls its transformer (with its own time, sign and guidance conventions)
and diffusers' ``step`` does all of the solver arithmetic on those outputs.

Tolerance: float32 on the CPU, the same network calls; the only differences are rounding (the
pipelines pass ``(sigma * 1000) / 1000`` as the time, batch CFG differently, and the solvers order
their exp/log terms differently); measured 6e-7 (FLUX.2) to 3e-5 (Z-Image), asserted at 1e-4 max abs
latent difference (latents of magnitude ~4).
Each case also checks that Euler on the same sigmas is farther than that from diffusers' DPM-Solver++,
so the comparison does tell the two solvers apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from modules.devtools.tiny_model import TinyArch, write_tiny_model
from modules.engine.devices import DeviceInfo
from modules.engine.families import flux_flow
from modules.engine.generate import ImageTask, sample_task, task_sigmas
from modules.engine.loader import LoadedModel, load_model
from modules.engine.sampling.loop import NoisePlan, SamplingPlan, sampler_sigmas
from modules.engine.sampling.noise import ImageNoise
from modules.samplers import ScheduleType, resolve_sampler

CPU = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test")
PARITY_ATOL = 1e-4  # max abs latent difference, float32 on the CPU (see the module docstring)
STEPS = 5  # from sigma 1: steps 1, 2 and the last are first order (= Euler); 3 and 4 use the history
SIZE = 64


class _Quiet:
    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class PinnedDPMSolver(DPMSolverMultistepScheduler):
    """diffusers' DPM-Solver++ whose table is the given sigmas, whatever a pipeline asks for.

    Only the table is replaced (as in tests/unit/test_flow_parity.py); ``step`` and its
    multistep state are diffusers' own."""

    pinned: torch.Tensor  # Atelier's sigmas, ending in 0

    def set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, mu: float | None = None,
                      timesteps: list[int] | None = None, sigmas: Any = None) -> None:
        # ``sigmas`` in the signature: retrieve_timesteps only passes them to a scheduler that names them.
        super().set_timesteps(len(self.pinned) - 1, device=device)
        self.sigmas = self.pinned.clone()
        self.timesteps = (self.pinned[:-1] * self.config.num_train_timesteps).to(device or "cpu")


def dpm_solver(sigmas: torch.Tensor) -> PinnedDPMSolver:
    scheduler = PinnedDPMSolver(use_flow_sigmas=True, prediction_type="flow_prediction",
                                algorithm_type="dpmsolver++", solver_order=2)
    scheduler.pinned = sigmas.float().cpu()
    return scheduler


# -- each family's pipeline call, its latents given back in the engine's (unpacked) space -------------


def _sd3(model: LoadedModel, task: ImageTask, noise: torch.Tensor) -> torch.Tensor:
    # diffusers' guidance_scale is A1111's CFG for SD3 (neg + s * (pos - neg)).
    return model.pipeline(prompt=task.prompt, negative_prompt=task.negative_prompt, guidance_scale=task.cfg_scale,
                          num_inference_steps=task.steps, latents=noise.clone(), height=task.height,
                          width=task.width, output_type="latent").images


def _flux(model: LoadedModel, task: ImageTask, noise: torch.Tensor) -> torch.Tensor:
    # guidance_scale: the distilled guidance; true_cfg_scale 1: no real CFG, as the task's CFG 1.
    out = model.pipeline(prompt=task.prompt, height=task.height, width=task.width, num_inference_steps=task.steps,
                         guidance_scale=task.distilled_cfg_scale, true_cfg_scale=task.cfg_scale,
                         latents=flux_flow.pack(noise.clone()), output_type="latent", return_dict=False)[0]
    return flux_flow.unpack(out, noise.shape[-2], noise.shape[-1])


def _flux2(model: LoadedModel, task: ImageTask, noise: torch.Tensor) -> torch.Tensor:
    # klein is distilled: CFG 1 runs the prompt alone. The pipeline gives its latents in the VAE's
    # space (batch norm undone, unpatchified); the engine's are compared in that space too.
    out = model.pipeline(prompt=task.prompt, height=task.height, width=task.width, num_inference_steps=task.steps,
                         guidance_scale=task.cfg_scale, latents=noise.clone(), output_type="latent").images
    return model.latent_format.from_vae(model.pipeline.vae, out)


def _zimage(model: LoadedModel, task: ImageTask, noise: torch.Tensor) -> torch.Tensor:
    # diffusers' guidance_scale w: pos + w (pos - neg); A1111's CFG s: neg + s (pos - neg), so w = s - 1.
    return model.pipeline(prompt=task.prompt, negative_prompt=task.negative_prompt, height=task.height,
                          width=task.width, num_inference_steps=task.steps, guidance_scale=task.cfg_scale - 1,
                          latents=noise.clone(), output_type="latent", return_dict=False)[0]


@dataclass(frozen=True)
class Case:
    arch: TinyArch
    latent_shape: tuple[int, int, int]  # the engine's latent at SIZE x SIZE
    reference: Callable[[LoadedModel, ImageTask, torch.Tensor], torch.Tensor]
    changes: dict[str, Any]  # the family's own guidance for the task


CASES = {
    "sd35": Case(TinyArch.SD35, (16, 8, 8), _sd3, {"cfg_scale": 4.5, "negative_prompt": "blurry"}),
    "flux-dev": Case(TinyArch.FLUX_DEV, (16, 8, 8), _flux, {"cfg_scale": 1.0, "distilled_cfg_scale": 3.5}),
    "flux2-klein": Case(TinyArch.FLUX2_KLEIN, (128, 4, 4), _flux2, {"cfg_scale": 1.0}),
    "zimage": Case(TinyArch.ZIMAGE, (16, 8, 8), _zimage, {"cfg_scale": 1.0}),
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Toy-sized matrices run fastest on one thread (and do not fight other test processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dpmpp-parity")


def _task(sampler: str, **changes: Any) -> ImageTask:
    task = ImageTask(prompt="a red house in a forest", negative_prompt="", sampler=resolve_sampler(sampler)[0],  # type: ignore[index]
                     schedule=ScheduleType.SIMPLE, steps=STEPS, cfg_scale=1.0, width=SIZE, height=SIZE, clip_skip=1,
                     noise=NoisePlan(seeds=(7,)))
    return replace(task, **changes)


def _with_scheduler(model: LoadedModel, scheduler: Any, run: Callable[[], torch.Tensor]) -> torch.Tensor:
    saved = model.pipeline.scheduler
    model.pipeline.scheduler = scheduler
    try:
        return run()
    finally:
        model.pipeline.scheduler = saved


@pytest.mark.parametrize("name", list(CASES))
def test_dpmpp_2m_matches_diffusers_dpm_solver_on_the_same_sigmas(root: Path, name: str) -> None:
    case = CASES[name]
    model = load_model(write_tiny_model(case.arch, root / f"{name}.safetensors", seed=3), CPU, root / "cache")
    task = _task("DPM++ 2M", **case.changes)
    plan = SamplingPlan(sampler=task.sampler, schedule=task.schedule, steps=task.steps, noise=task.noise,
                        latent_shape=case.latent_shape, flow=True)
    sigmas = sampler_sigmas(plan, task_sigmas(model, task))
    assert float(sigmas[0]) == pytest.approx(1.0) and float(sigmas[-1]) == 0.0 and len(sigmas) == STEPS + 1
    noise = ImageNoise(case.latent_shape, task.noise.seeds, torch.device("cpu"), task.noise.source).first()

    ours = sample_task(model, task, _Quiet())
    scheduler = dpm_solver(sigmas)
    theirs = _with_scheduler(model, scheduler, lambda: case.reference(model, task, noise))
    assert torch.equal(scheduler.sigmas, sigmas.float().cpu())  # the pipeline ran on our table
    assert ours is not None and ours.shape == theirs.shape == (1, *case.latent_shape)
    difference = float((ours - theirs).abs().max())
    assert difference <= PARITY_ATOL, f"{name}: max abs latent difference {difference:.2e}"
    assert float((ours - noise).abs().mean()) > 0.1  # the model did move the latent

    euler = sample_task(model, replace(task, sampler=resolve_sampler("Euler")[0]), _Quiet())  # type: ignore[index]
    assert euler is not None
    assert float((euler - theirs).abs().max()) > 10 * PARITY_ATOL, f"{name}: Euler is as close as DPM++ 2M"
