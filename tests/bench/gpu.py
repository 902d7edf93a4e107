"""Benchmark: Atelier against diffusers on a GPU, with real-size SD1.5 and SDXL models, and FLUX.1-dev
at real width with reduced depth.

Run on demand, never in CI's test pass. On an H100:

    venv/bin/python tests/bench/gpu.py                             # SD1.5, SDXL: baselines, defaults, switches,
                                                                   # memory modes (about 7 minutes)
    venv/bin/python tests/bench/gpu.py --only sd15 --set speed     # SD1.5 with both compiled rows (6-8 min)
    venv/bin/python tests/bench/gpu.py --only sdxl --set speed --budget 720
                                                                   # SDXL with both compiled rows: minutes of
                                                                   # compiling each, so about 13 minutes
    venv/bin/python tests/bench/gpu.py --quick                     # one timed run per row instead of --repeats
    venv/bin/python tests/bench/gpu.py --only flux                 # FLUX.1-dev: diffusers FluxPipeline, Atelier
                                                                   # bf16, GGUF Q8_0 and Q4_0 (about 4 minutes)

The compiled rows (the fast path and its compiled baseline: a pair, which starts only with time left
for both) come after the baseline, default and memory rows, so the first command leaves them out
unless the budget allows; the times above assume about 2.5 minutes of compiling for an SD1.5 UNet.

FLUX.1-dev's rows (``tests/bench/gpu_flux.py`` says how its model is built and checked) join the
default set on CUDA after the SD baseline, default and memory rows, within the budget. They were
written without a GPU at hand: only their CPU smoke form (``--only flux``, below) has run. The GPU
check to run on a card:

    venv/bin/python tests/bench/gpu.py --only flux --quick --budget 600; echo "exit $?"

Other flags: [--set all|speed|memory] [--steps 20] [--repeats 3] [--budget 400] [--threads 1]
[--real-size] [--break-variant NAME]. Without CUDA the same command runs tiny models at 64x64 on the
CPU as a smoke test (``--real-size`` uses the real configs there: slow, for checking the model
building); those are CPU numbers, not GPU ones, the output says so, and no GPU goal is evaluated.

Random-weight models are built from the shipped real-size configs (``modules/engine/model_configs``;
speed and memory do not depend on the weights' values) and saved as fp16 diffusers folders, so
Atelier loads them through its real path (services, job queue, model manager). Per model (SD1.5 at
512x512, SDXL at 1024x1024, 20 steps, batch 1, Euler, CFG 7) the rows are:

* ``diffusers (eager)``: the pipeline's own ``__call__`` in fp16 with SDPA attention;
* ``diffusers + torch.compile``: the same with diffusers' documented recipe (channels_last UNet,
  ``torch.compile(unet, mode="max-autotune", fullgraph=True)``) and the fast path's kernel switches
  (cuDNN autotuning, TF32), warmed up first: the compile is never timed;
* ``Atelier default``, ``Atelier fast path`` (compiled in its untimed warm-up), ``--medvram``
  (SD1.5; on SDXL it is the same mode as ``--medvram-sdxl``), ``--medvram-sdxl`` (SDXL), ``--lowvram``
  and ``--xformers``;
* checkpoint switches (``checkpoint_cache=1``): cold, to a second checkpoint in freshly copied files
  (new inodes) evicted from the page cache (posix_fadvise DONTNEED, and /proc/sys/vm/drop_caches on
  a CUDA machine when root; the table says which, and how much stayed cached); cached, back to the
  first one, parked in RAM. The manager is told the GPU has no room for two models, as on a user's
  card, so the switch goes through RAM even on an 80 GB one. Both are timed with the GPU synchronised.

Measurements. ``it/s`` counts denoising steps only: (steps - 1) divided by the time from the end of
step 1 to the end of the last step, with the GPU synchronised at just those two moments. ``job s`` is
the whole call (for Atelier: request to saved PNG). Memory, per row, above what the process held
before the row loaded its model: ``peak alloc`` (torch.cuda.max_memory_allocated), ``peak reserved``
(torch.cuda.max_memory_reserved: the blocks the allocator holds), ``context`` (total - free -
reserved from torch.cuda.mem_get_info after the job: the CUDA context, kernel images and other
non-PyTorch memory; it only grows during a run, so later rows carry kernels earlier ones loaded).
Memory goals use ``card = reserved + context``: what a user's card must hold.

Checks. Every timed run's image is checked: finite latents, finite pixels, not flat (pixel std above
a small threshold); and the last one is compared with a reference of the same seed (mean absolute
pixel difference): each Atelier variant with Atelier default (memory modes within fp16 rounding,
other kernels a little looser), compiled diffusers with eager diffusers, and the first image after
switching back with the default's. Atelier and diffusers draw their noise and schedules differently,
so their images are not compared with each other. A row whose images fail a check misses every goal
it carries. ``--break-variant NAME`` poisons that row's latents with NaN: the run must then fail.

Rows are started in order of importance while enough of ``--budget`` (seconds, counted after the
imports) is left for them; the others get a row saying they were skipped, and their goals are "not
evaluated". The process exits non-zero when an evaluated goal is missed, an image check fails or a
row crashes. The last line is ``goals_met <met>/<evaluated>``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
# Before the Hugging Face libraries are imported: they read it once, and nothing here may download.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path[:0] = [str(ROOT), str(HERE)]

import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from gpu_flux import BUILD_NEEDS_S as FLUX_BUILD_NEEDS_S  # noqa: E402
from gpu_flux import FLUX, flux_rows, flux_runner, make_flux_models  # noqa: E402
from gpu_flux import HEADER as FLUX_HEADER  # noqa: E402
from gpu_goals import (  # noqa: E402
    COMPILED,
    DEFAULT,
    EAGER,
    FAST,
    Row,
    Status,
    failures,
    fmt,
    image_counts,
    print_goals,
    print_rows,
    print_switches,
)
from gpu_models import make_checkpoints  # noqa: E402
from gpu_parts import (  # noqa: E402
    CFG,
    CPU_SIZE,
    LABELS,
    OTHER_KERNELS_MAX_DIFF,
    LatentWatch,
    Plan,
    StepClock,
    free_memory,
    kernel_flags_kept,
    time_atelier_steps,
)
from gpu_rows import Bench, Variant, run_row, short_error  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from modules.config import Settings  # noqa: E402
from modules.engine.devices import DevicePolicy, MemoryMode  # noqa: E402
from modules.errors import ConfigError  # noqa: E402
from modules.paths import resolve_paths  # noqa: E402
from modules.services.hashing import HashCache  # noqa: E402

# Rough costs on an H100, so the last row started still ends near the budget.
BUILD_NEEDS_S = {"sd15": 30.0, "sdxl": 60.0,  # build, save, copy and hash a pair of real-size checkpoints
                 FLUX: FLUX_BUILD_NEEDS_S}
COMPILE_NEEDS_S = {"sd15": 150.0, "sdxl": 300.0}  # max-autotune compiling a UNet, then the timed runs
ROW_ORDER = (EAGER, COMPILED, DEFAULT, FAST, "--medvram", "--medvram-sdxl", "--lowvram", "--xformers",
             *(v.name for v in flux_rows(False)))


# --- what a run measures -----------------------------------------------------------------------------


def _base_rows(xl: bool, switches: bool) -> list[Variant]:
    return [Variant(EAGER, diffusers=True, needs_s=25.0 if xl else 10.0),
            Variant(DEFAULT, switches=switches, needs_s=(60.0 if xl else 20.0) if switches else (30.0 if xl else 10.0))]


def _memory_rows(arch: str, xl: bool) -> list[Variant]:
    offload = "it moves weights between a CUDA GPU and RAM"
    # --medvram-sdxl is full for SD1.5 (the default again); for SDXL it is --medvram itself.
    medvram = (Variant("--medvram-sdxl", policy=DevicePolicy(memory=MemoryMode.MEDVRAM_SDXL), needs_cuda=offload,
                       needs_s=40.0, reference=DEFAULT) if arch == "sdxl" else
               Variant("--medvram", policy=DevicePolicy(memory=MemoryMode.MEDVRAM), needs_cuda=offload, needs_s=15.0,
                       reference=DEFAULT))
    # No warm-up for lowvram: every step streams all weights again, so a first run costs what the others do.
    lowvram = Variant("--lowvram", policy=DevicePolicy(memory=MemoryMode.LOWVRAM), needs_cuda=offload, warmup=0,
                      needs_s=90.0 if xl else 35.0, reference=DEFAULT)
    return [lowvram, medvram]


def _compiled_rows(arch: str, cuda: bool) -> list[Variant]:
    """The compiled baseline and the fast path, a pair: the first starts only with time for both."""
    needs = COMPILE_NEEDS_S[arch] if cuda else 0.0
    return [Variant(COMPILED, diffusers=True, compiled=True, needs_s=2 * needs, reference=EAGER,
                    needs_cuda="the compiled baseline is for the GPU fast path; Atelier compiles on CUDA only",
                    max_diff=OTHER_KERNELS_MAX_DIFF),
            Variant(FAST, compiled=cuda, settings=Settings(fast_path=True), needs_s=needs, follows=COMPILED,
                    reference=DEFAULT, max_diff=OTHER_KERNELS_MAX_DIFF)]


def _xformers_row(xl: bool) -> Variant:
    return Variant("--xformers", policy=DevicePolicy(xformers=True), needs_cuda="xformers kernels are CUDA-only",
                   needs_s=30.0 if xl else 10.0, reference=DEFAULT, max_diff=OTHER_KERNELS_MAX_DIFF)


def schedule(archs: list[str], cuda: bool, row_set: str) -> list[tuple[str, Variant]]:
    """Rows in order of importance, so a run cut short by the budget loses the least: every SD model's
    baselines and default (switches included) and memory modes first, then FLUX.1-dev's four rows
    (in every ``--set``), then the compiled pairs (SD1.5, then SDXL: minutes of compiling each), and
    xformers last."""
    speed, memory = row_set in ("all", "speed"), row_set in ("all", "memory")
    tasks: list[tuple[str, Variant]] = []
    flux = FLUX in archs
    archs = [arch for arch in archs if arch != FLUX]
    for arch in archs:
        xl = cuda and arch == "sdxl"
        tasks += [(arch, v) for v in _base_rows(xl, switches=memory)]
        tasks += [(arch, v) for v in _memory_rows(arch, xl)] if memory else []
    tasks += [(FLUX, v) for v in flux_rows(cuda)] if flux else []
    if speed:
        tasks += [(arch, v) for arch in archs for v in _compiled_rows(arch, cuda)]
        tasks += [(arch, _xformers_row(cuda and arch == "sdxl")) for arch in archs]
    return tasks


# --- the run ---------------------------------------------------------------------------------------------


def prepare_models(bench: Bench, arch: str) -> bool:
    """Build the pair of checkpoints for ``arch`` once; False (and a failed row) if that fails."""
    started = time.perf_counter()
    try:
        if arch == FLUX:  # the single file, the GGUF files and the diffusers folder (tests/bench/gpu_flux.py)
            models, paths, checkpoints = make_flux_models(bench.plan, bench.work_dir)
        else:
            models = make_checkpoints(arch, bench.plan, bench.work_dir / "models")
            paths = resolve_paths(data_dir=bench.work_dir / f"data-{arch}", ckpt_dir=models[0].parent)
            checkpoints = list(models)
        for path in checkpoints:  # hashed once here, as on any start after the first: "cold" is then pure loading
            HashCache(paths.hash_cache).sha256(path)
    except Exception as exc:  # nothing to measure for this model
        bench.broken.add(arch)
        bench.rows.append(Row(LABELS[arch], "(building models)", Status.FAILED, note=short_error(exc)))
        print(f"{LABELS[arch]}: building the models failed: {short_error(exc)}", flush=True)
        return False
    bench.models[arch], bench.paths[arch] = models, paths
    print(f"{LABELS[arch]}: {len(checkpoints)} checkpoints written and hashed in {time.perf_counter() - started:.1f} s",
          flush=True)
    return True


def _skip(bench: Bench, arch: str, variant: Variant, why: str) -> None:
    bench.rows.append(Row(LABELS[arch], variant.name, Status.SKIPPED, note=why))
    print(f"  {LABELS[arch]} {variant.name}: skipped: {why}", flush=True)


def attempt(bench: Bench, arch: str, variant: Variant) -> None:
    """Run one row unless it cannot run here or the budget is spent; a crash becomes a failed row."""
    plan = bench.plan
    if variant.needs_cuda and not plan.cuda:
        return _skip(bench, arch, variant, f"needs CUDA ({variant.needs_cuda})")
    if arch in bench.broken:
        return _skip(bench, arch, variant, "the models could not be built")
    building = BUILD_NEEDS_S[arch] if arch not in bench.models and plan.cuda else 0.0
    committed = variant.follows and any(r.model == LABELS[arch] and r.variant == variant.follows and
                                        r.status is not Status.SKIPPED for r in bench.rows)
    needs = 0.0 if committed else variant.needs_s + building  # the row it follows kept time for it
    if plan.left_s() < max(needs, 1.0):
        return _skip(bench, arch, variant, f"{max(plan.left_s(), 0):.0f} s of the --budget left, it needs about "
                                           f"{needs:.0f} s")
    if arch not in bench.models and not prepare_models(bench, arch):
        return _skip(bench, arch, variant, "the models could not be built")
    print(f"  {LABELS[arch]} {variant.name} ...", flush=True)
    try:
        with kernel_flags_kept():
            row = run_row(variant, arch, bench, flux_runner(variant) if arch == FLUX else None)
    except ConfigError as exc:  # a variant this machine cannot run (xformers not installed)
        row = Row(LABELS[arch], variant.name, Status.SKIPPED, note=f"cannot run here: {short_error(exc)}")
    except Exception as exc:  # out of memory, a load error, a compile error: this row only
        row = Row(LABELS[arch], variant.name, Status.FAILED, note=short_error(exc))
    finally:
        if variant.compiled:
            torch._dynamo.reset()  # compiled graphs and CUDA graph pools go, so later rows start clean
        free_memory()
    bench.rows.append(row)
    memory = f", card {row.memory.card:.2f} GiB" if row.memory else ""
    image = f"; image {row.image.text}" if row.image else ""
    print(f"    {row.status.value}: {fmt(row.its, '.2f')} it/s, job {fmt(row.job_s, '.2f')} s{memory}{image}; "
          f"{row.note}", flush=True)


# --- the report -------------------------------------------------------------------------------------------


def cpu_banner(plan: Plan, threads: int) -> str:
    models = "real-size models" if plan.real_size else "tiny models"
    return (f"CPU SMOKE TEST (no CUDA device): {models} at {CPU_SIZE}x{CPU_SIZE}, {threads} thread(s). "
            "These are CPU numbers, NOT GPU numbers; no GPU goal is evaluated, only the image checks count.")


def print_header(plan: Plan, args: argparse.Namespace) -> None:
    if plan.cuda:
        print(f"GPU {torch.cuda.get_device_name()}; torch {torch.__version__}; SD1.5 512x512, SDXL 1024x1024, "
              f"{plan.steps} steps, batch 1, Euler, CFG {CFG}; {plan.repeats} timed run(s) after the warm-up; "
              f"budget {plan.budget_s:.0f} s; rows: {args.set}")
        print(f"{FLUX_HEADER}, when FLUX.1 runs")
    else:
        print(cpu_banner(plan, args.threads))
        print(f"torch {torch.__version__}; {plan.steps} steps, batch 1, Euler, CFG {CFG}; {plan.repeats} timed run(s)")
    print("it/s: denoising steps only; job s: the whole call; card = peak reserved + context (non-PyTorch "
          "memory): what a user's card must hold.\n", flush=True)


def report(bench: Bench, archs: list[str], args: argparse.Namespace) -> int:
    """The tables, the goals and the verdict; the exit status (0 only when nothing failed)."""
    plan = bench.plan
    order = {name: index for index, name in enumerate(ROW_ORDER)}
    rows = sorted(bench.rows, key=lambda r: (list(LABELS.values()).index(r.model), order.get(r.variant, -1)))
    print_rows(rows, plan.cuda)
    print_switches(bench.switches)
    met, evaluated = print_goals(rows, bench.switches, plan.cuda, archs)
    problems = failures(rows, bench.switches)
    passed, failed = image_counts(rows, bench.switches)
    if passed + failed == 0:
        problems.append("no image was checked: nothing ran")
    if args.break_variant and not any(r.variant == args.break_variant and r.image for r in rows):
        problems.append(f"--break-variant {args.break_variant!r}: no such row ran, so nothing was broken")
    print(f"\nimage checks: {passed} passed, {failed} failed")
    for problem in problems:
        print(f"FAILED: {problem}")
    print(f"finished in {time.perf_counter() - plan.started:.0f} s")
    if not plan.cuda:
        print(cpu_banner(plan, args.threads))
    print(f"goals_met {met}/{evaluated}" + ("" if plan.cuda else " (CPU smoke test: GPU goals not evaluated)"))
    return 0 if met == evaluated and not problems else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one timed run per row instead of --repeats")
    parser.add_argument("--only", choices=["sd15", "sdxl", FLUX], help="one model family only")
    parser.add_argument("--set", choices=["all", "speed", "memory"], default="all",
                        help="speed: baselines, default, compiled rows, xformers; memory: baselines, default, "
                             "switches, memory modes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row, after the warm-up")
    parser.add_argument("--budget", type=float, default=400.0,
                        help="seconds after which no new row starts (default 400: a run stays under 8 min)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads without CUDA (default 1: on a small shared machine, less noise)")
    parser.add_argument("--real-size", action="store_true",
                        help="without CUDA, use the real-size configs instead of tiny models (slow; checks the build)")
    parser.add_argument("--break-variant", default="", metavar="NAME", choices=("", *ROW_ORDER),
                        help="poison that row's latents with NaN (e.g. 'Atelier default', or --break-variant=--lowvram): "
                             "the run must then fail")
    args = parser.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        parser.error("--steps must be at least 2 and --repeats at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
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
    watch = LatentWatch()
    watch.install()
    print_header(plan, args)
    # FLUX.1-dev joins the default set on CUDA only: without one, its smoke form is --only flux.
    archs = [args.only] if args.only else ["sd15", "sdxl", *([FLUX] if cuda else [])]
    with tempfile.TemporaryDirectory(prefix="atelier-bench-") as tmp:
        bench = Bench(plan, clock, watch, Path(tmp), args.break_variant)
        for arch, variant in schedule(archs, cuda, args.set):
            attempt(bench, arch, variant)
        free_memory()
    return report(bench, archs, args)


if __name__ == "__main__":
    sys.exit(main())
