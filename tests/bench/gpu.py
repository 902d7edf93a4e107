"""Benchmark: Atelier against plain diffusers on a GPU, with real-size SD1.5 and SDXL models.

Random-weight models are built from the shipped real-size configs (``modules/engine/model_configs``;
speed and memory do not depend on the weights' values) and saved as fp16 diffusers folders, so
Atelier loads them through its real path (services, job queue, model manager). One process then
measures, per model (SD1.5 at 512x512, SDXL at 1024x1024, 20 steps, batch 1, Euler, CFG 7):

* plain diffusers: the pipeline's own ``__call__`` in fp16 with SDPA attention (the reference);
* Atelier default, fast path (channels_last + torch.compile; the first run at the size is a
  warm-up that pays the compile and is never timed), ``--medvram``, ``--medvram-sdxl`` (SDXL),
  ``--lowvram`` and ``--xformers``;
* checkpoint switches with ``checkpoint_cache=1``: cold (a checkpoint not in RAM, read from disk)
  and cached (switching back to the one parked in RAM).

``it/s`` counts denoising steps only: (steps - 1) divided by the time from the end of step 1 to the
end of the last step, with the GPU synchronised at just those two moments, so prompt encoding, VAE
decoding and saving stay outside it. ``job s`` is the whole call's wall time (for Atelier: request
to saved PNG). ``peak VRAM`` is ``torch.cuda.max_memory_allocated`` over a job, counted from what was
allocated before the variant loaded its model. A variant that fails (out of memory, xformers not
installed) is reported in its row; the rest of the table still runs. A variant is started only
while enough of ``--budget`` (seconds, counted after the imports) is left for it; those skipped get
a row saying so. The default budget is sized for under 8 minutes on one H100, so the SDXL fast
path (minutes of compiling) usually needs its own run: ``--only sdxl --budget 600``.

Without CUDA the same table runs tiny models at 64x64 on the CPU (``--real-size`` uses the real
configs there instead: slow, for checking the model building). Those are CPU numbers, not the
GPU goals, and the output says so at the top and the bottom.

Run on demand, never in CI's test pass:

    venv/bin/python tests/bench/gpu.py [--quick] [--only sd15|sdxl] [--steps 20] [--repeats 3]
                                       [--budget 400] [--threads 1] [--real-size]

The last line is ``goals_met <met>/<evaluated>``.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Before the Hugging Face libraries are imported: they read it once, and nothing here may download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from modules.config import Settings  # noqa: E402
from modules.devtools.tiny_model import TinyArch, write_tiny_model  # noqa: E402
from modules.engine.config_folders import SHIPPED_CONFIGS, read_bpe_file  # noqa: E402
from modules.engine.devices import DevicePolicy, MemoryMode, choose_device  # noqa: E402
from modules.params import GenerationRequest  # noqa: E402
from modules.paths import AppPaths, resolve_paths  # noqa: E402
from modules.services.container import Services, build_services  # noqa: E402
from modules.services.hashing import HashCache  # noqa: E402
from modules.services.job_types import JobContext  # noqa: E402

GIB = 1024**3
PROMPT, NEGATIVE, SEED, CFG = "a photo of a cat", "blurry", 1, 7.0
GPU_SIZES = {"sd15": 512, "sdxl": 1024}
CPU_SIZE = 64
LABELS = {"sd15": "SD1.5", "sdxl": "SDXL"}
PLAIN = "plain diffusers"
JOB_TIMEOUT_S = 600.0  # one job; far above any expected time, only so a hung worker cannot hang the run
SDXL_COMPILE_NEEDS_S = 240.0  # max-autotune compiling the SDXL UNet takes minutes; started only with this left
# Building, saving and hashing the next pair of models, then its first variants: not worth starting with less.
NEXT_MODEL_NEEDS_S = 120.0


# --- what a run measures ---------------------------------------------------------------------------


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


@dataclass
class Row:
    model: str
    variant: str
    its: float | None = None  # denoising steps per second, median of the timed runs
    job_s: float | None = None  # whole job, median
    peak_gib: float | None = None  # highest of the timed runs
    note: str = ""


@dataclass
class SwitchTimes:
    model: str
    cold_s: float | None = None
    cached_s: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Variant:
    """One Atelier configuration to measure."""

    name: str
    policy: DevicePolicy = DevicePolicy()
    settings: Settings = Settings()
    needs_cuda: str = ""  # why it cannot run without CUDA; empty: runs anywhere
    warmup: int = 1
    needs_s: float = 0.0  # budget that must be left to start it
    switches: bool = False  # also time checkpoint switches with this configuration


def variants(arch: str, cuda: bool) -> list[Variant]:
    """In order of importance (rows with a goal first), so that a run cut short by the budget loses
    the least useful rows. ``needs_s`` is a rough cost on an H100, so that the last variant started
    still ends near the budget."""
    offload = "it moves weights between a CUDA GPU and RAM"
    xl = cuda and arch == "sdxl"
    fast = Variant("Atelier fast path", settings=Settings(fast_path=True), needs_s=SDXL_COMPILE_NEEDS_S if xl else 0.0)
    found = [Variant("Atelier default", switches=True, needs_s=45.0 if xl else 0.0)]
    if arch == "sd15":  # it has a goal here; on SDXL its minutes of compiling come last
        found.append(fast)
    found.append(Variant("--medvram", DevicePolicy(memory=MemoryMode.MEDVRAM), needs_cuda=offload,
                         needs_s=40.0 if xl else 15.0))
    if arch == "sdxl":  # for SD1.5 it is the default, and would measure the same thing again
        found.append(Variant("--medvram-sdxl", DevicePolicy(memory=MemoryMode.MEDVRAM_SDXL), needs_cuda=offload,
                             needs_s=40.0 if xl else 15.0))
    # No warm-up for lowvram: every step streams all weights again, so a first run costs what the others do.
    found.append(Variant("--lowvram", DevicePolicy(memory=MemoryMode.LOWVRAM), needs_cuda=offload, warmup=0,
                         needs_s=90.0 if xl else 25.0))
    if arch == "sdxl":
        found.append(fast)
    found.append(Variant("--xformers", DevicePolicy(xformers=True), needs_cuda="xformers kernels are CUDA-only",
                         needs_s=30.0 if xl else 10.0))
    return found


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


def allocated() -> int:
    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0


def measure(job: Callable[[], object], clock: StepClock, warmup: int, repeats: int, base: int) -> Row:
    """Warm-up runs (never timed), then timed runs; a Row with medians and the highest peak."""
    cuda = torch.cuda.is_available()
    for _ in range(warmup):
        job()
    rates: list[float] = []
    seconds: list[float] = []
    peak = 0
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        clock.reset()
        started = time.perf_counter()
        job()
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
        if (rate := clock.rate()) is not None:
            rates.append(rate)
        if cuda:
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
    return Row("", "", its=statistics.median(rates) if rates else None, job_s=statistics.median(seconds),
               peak_gib=peak / GIB if cuda else None)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- models ------------------------------------------------------------------------------------------


def _real_size_builders(source: Path) -> dict[str, Callable[[], torch.nn.Module]]:
    def text(name: str, cls: type) -> Callable[[], torch.nn.Module]:
        return lambda: cls(CLIPTextConfig.from_pretrained(str(source / name), local_files_only=True))

    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(source / "unet"))),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(str(source / "vae"))),
        "text_encoder": text("text_encoder", CLIPTextModel),
    }
    if (source / "text_encoder_2").is_dir():
        builders["text_encoder_2"] = text("text_encoder_2", CLIPTextModelWithProjection)
    return builders


def build_real_size(arch: str, out: Path, device: torch.device) -> Path:
    """A diffusers folder of ``arch``'s shipped configs with random fp16 weights. Each component is
    initialised on ``device`` (seconds on a GPU, against minutes of CPU init for SDXL), saved and
    freed before the next, so at most one fp32 component is in memory at a time."""
    source = SHIPPED_CONFIGS / arch
    shutil.copytree(source, out)  # model_index, scheduler and tokenizer configs as shipped
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if (out / tokenizer).is_dir():
            for name in ("vocab.json", "merges.txt"):
                (out / tokenizer / name).write_bytes(read_bpe_file(name))
    torch.manual_seed(0)
    for name, build in _real_size_builders(source).items():
        with torch.device(device):
            module = build()
        module.to(torch.float16).save_pretrained(str(out / name))
        del module
        free_memory()
    return out


def linked_copy(source: Path, target: Path) -> Path:
    """A second checkpoint with the same weights: hard links (no extra disk), configs copied."""
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:  # a filesystem without hard links
            shutil.copy2(path, dest)
    return target


def make_checkpoints(arch: str, plan: Plan, root: Path) -> tuple[Path, Path]:
    """Two checkpoints of ``arch`` in their own checkpoint folder: the one measured, and a second to
    switch to and back from."""
    folder = root / arch
    first, second = folder / f"{arch}-a", folder / f"{arch}-b"
    if plan.cuda or plan.real_size:
        build_real_size(arch, first, torch.device("cuda" if plan.cuda else "cpu"))
        linked_copy(first, second)
    else:
        write_tiny_model(TinyArch(arch), first, seed=0)
        write_tiny_model(TinyArch(arch), second, seed=1)
    return first, second


# --- the variants ------------------------------------------------------------------------------------


def plain_pipeline(model_dir: Path, arch: str, device: torch.device) -> DiffusionPipeline:
    """The reference: diffusers' own from_pretrained and ``.to``, fp16 on CUDA (fp32 on the CPU, as
    Atelier uses there), SDPA attention (diffusers' default), Euler."""
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


def run_plain(model_dir: Path, arch: str, plan: Plan, clock: StepClock) -> Row:
    device = torch.device("cuda" if plan.cuda else "cpu")
    base = allocated()
    started = time.perf_counter()
    pipe = plain_pipeline(model_dir, arch, device)
    load_s = time.perf_counter() - started
    size = plan.size(arch)

    def step_end(_pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        clock.mark(index + 1, plan.steps)
        return kwargs

    def job() -> None:
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=plan.steps, width=size, height=size,
             guidance_scale=CFG, generator=torch.Generator(device).manual_seed(SEED),
             callback_on_step_end=step_end).images[0]

    row = measure(job, clock, 1, plan.repeats, base)
    row.note = f"load {load_s:.1f} s"
    return row


@contextmanager
def atelier(paths: AppPaths, variant: Variant) -> Iterator[Services]:
    """Services for one variant, torn down (models freed, worker stopped) whatever happens."""
    services = build_services(paths, variant.settings, choose_device(variant.policy))
    try:
        yield services
    finally:
        services.models.unload()
        services.close()


def switch(services: Services, name: str) -> tuple[float, bool]:
    """Switch through the job queue, as the UI does; the manager's own report of how long it took."""
    services.generation.switch_model(name).future.result(JOB_TIMEOUT_S)
    report = services.models.last_switch
    assert report is not None
    return report.seconds, report.from_cache


def switch_times(services: Services, arch: str, first: Path, second: Path) -> SwitchTimes:
    """Loaded: ``first``. Cold: to ``second``, read from disk while ``first`` is parked in RAM.
    Cached: back to ``first`` from RAM."""
    cold, _ = switch(services, second.name)
    cached, from_cache = switch(services, first.name)
    note = "" if from_cache else "switching back did not use the RAM cache"
    return SwitchTimes(LABELS[arch], cold, cached, note)


def run_atelier(variant: Variant, arch: str, models: tuple[Path, Path], paths: AppPaths, plan: Plan,
                clock: StepClock) -> tuple[Row, SwitchTimes | None]:
    size = plan.size(arch)
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler", steps=plan.steps,
                                cfg_scale=CFG, width=size, height=size, seed=SEED, checkpoint=models[0].name)
    base = allocated()
    with atelier(paths, variant) as services:
        load_s, _ = switch(services, models[0].name)
        row = measure(lambda: services.generation.generate(request, timeout=JOB_TIMEOUT_S), clock,
                      variant.warmup, plan.repeats, base)
        row.note = f"load {load_s:.1f} s" + ("" if variant.warmup else ", no warm-up")
        if variant.settings.fast_path:
            row.note += "; compiled in the untimed warm-up" if plan.cuda else "; channels_last only (compiles on CUDA)"
        switches = switch_times(services, arch, *models) if variant.switches else None
    return row, switches


