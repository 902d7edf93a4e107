"""The FLUX.1-dev rows of the GPU benchmark (``tests/bench/gpu.py --only flux``): the model they
measure and how each row runs.

Written for a CUDA card in bf16 without having run on one: only the CPU smoke form (the tiny FLUX.1
model of ``modules/devtools/tiny_flux.py`` in float32 at 64x64, a few steps) has run. On a GPU:

    venv/bin/python tests/bench/gpu.py --only flux               # build (about 2 min), then 4 rows
    venv/bin/python tests/bench/gpu.py --only flux --quick --budget 600

The model is FLUX.1-dev at its real width with reduced depth: the transformer of the shipped config
(3072 wide: 24 heads x 128, joint attention 4096, pooled 768, guidance embedding) with 2 double and
4 single blocks instead of 19 and 38; the real VAE and CLIP-L; T5-XXL at its real width (4096,
d_ff 10240, 64 heads, real vocabulary) with 2 layers instead of 24, and the tiny generated T5
tokenizer (no tokenizer is downloaded). Random weights (speed and memory do not depend on their
values), built on the GPU in bf16, then written as users have them: a ComfyUI all-in-one single file
(bf16, tokenizer in its header), GGUF Q8_0 and Q4_0 transformer files (city96's layout) with
``clip_l`` / ``t5xxl`` in ``models/text_encoder``, ``ae`` in ``models/VAE`` and the tokenizer in
``models/text_encoder/tokenizers``, and a diffusers folder for the baseline.

Rows, at 1024x1024 (CPU: 64x64), 20 steps (CPU: at most 4), Euler, Simple, CFG 1, distilled CFG 3.5:
``diffusers FluxPipeline (bf16)`` (its own ``__call__`` with FlowMatchEulerDiscreteScheduler, the
folder loaded by ``from_pretrained``); ``Atelier bf16`` (the single file, ``--precision bf16``: by
default Atelier computes in fp16 on CUDA); ``Atelier GGUF Q8_0`` / ``Q4_0`` (the GGUF files, bf16
compute, through the services and job queue like every Atelier row). On the CPU everything is
float32, as the SD rows are there.

Image checks: every image finite and not flat. diffusers and Atelier draw their noise and sigmas
differently, so after its timed runs the diffusers row makes one more, untimed image from Atelier's
start noise and sigmas (its scheduler with shift 1 walking Atelier's Simple sigmas, as
``tests/integration/test_family_flux.py`` does for parity); Atelier bf16's image must match it.
On CUDA the two differ by bf16 rounding (the pipeline keeps its latents in bf16 between steps,
Atelier in float32), hence a looser limit than the CPU's. The GGUF rows are compared with Atelier
bf16: Q8_0 closely, Q4_0 only loosely (4-bit weights change a random model's image visibly; an
unrelated or broken image still differs by far more).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from gpu_goals import FLUX_BF16, FLUX_DIFFUSERS, FLUX_Q4, FLUX_Q8
from gpu_parts import (
    OTHER_KERNELS_MAX_DIFF,
    PROMPT,
    SAME_KERNELS_MAX_DIFF,
    SEED,
    Baseline,
    Measured,
    Picture,
    Plan,
    check_picture,
    free_memory,
    measure,
)
from gpu_rows import JOB_TIMEOUT_S, Bench, Variant, atelier, timed_switch
from safetensors.torch import save_file

from modules.config import Settings
from modules.devtools import tiny_flux, tiny_gguf
from modules.devtools.tiny_model import TinyArch
from modules.engine.devices import DevicePolicy
from modules.engine.families import flux_flow, flux_keys
from modules.engine.families import flux_parts as parts
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.flow import flow_sigmas
from modules.engine.sampling.loop import NoisePlan, SamplingPlan, sampler_sigmas
from modules.engine.sampling.noise import ImageNoise
from modules.engine.tokenizer_files import tokenizer_source
from modules.params import GenerationRequest
from modules.paths import AppPaths, resolve_paths
from modules.precision import Precision
from modules.samplers import RngSource, ScheduleType, resolve_sampler

FLUX = "flux"
DISTILLED_CFG = 3.5  # FLUX.1-dev's default (diffusers' FluxPipeline guidance_scale, Forge's Distilled CFG)
FLUX_CFG = 1.0  # real CFG off: one transformer call per step, as Forge and diffusers run dev
CPU_MAX_STEPS = 4
DEPTH = (2, 4)  # double, single blocks (the real model: 19, 38)
T5_LAYERS = 2  # the real T5-XXL encoder: 24
SAME_NOISE = "diffusers on Atelier's noise and sigmas"  # the reference Atelier bf16 is compared with
# Atelier bf16 against that reference: on the CPU both are float32 (rounding only); on CUDA the
# pipeline rounds its latents to bf16 after every step, Atelier does not.
BF16_MAX_DIFF = {False: SAME_KERNELS_MAX_DIFF, True: OTHER_KERNELS_MAX_DIFF}
Q8_MAX_DIFF = OTHER_KERNELS_MAX_DIFF  # 8-bit blocks: about 0.4 % error per weight
Q4_MAX_DIFF = 30.0  # 4-bit blocks: about 7 % per weight; a sanity bound, not a quality claim
SINGLE, Q8_FILE, Q4_FILE = "flux1-dev-bench.safetensors", "flux1-dev-bench-Q8_0.gguf", "flux1-dev-bench-Q4_0.gguf"
CHECKPOINTS = {FLUX_BF16: SINGLE, FLUX_Q8: Q8_FILE, FLUX_Q4: Q4_FILE}
BUILD_NEEDS_S = 150.0  # on a GPU: build, write about 11 GB (two GGUF quantizations on the CPU), hash


def steps(plan: Plan) -> int:
    return plan.steps if plan.cuda else min(plan.steps, CPU_MAX_STEPS)


def flux_rows(cuda: bool) -> list[Variant]:
    """The four rows, baseline first (Atelier bf16's reference comes from it, the GGUF rows' from Atelier bf16)."""
    # --precision bf16 on CUDA (Forge's default for FLUX); float32 on the CPU, as the diffusers row there.
    bf16 = DevicePolicy(precision=Precision.BF16) if cuda else DevicePolicy()
    return [Variant(FLUX_DIFFUSERS, diffusers=True, needs_s=40.0 if cuda else 0.0),
            Variant(FLUX_BF16, policy=bf16, needs_s=40.0 if cuda else 0.0, reference=SAME_NOISE,
                    max_diff=BF16_MAX_DIFF[cuda]),
            Variant(FLUX_Q8, policy=bf16, needs_s=60.0 if cuda else 0.0, reference=FLUX_BF16, max_diff=Q8_MAX_DIFF),
            Variant(FLUX_Q4, policy=bf16, needs_s=60.0 if cuda else 0.0, reference=FLUX_BF16, max_diff=Q4_MAX_DIFF)]


# --- the model -----------------------------------------------------------------------------------------


def real_width_dims() -> flux_keys.FluxDims:
    config = parts.shipped_config(ModelArch.FLUX_DEV, "transformer/config.json")
    return flux_keys.FluxDims(in_channels=config["in_channels"], out_channels=config["out_channels"] or 64,
                              num_layers=DEPTH[0], num_single_layers=DEPTH[1],
                              head_dim=config["attention_head_dim"], heads=config["num_attention_heads"],
                              joint_attention_dim=config["joint_attention_dim"],
                              pooled_projection_dim=config["pooled_projection_dim"],
                              guidance_embeds=config["guidance_embeds"])


def build_real_width(device: torch.device, dtype: torch.dtype) -> FluxPipeline:
    """FLUX.1-dev at real width, reduced depth, random weights made on ``device`` (seconds on a GPU)
    and cast to ``dtype`` one component at a time."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    arch = ModelArch.FLUX_DEV
    t5_config = parts.shipped_config(arch, "text_encoder_2/config.json")
    t5_config.update(num_layers=T5_LAYERS, num_decoder_layers=T5_LAYERS)
    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "transformer": lambda: FluxTransformer2DModel(**real_width_dims().config()),
        "vae": lambda: AutoencoderKL.from_config(parts.shipped_config(arch, "vae/config.json")),
        "text_encoder": lambda: CLIPTextModel(CLIPTextConfig(**parts.shipped_config(arch, "text_encoder/config.json"))),
        "text_encoder_2": lambda: T5EncoderModel(T5Config(**t5_config)),
    }
    torch.manual_seed(0)
    modules: dict[str, Any] = {}
    for name, build in builders.items():
        with torch.device(device):
            modules[name] = build().to(dtype).eval()
        free_memory()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(parts.shipped_config(arch, "scheduler/scheduler_config.json"))
    pipe = FluxPipeline(scheduler=scheduler, tokenizer=parts.clip_tokenizer(),
                        tokenizer_2=parts.t5_tokenizer_from_json(tiny_flux.tiny_t5_tokenizer_json()), **modules)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_model(plan: Plan) -> FluxPipeline:
    """Real width on CUDA (or with ``--real-size``), else the tiny test model (float32)."""
    if plan.cuda or plan.real_size:
        return build_real_width(torch.device("cuda" if plan.cuda else "cpu"), torch.bfloat16)
    return tiny_flux.build_tiny_flux_pipeline(TinyArch.FLUX_DEV, seed=0)


