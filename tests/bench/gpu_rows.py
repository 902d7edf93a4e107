"""Running one row of the GPU benchmark (``tests/bench/gpu.py``): a diffusers baseline (eager or
compiled) or an Atelier configuration through its services, with the checkpoint switches measured on
the default one, and the row that comes of it (timings, memory, the image check).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from gpu_goals import DEFAULT, Row, Status, SwitchTimes
from gpu_models import drop_page_cache
from gpu_parts import (
    CFG,
    GIB,
    LABELS,
    NEGATIVE,
    PROMPT,
    SAME_KERNELS_MAX_DIFF,
    SEED,
    Baseline,
    LatentWatch,
    Measured,
    Picture,
    Plan,
    StepClock,
    check_picture,
    check_pictures,
    measure,
    read_memory,
    reset_peaks,
    synchronize,
)

import modules.services.models as model_manager
from modules.config import Settings
from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.fast_path import enable_fast_kernels
from modules.engine.memory import weights_bytes
from modules.params import GenerationRequest
from modules.paths import AppPaths
from modules.services.container import Services, build_services

JOB_TIMEOUT_S = 600.0  # one job; far above any expected time, only so a hung worker cannot hang the run


@dataclass(frozen=True)
class Variant:
    """One row to measure: a diffusers baseline or an Atelier configuration."""

    name: str
    diffusers: bool = False  # a diffusers baseline rather than Atelier
    compiled: bool = False  # its UNet is compiled (dynamo is reset after the row)
    policy: DevicePolicy = DevicePolicy()
    settings: Settings = Settings()
    needs_cuda: str = ""  # why it cannot run without CUDA; empty: runs anywhere
    warmup: int = 1
    needs_s: float = 0.0  # budget that must be left to start it
    switches: bool = False  # also time checkpoint switches with this configuration
    follows: str = ""  # the row it pairs with: once that one has run, this one starts whatever the budget
    reference: str = ""  # the row whose image of the same seed this one's must match
    max_diff: float = SAME_KERNELS_MAX_DIFF


@dataclass(frozen=True)
class Bench:
    """One run's tools and what it has found so far (the containers fill as rows run)."""

    plan: Plan
    clock: StepClock
    watch: LatentWatch
    work_dir: Path
    sabotage: str  # the row whose latents are poisoned (--break-variant), or ""
    models: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    paths: dict[str, AppPaths] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)  # models that could not be built
    references: dict[tuple[str, str], Picture] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    switches: list[SwitchTimes] = field(default_factory=list)


# --- diffusers ------------------------------------------------------------------------------------------


def diffusers_pipeline(model_dir: Path, arch: str, device: torch.device) -> DiffusionPipeline:
    """diffusers' own from_pretrained and ``.to``, fp16 on CUDA (fp32 on the CPU, as Atelier uses
    there), SDPA attention (diffusers' default), Euler."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if arch == "sdxl":
        pipe = StableDiffusionXLPipeline.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True,
                                                         add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline.from_pretrained(str(model_dir), dtype=dtype, local_files_only=True,
                                                       safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def compile_unet(pipe: DiffusionPipeline, device: torch.device) -> None:
    """diffusers' documented torch.compile recipe, with the same kernel switches as the fast path."""
    enable_fast_kernels(device)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)


def run_diffusers(variant: Variant, arch: str, bench: Bench) -> tuple[Measured, float]:
    plan, clock = bench.plan, bench.clock
    device = torch.device("cuda" if plan.cuda else "cpu")
    base = Baseline.now()
    started = time.perf_counter()
    pipe = diffusers_pipeline(bench.models[arch][0], arch, device)
    if variant.compiled:
        compile_unet(pipe, device)
    load_s = time.perf_counter() - started
    size, sabotage = plan.size(arch), bench.sabotage == variant.name
    last: dict[str, torch.Tensor] = {}

    def step_end(_pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        clock.mark(index + 1, plan.steps)
        if index + 1 == plan.steps:
            if sabotage:
                kwargs["latents"] = kwargs["latents"] * float("nan")
            last["latents"] = kwargs["latents"]
        return kwargs

    def job() -> np.ndarray:
        return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=plan.steps, width=size, height=size,
                    guidance_scale=CFG, generator=torch.Generator(device).manual_seed(SEED), output_type="np",
                    callback_on_step_end=step_end).images[0]

    def picture(image: np.ndarray) -> Picture:
        latents = last.pop("latents", None)
        finite = latents is not None and bool(torch.isfinite(latents).all())
        return Picture(np.asarray(image, dtype=np.float32) * 255.0, finite)

    return measure(job, picture, clock, variant.warmup, plan.repeats, base), load_s


# --- Atelier --------------------------------------------------------------------------------------------


@contextmanager
def atelier(paths: AppPaths, variant: Variant) -> Iterator[Services]:
    """Services for one variant, torn down (models freed, worker stopped) whatever happens."""
    services = build_services(paths, variant.settings, choose_device(variant.policy))
    try:
        yield services
    finally:
        services.models.unload()
        services.close()


@contextmanager
def cache_in_ram() -> Iterator[None]:
    """As on a card without room for two models: the manager is told the GPU has nothing free, so the
    checkpoint it switches away from is parked in RAM rather than kept beside the next one."""
    original = model_manager.free_device_bytes
    model_manager.free_device_bytes = lambda device: 0 if device.type == "cuda" else None  # type: ignore[assignment]
    try:
        yield
    finally:
        model_manager.free_device_bytes = original  # type: ignore[assignment]