# --- the run -----------------------------------------------------------------------------------------


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:150]


def attempt(rows: list[Row], arch: str, name: str, plan: Plan, needs_s: float,
            work: Callable[[], Row]) -> Row | None:
    """Run one variant unless the budget is spent; a failure becomes a row, not the end of the run."""
    model = LABELS[arch]
    if plan.left_s() < max(needs_s, 1.0):
        reason = f"skipped: {max(plan.left_s(), 0):.0f} s of the --budget left"
        reason += f", it needs about {needs_s:.0f} s" if needs_s else ""
        rows.append(Row(model, name, note=reason))
        print(f"  {name}: {reason}", flush=True)
        return None
    print(f"  {name} ...", flush=True)
    try:
        row = work()
    except Exception as exc:  # OOM, a missing kernel package, a load error: this row only
        row = Row(model, name, note=f"failed: {short_error(exc)}")
    finally:
        free_memory()
    row.model, row.variant = model, name
    rows.append(row)
    print(f"    {fmt(row.its, '.2f')} it/s, job {fmt(row.job_s, '.2f')} s, peak {fmt(row.peak_gib, '.2f')} GiB"
          f"{'; ' + row.note if row.note else ''}", flush=True)
    return row


def bench_model(arch: str, plan: Plan, work_dir: Path, clock: StepClock) -> tuple[list[Row], list[SwitchTimes]]:
    rows: list[Row] = []
    switches: list[SwitchTimes] = []
    started = time.perf_counter()
    models = make_checkpoints(arch, plan, work_dir / "models")
    paths = resolve_paths(data_dir=work_dir / f"data-{arch}", ckpt_dir=models[0].parent)
    for path in models:  # hashed once here, as on any start after the first: "cold" is then pure loading
        HashCache(paths.hash_cache).sha256(path)
    print(f"{LABELS[arch]}: two checkpoints written and hashed in {time.perf_counter() - started:.1f} s", flush=True)
    attempt(rows, arch, PLAIN, plan, 0.0, lambda: run_plain(models[0], arch, plan, clock))
    for variant in variants(arch, plan.cuda):
        if variant.needs_cuda and not plan.cuda:
            note = f"skipped: needs CUDA ({variant.needs_cuda}); this machine has none"
            rows.append(Row(LABELS[arch], variant.name, note=note))
            print(f"  {variant.name}: {note}", flush=True)
            continue

        def work(variant: Variant = variant) -> Row:
            row, times = run_atelier(variant, arch, models, paths, plan, clock)
            if times is not None:
                switches.append(times)
            return row

        attempt(rows, arch, variant.name, plan, variant.needs_s, work)
        if variant.settings.fast_path:
            torch._dynamo.reset()  # drop compiled graphs so later variants start clean
    return rows, switches