def write_model(pipe: FluxPipeline, root: Path) -> tuple[AppPaths, Path]:
    """The files in an A1111/Forge models folder (and the diffusers folder beside it); the app paths
    and the diffusers folder."""
    paths = resolve_paths(data_dir=root / "data", models_dir=root / "models")
    checkpoints, encoders, vaes = paths.checkpoint_dirs[0], paths.text_encoder_dirs[0], paths.vae_dirs[0]
    for folder in (checkpoints, encoders, vaes):
        folder.mkdir(parents=True, exist_ok=True)
    tiny_flux.write_single_file(pipe, checkpoints / SINGLE)
    bfl = tiny_flux.transformer_bfl(pipe)
    tiny_gguf.write_gguf(bfl, checkpoints / Q8_FILE, "Q8_0")
    tiny_gguf.write_gguf(bfl, checkpoints / Q4_FILE, "Q4_0")
    del bfl
    # What the GGUF files need beside them (the single file carries its own).
    for state, out in ((tiny_flux.clip_state(pipe), encoders / "clip_l.safetensors"),
                       (tiny_flux.t5_state(pipe), encoders / "t5xxl_bf16.safetensors"),
                       (tiny_flux.vae_state(pipe), vaes / "ae.safetensors")):
        save_file(state, str(out), metadata={"format": "pt"})
    pipe.tokenizer_2.save_pretrained(str(paths.tokenizers_dir / tokenizer_source("t5xxl").folder_name))
    folder = root / "flux1-dev-bench-diffusers"
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return paths, folder