def timed_switch(services: Services, name: str) -> tuple[float, Any]:
    """Switch through the job queue, as the UI does; wall time with the GPU synchronised after it
    (an unpark from pinned RAM is asynchronous), and the manager's own report."""
    synchronize()
    started = time.perf_counter()
    services.generation.switch_model(name).future.result(JOB_TIMEOUT_S)
    synchronize()
    report = services.models.last_switch
    assert report is not None
    return time.perf_counter() - started, report


def switch_times(services: Services, arch: str, bench: Bench, request: GenerationRequest,
                 base: Baseline) -> SwitchTimes:
    """Loaded: the first checkpoint. Cold: to the second, read from disk with its pages evicted while
    the first is parked in RAM. Cached: back to the first, from RAM. Then one job, whose image must
    match the default's."""
    first, second = bench.models[arch]
    loaded = services.models.loaded_model()
    model_gib = weights_bytes(loaded) / GIB if loaded is not None and bench.plan.cuda else None
    with cache_in_ram():
        page_cache = drop_page_cache(second, whole_cache=bench.plan.cuda)
        reset_peaks()
        cold_s, cold = timed_switch(services, second.name)
        memory = read_memory(base)
        cached_s, cached = timed_switch(services, first.name)
    result = services.generation.generate(request, timeout=JOB_TIMEOUT_S)
    image = check_picture(bench.watch.picture(result.images[0].path), bench.references.get((arch, DEFAULT)),
                          SAME_KERNELS_MAX_DIFF)
    status, note = Status.MEASURED, ""
    if cold.from_cache or not cached.from_cache:
        status, note = Status.FAILED, "the cold switch used the cache, or switching back did not"
    return SwitchTimes(LABELS[arch], status, cold_s, cached_s, f"{cold.seconds:.2f} / {cached.seconds:.2f}",
                       page_cache, memory.peak_allocated if memory else None, model_gib, image, note)


def run_atelier(variant: Variant, arch: str, bench: Bench) -> tuple[Measured, float]:
    plan = bench.plan
    first = bench.models[arch][0]
    size = plan.size(arch)
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=plan.steps,
                                cfg_scale=CFG, width=size, height=size, seed=SEED, checkpoint=first.name)
    base = Baseline.now()
    bench.watch.sabotage = bench.sabotage == variant.name
    try:
        with atelier(bench.paths[arch], variant) as services:
            load_s, _ = timed_switch(services, first.name)
            measured = measure(lambda: services.generation.generate(request, timeout=JOB_TIMEOUT_S),
                               lambda result: bench.watch.picture(result.images[0].path), bench.clock,
                               variant.warmup, plan.repeats, base)
            if variant.switches:
                _keep_reference(bench, arch, variant, measured)  # the switch's image is compared with it
                bench.switches.append(_switches_or_failure(services, arch, bench, request, base))
    finally:
        bench.watch.sabotage = False
    return measured, load_s


def _switches_or_failure(services: Services, arch: str, bench: Bench, request: GenerationRequest,
                         base: Baseline) -> SwitchTimes:
    print(f"  {LABELS[arch]} checkpoint switches ...", flush=True)
    try:
        return switch_times(services, arch, bench, request, base)
    except Exception as exc:  # the default row stands; the switch row says what went wrong
        return SwitchTimes(LABELS[arch], Status.FAILED, note=short_error(exc))


# --- a row ----------------------------------------------------------------------------------------


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]


def _keep_reference(bench: Bench, arch: str, variant: Variant, measured: Measured) -> None:
    """The row's last image becomes the reference for the rows compared with it, if it passed."""
    if measured.pictures and check_picture(measured.pictures[-1], None, variant.max_diff).ok:
        bench.references[(arch, variant.name)] = measured.pictures[-1]


def _row(variant: Variant, arch: str, bench: Bench, measured: Measured, load_s: float) -> Row:
    reference = bench.references.get((arch, variant.reference)) if variant.reference else None
    image = check_pictures(measured.pictures, reference, variant.max_diff)
    notes = [f"load {load_s:.1f} s"]
    if variant.compiled:
        notes.append(f"warm-up (compiling) {measured.warmup_s:.0f} s, untimed")
    elif variant.settings.fast_path:
        notes.append("channels_last only (compiles on CUDA)")
    if not variant.warmup:
        notes.append("no warm-up")
    if measured.recompiled:
        notes.append("RECOMPILED during the timed runs")
    if variant.reference and reference is None:
        notes.append(f"not compared: no {variant.reference} image")
    if measured.pictures and measured.pictures[-1].note:
        notes.append(measured.pictures[-1].note)
    _keep_reference(bench, arch, variant, measured)
    return Row(LABELS[arch], variant.name, Status.MEASURED, measured.its, measured.job_s, measured.memory, image,
               "; ".join(notes))


Runner = Callable[[Variant, str, Bench], tuple[Measured, float]]


def run_row(variant: Variant, arch: str, bench: Bench, run: Runner | None = None) -> Row:
    """Measure one row (its images checked; it becomes a reference when it passes); ``run``: a
    family's own way to run it (the FLUX.1 rows), else the SD rows' diffusers or Atelier run."""
    run = run or (run_diffusers if variant.diffusers else run_atelier)
    return _row(variant, arch, bench, *run(variant, arch, bench))