# --- the report --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    label: str
    arch: str
    variant: str  # the row it reads; empty for a switch goal
    kind: str  # "ratio" (it/s against plain diffusers), "peak" (GiB) or "cached" (seconds)
    limit: float


GOALS = (
    Goal("SD1.5 Atelier default >= 1.0x plain diffusers", "sd15", "Atelier default", "ratio", 1.0),
    Goal("SDXL Atelier default >= 1.0x plain diffusers", "sdxl", "Atelier default", "ratio", 1.0),
    Goal("SD1.5 fast path >= 1.3x plain diffusers", "sd15", "Atelier fast path", "ratio", 1.3),
    Goal("SD1.5 default peak VRAM <= 2.6 GiB", "sd15", "Atelier default", "peak", 2.6),
    Goal("SD1.5 --lowvram peak VRAM <= 1.0 GiB", "sd15", "--lowvram", "peak", 1.0),
    Goal("SDXL --medvram peak VRAM <= 4.0 GiB", "sdxl", "--medvram", "peak", 4.0),
    Goal("SD1.5 cached checkpoint switch <= 0.5 s", "sd15", "", "cached", 0.5),
    Goal("SDXL cached checkpoint switch <= 0.5 s", "sdxl", "", "cached", 0.5),
)


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, spec) + suffix