def make_flux_models(plan: Plan, work_dir: Path) -> tuple[tuple[Path, Path], AppPaths, list[Path]]:
    """Build and write the model: (single file, diffusers folder), the app paths, the checkpoints."""
    pipe = build_model(plan)
    pipe.to("cpu")  # written from RAM: the card is left empty for the rows
    free_memory()
    paths, folder = write_model(pipe, work_dir / "flux")
    del pipe
    free_memory()
    checkpoints = [paths.checkpoint_dirs[0] / name for name in (SINGLE, Q8_FILE, Q4_FILE)]
    return (checkpoints[0], folder), paths, checkpoints


# --- diffusers -------------------------------------------------------------------------------------------


def atelier_start(pipe: FluxPipeline, size: int, count: int, device: torch.device) -> tuple[torch.Tensor, list[float]]:
    """The start noise (1, 16, h, w) and the sigmas an Atelier job with these settings walks: its
    seeded noise (default RNG source) and its Simple schedule of FLUX.1's shifted flow levels."""
    latent = size // 8
    model_sigmas = flow_sigmas(flux_flow.shift_for(pipe.scheduler.config, size, size))
    source = RngSource(Settings().randn_source)
    plan = SamplingPlan(sampler=resolve_sampler("Euler")[0], schedule=ScheduleType.SIMPLE,  # type: ignore[index]
                        steps=count, noise=NoisePlan(seeds=(SEED,), source=source), latent_shape=(16, latent, latent),
                        flow=True)
    sigmas = sampler_sigmas(plan, model_sigmas)
    noise = ImageNoise((16, latent, latent), (SEED,), device, source).first()
    return noise, [float(s) for s in sigmas[:-1]]  # the pipeline's scheduler appends the final 0