def ratio(rows: list[Row], row: Row) -> float | None:
    plain = next((r for r in rows if r.model == row.model and r.variant == PLAIN), None)
    if plain is None or plain.its is None or row.its is None:
        return None
    return row.its / plain.its


def print_tables(rows: list[Row], switches: list[SwitchTimes], plan: Plan) -> None:
    unit = "peak VRAM GiB" if plan.cuda else "peak VRAM GiB (no CUDA)"
    print(f"\n| model | variant | it/s | vs plain | {unit} | job s | notes |")
    print("|---|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(f"| {row.model} | {row.variant} | {fmt(row.its, '.2f')} | {fmt(ratio(rows, row), '.2f', 'x')} | "
              f"{fmt(row.peak_gib, '.2f')} | {fmt(row.job_s, '.2f')} | {row.note} |")
    print("\n| model | cold switch s | cached switch s | notes |")
    print("|---|---:|---:|---|")
    for times in switches:
        print(f"| {times.model} | {fmt(times.cold_s, '.2f')} | {fmt(times.cached_s, '.2f')} | {times.note} |")
    if not switches:
        print("| — | — | — | not measured (the default variant did not run) |")


def goal_value(goal: Goal, rows: list[Row], switches: list[SwitchTimes]) -> float | None:
    if goal.kind == "cached":
        return next((s.cached_s for s in switches if s.model == LABELS[goal.arch]), None)
    row = next((r for r in rows if r.model == LABELS[goal.arch] and r.variant == goal.variant), None)
    if row is None:
        return None
    return ratio(rows, row) if goal.kind == "ratio" else row.peak_gib


def print_goals(rows: list[Row], switches: list[SwitchTimes], plan: Plan, archs: list[str]) -> tuple[int, int]:
    """One line per goal; returns (met, evaluated)."""
    met = evaluated = 0
    print()
    for goal in GOALS:
        if goal.arch not in archs:
            continue
        value = goal_value(goal, rows, switches)
        if goal.kind == "peak" and not plan.cuda:
            print(f"goal {goal.label}: not measured (no CUDA: no VRAM to measure)")
            continue
        if value is None:
            print(f"goal {goal.label}: not measured (see the table)")
            continue
        evaluated += 1
        ok = value >= goal.limit if goal.kind == "ratio" else value <= goal.limit
        met += ok
        shown = {"ratio": f"{value:.2f}x", "peak": f"{value:.2f} GiB", "cached": f"{value:.2f} s"}[goal.kind]
        where = "" if plan.cuda else " (CPU number, not the GPU goal)"
        print(f"goal {goal.label}: {shown} — {'met' if ok else 'MISSED'}{where}")
    return met, evaluated


def cpu_banner(plan: Plan, threads: int) -> str:
    models = "real-size models" if plan.real_size else "tiny models"
    return (f"CPU RUN (no CUDA device): {models} at {CPU_SIZE}x{CPU_SIZE}, {threads} thread(s). "
            "These are CPU numbers, NOT the GPU goals.")


def print_header(plan: Plan, args: argparse.Namespace) -> None:
    if plan.cuda:
        name = torch.cuda.get_device_name()
        print(f"GPU {name}; torch {torch.__version__}; SD1.5 512x512, SDXL 1024x1024, {plan.steps} steps, "
              f"batch 1, Euler, CFG {CFG}; {plan.repeats} timed run(s) after 1 warm-up; budget {plan.budget_s:.0f} s")
    else:
        print(cpu_banner(plan, args.threads))
        print(f"torch {torch.__version__}; {plan.steps} steps, batch 1, Euler, CFG {CFG}; "
              f"{plan.repeats} timed run(s) after 1 warm-up")
    print("it/s: denoising steps only (end of step 1 to end of the last step); job s: the whole call.\n", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed run per variant instead of --repeats")
    parser.add_argument("--only", choices=["sd15", "sdxl"], help="one model family only")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant, after the warm-up")
    parser.add_argument("--budget", type=float, default=400.0,
                        help="seconds after which no new variant starts (default 400: a full run stays under 8 min)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads without CUDA (default 1: on a small shared machine, less noise)")
    parser.add_argument("--real-size", action="store_true",
                        help="without CUDA, use the real-size configs instead of tiny models (slow; checks the build)")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be at least 2 and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Loading bars from both libraries would bury the table; Atelier turns off its sampling bar itself.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(args.threads)  # pinned: the CPU is shared, and numbers should be repeatable
    repeats = 1 if args.quick else args.repeats
    if not cuda and not args.real_size:  # a tiny-model run takes a fraction of a second, and more of them
        repeats = max(repeats, 5)  # keep the median steady on a shared CPU
    plan = Plan(cuda=cuda, real_size=args.real_size, steps=args.steps, repeats=repeats, budget_s=args.budget)
    clock = StepClock(cuda)
    time_atelier_steps(clock)
    print_header(plan, args)
    archs = [args.only] if args.only else ["sd15", "sdxl"]
    rows: list[Row] = []
    switches: list[SwitchTimes] = []
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        for index, arch in enumerate(archs):
            if index and plan.left_s() < NEXT_MODEL_NEEDS_S:
                note = f"skipped: {max(plan.left_s(), 0):.0f} s of the --budget left"
                rows.append(Row(LABELS[arch], "(all variants)", note=note))
                print(f"{LABELS[arch]}: {note}", flush=True)
                continue
            try:
                found, times = bench_model(arch, plan, Path(tmp), clock)
            except Exception as exc:  # building or saving the models failed: nothing to measure for it
                found, times = [Row(LABELS[arch], "(building models)", note=f"failed: {short_error(exc)}")], []
                print(f"{LABELS[arch]}: {found[0].note}", flush=True)
            rows += found
            switches += times
            shutil.rmtree(Path(tmp) / "models" / arch, ignore_errors=True)  # an SDXL pair is ~7 GB on disk
            free_memory()
    print_tables(rows, switches, plan)
    met, evaluated = print_goals(rows, switches, plan, archs)
    print(f"\nfinished in {time.perf_counter() - plan.started:.0f} s")
    if not cuda:
        print(cpu_banner(plan, args.threads))
    print(f"goals_met {met}/{evaluated}" + ("" if cuda else " (CPU numbers, not the GPU goals)"))


if __name__ == "__main__":
    main()