def same_noise_picture(pipe: FluxPipeline, size: int, count: int, device: torch.device) -> Picture:
    """diffusers' own __call__ on Atelier's start noise and sigmas (scheduler shift 1: sigmas as given)."""
    noise, sigmas = atelier_start(pipe, size, count, device)
    saved = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    try:
        image = pipe(prompt=PROMPT, width=size, height=size, sigmas=sigmas, guidance_scale=DISTILLED_CFG,
                     latents=flux_flow.pack(noise), output_type="np").images[0]
    finally:
        pipe.scheduler = saved
    return Picture(np.asarray(image, dtype=np.float32) * 255.0, bool(np.isfinite(image).all()))


def run_flux_diffusers(variant: Variant, arch: str, bench: Bench) -> tuple[Measured, float]:
    plan, clock = bench.plan, bench.clock
    device = torch.device("cuda" if plan.cuda else "cpu")
    dtype = torch.bfloat16 if plan.cuda else torch.float32
    base = Baseline.now()
    started = time.perf_counter()
    pipe = FluxPipeline.from_pretrained(str(bench.models[arch][1]), dtype=dtype, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe = pipe.to(device)
    load_s = time.perf_counter() - started
    size, count, sabotage = plan.size(arch), steps(plan), bench.sabotage == variant.name
    last: dict[str, torch.Tensor] = {}

    def step_end(_pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        clock.mark(index + 1, count)
        if index + 1 == count:
            if sabotage:
                kwargs["latents"] = kwargs["latents"] * float("nan")
            last["latents"] = kwargs["latents"]
        return kwargs

    def job() -> np.ndarray:
        return pipe(prompt=PROMPT, num_inference_steps=count, width=size, height=size, guidance_scale=DISTILLED_CFG,
                    generator=torch.Generator(device).manual_seed(SEED), output_type="np",
                    callback_on_step_end=step_end).images[0]

    def picture(image: np.ndarray) -> Picture:
        latents = last.pop("latents", None)
        finite = latents is not None and bool(torch.isfinite(latents).all())
        return Picture(np.asarray(image, dtype=np.float32) * 255.0, finite)

    measured = measure(job, picture, clock, variant.warmup, plan.repeats, base)
    same = same_noise_picture(pipe, size, count, device)  # untimed, after the memory readings
    if check_picture(same, None, variant.max_diff).ok:
        bench.references[(arch, SAME_NOISE)] = same
    # Checked with the row's own images (finite, not flat); the last one is compared with nothing.
    return dataclasses.replace(measured, pictures=[*measured.pictures, same]), load_s


# --- Atelier ---------------------------------------------------------------------------------------------


def run_flux_atelier(variant: Variant, arch: str, bench: Bench) -> tuple[Measured, float]:
    """One Atelier row: its checkpoint loaded through the job queue, then the timed jobs."""
    plan = bench.plan
    size = plan.size(arch)
    checkpoint = CHECKPOINTS[variant.name]
    request = GenerationRequest(prompt=PROMPT, negative_prompt="", sampler="Euler", schedule=ScheduleType.SIMPLE,
                                steps=steps(plan), cfg_scale=FLUX_CFG, distilled_cfg_scale=DISTILLED_CFG, width=size,
                                height=size, seed=SEED, checkpoint=checkpoint)
    base = Baseline.now()
    bench.watch.sabotage = bench.sabotage == variant.name
    try:
        with atelier(bench.paths[arch], variant) as services:
            load_s, _ = timed_switch(services, checkpoint)
            measured = measure(lambda: services.generation.generate(request, timeout=JOB_TIMEOUT_S),
                               lambda result: bench.watch.picture(result.images[0].path), bench.clock,
                               variant.warmup, plan.repeats, base)
    finally:
        bench.watch.sabotage = False
    return measured, load_s


def flux_runner(variant: Variant) -> Callable[[Variant, str, Bench], tuple[Measured, float]]:
    return run_flux_diffusers if variant.diffusers else run_flux_atelier



HEADER = (f"FLUX.1-dev (real width, {DEPTH[0]}+{DEPTH[1]} blocks, T5 {T5_LAYERS} layers) 1024x1024, Euler Simple, "
          f"CFG {FLUX_CFG:g}, distilled CFG {DISTILLED_CFG:g}")
