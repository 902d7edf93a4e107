"""What the GPU benchmark (``tests/bench/gpu.py``) found: its rows, the goals they are held to, the
tables it prints and the verdict it exits with.

A goal is *evaluated* only on CUDA and only when its row (and the baseline a ratio needs) ran. A row
that ran but crashed, or whose images failed a check, MISSES every goal it carries: a NaN or black
variant can never meet one. Any failed image check or crashed row makes the run exit non-zero, even
when it carries no goal.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gpu_parts import LABELS, ImageCheck, MemoryReading

EAGER = "diffusers (eager)"
COMPILED = "diffusers + torch.compile"
DEFAULT = "Atelier default"
FAST = "Atelier fast path"
FLUX_DIFFUSERS = "diffusers FluxPipeline (bf16)"
FLUX_BF16 = "Atelier bf16"
FLUX_Q8 = "Atelier GGUF Q8_0"
FLUX_Q4 = "Atelier GGUF Q4_0"


class Status(enum.Enum):
    MEASURED = "measured"
    SKIPPED = "skipped"  # the budget, no CUDA, a kernel package not installed: not this code's fault
    FAILED = "failed"  # it crashed


@dataclass(frozen=True)
class Row:
    model: str
    variant: str
    status: Status
    its: float | None = None  # denoising steps per second, median of the timed runs
    job_s: float | None = None  # whole job, median
    memory: MemoryReading | None = None  # highest of the timed runs
    image: ImageCheck | None = None
    note: str = ""

    @property
    def image_failed(self) -> bool:
        return self.image is not None and not self.image.ok


@dataclass(frozen=True)
class SwitchTimes:
    model: str
    status: Status
    cold_s: float | None = None  # to the second checkpoint, read from disk with the page cache dropped
    cached_s: float | None = None  # back to the first, from the RAM cache (the GPU synchronised)
    reported: str = ""  # the model manager's own seconds
    page_cache: str = ""  # how the second checkpoint was evicted before the cold switch
    peak_gib: float | None = None  # allocated during the cold switch, above the baseline
    model_gib: float | None = None  # one model's weights
    image: ImageCheck | None = None  # the first job after switching back
    note: str = ""

    @property
    def image_failed(self) -> bool:
        return self.image is not None and not self.image.ok


class Kind(enum.Enum):
    SPEED = "speed"  # it/s against a baseline row
    CARD = "card"  # GiB a user's card must hold: peak reserved + context
    CACHED = "cached"  # seconds to switch back to a checkpoint in the RAM cache
    CARD_BELOW = "card below"  # card memory under a baseline row's (ratio below the limit)


@dataclass(frozen=True)
class Goal:
    label: str
    arch: str
    kind: Kind
    limit: float
    variant: str = ""  # the row it reads (none for a switch goal)
    baseline: str = ""  # the row a speed ratio divides by


GOALS = (
    Goal("SD1.5 default >= 1.0x diffusers (eager)", "sd15", Kind.SPEED, 1.0, DEFAULT, EAGER),
    Goal("SDXL default >= 1.0x diffusers (eager)", "sdxl", Kind.SPEED, 1.0, DEFAULT, EAGER),
    Goal("SD1.5 fast path >= 1.3x diffusers (eager)", "sd15", Kind.SPEED, 1.3, FAST, EAGER),
    Goal("SD1.5 fast path >= 1.0x diffusers + torch.compile", "sd15", Kind.SPEED, 1.0, FAST, COMPILED),
    Goal("SDXL fast path >= 1.3x diffusers (eager)", "sdxl", Kind.SPEED, 1.3, FAST, EAGER),
    Goal("SDXL fast path >= 1.0x diffusers + torch.compile", "sdxl", Kind.SPEED, 1.0, FAST, COMPILED),
    Goal("SD1.5 default card memory <= 2.6 GiB", "sd15", Kind.CARD, 2.6, DEFAULT),
    Goal("SD1.5 --lowvram card memory <= 1.0 GiB", "sd15", Kind.CARD, 1.0, "--lowvram"),
    Goal("SDXL --lowvram card memory <= 4.0 GiB", "sdxl", Kind.CARD, 4.0, "--lowvram"),
    # Model-level offload keeps the whole UNet on the card while it runs (SDXL's is 4.78 GiB in fp16):
    # no --medvram goal below that can be met, so none is set.
    Goal("SDXL --medvram-sdxl card memory <= 6.5 GiB", "sdxl", Kind.CARD, 6.5, "--medvram-sdxl"),
    Goal("SD1.5 cached checkpoint switch <= 0.5 s", "sd15", Kind.CACHED, 0.5),
    Goal("SDXL cached checkpoint switch <= 0.5 s", "sdxl", Kind.CACHED, 0.5),
    Goal("FLUX.1-dev Atelier bf16 >= 0.95x diffusers FluxPipeline (bf16)", "flux", Kind.SPEED, 0.95, FLUX_BF16,
         FLUX_DIFFUSERS),
    Goal("FLUX.1-dev GGUF Q8_0 card memory below Atelier bf16's", "flux", Kind.CARD_BELOW, 1.0, FLUX_Q8, FLUX_BF16),
)


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else format(value, spec) + suffix


def find(rows: list[Row], model: str, variant: str) -> Row | None:
    return next((r for r in rows if r.model == model and r.variant == variant), None)


def ratio(rows: list[Row], row: Row, baseline: str) -> float | None:
    base = find(rows, row.model, baseline)
    if base is None or base.its is None or row.its is None or base.image_failed:
        return None
    return row.its / base.its


# --- verdicts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    evaluated: bool
    met: bool
    text: str


def _not_evaluated(why: str) -> Verdict:
    return Verdict(False, False, f"not evaluated ({why})")


def _switch_verdict(goal: Goal, switches: list[SwitchTimes]) -> Verdict:
    times = next((s for s in switches if s.model == LABELS[goal.arch]), None)
    if times is None or times.status is Status.SKIPPED:
        return _not_evaluated("no switch was measured" + (f": {times.note}" if times else ""))
    if times.status is Status.FAILED or times.cached_s is None:
        return Verdict(True, False, f"MISSED (the switch failed: {times.note})")
    if times.image_failed:
        return Verdict(True, False, f"{times.cached_s:.2f} s, but MISSED: the image after it failed its check")
    ok = times.cached_s <= goal.limit
    return Verdict(True, ok, f"{times.cached_s:.2f} s — {'met' if ok else 'MISSED'}")


def _card_below_verdict(goal: Goal, row: Row, base: Row | None) -> Verdict:
    """``row``'s card memory as a fraction of ``base``'s: met strictly below ``goal.limit``."""
    if base is None or base.status is not Status.MEASURED or base.memory is None:
        return _not_evaluated(f"no {goal.baseline} memory reading" + (f": {base.note}" if base else ""))
    if base.image_failed:
        return _not_evaluated(f"the {goal.baseline} images failed their check")
    if row.memory is None:
        return _not_evaluated("no memory reading")
    value, limit = row.memory.card, base.memory.card * goal.limit
    ok = value < limit
    return Verdict(True, ok, f"{value:.2f} GiB vs {base.memory.card:.2f} GiB ({value / base.memory.card:.2f}x) — "
                             f"{'met' if ok else 'MISSED'}")


def _row_verdict(goal: Goal, rows: list[Row]) -> Verdict:
    row = find(rows, LABELS[goal.arch], goal.variant)
    if row is None or row.status is Status.SKIPPED:
        return _not_evaluated(row.note if row else "not in this run")
    if row.status is Status.FAILED:
        return Verdict(True, False, f"MISSED ({goal.variant} failed: {row.note})")
    if row.image_failed:
        return Verdict(True, False, f"MISSED ({goal.variant}'s images failed their check)")
    if goal.kind is Kind.CARD:
        if row.memory is None:
            return _not_evaluated("no memory reading")
        value = row.memory.card
        ok = value <= goal.limit
        return Verdict(True, ok, f"{value:.2f} GiB (reserved {row.memory.peak_reserved:.2f} + context "
                                 f"{row.memory.context:.2f}) — {'met' if ok else 'MISSED'}")
    if goal.kind is Kind.CARD_BELOW:
        return _card_below_verdict(goal, row, find(rows, row.model, goal.baseline))
    base = find(rows, row.model, goal.baseline)
    if base is None or base.status is not Status.MEASURED or base.its is None:
        return _not_evaluated(f"no {goal.baseline} row" + (f": {base.note}" if base else ""))
    if base.image_failed:
        return _not_evaluated(f"the {goal.baseline} images failed their check")
    value = ratio(rows, row, goal.baseline)
    if value is None:
        return _not_evaluated("no step timing")
    ok = value >= goal.limit
    return Verdict(True, ok, f"{value:.2f}x — {'met' if ok else 'MISSED'}")


def verdict(goal: Goal, rows: list[Row], switches: list[SwitchTimes], cuda: bool, archs: list[str]) -> Verdict:
    if goal.arch not in archs:
        return _not_evaluated("model not in this run")
    if not cuda:
        return _not_evaluated("no CUDA: CPU numbers are not the GPU goals")
    return _switch_verdict(goal, switches) if goal.kind is Kind.CACHED else _row_verdict(goal, rows)


# --- printing --------------------------------------------------------------------------------------


def print_rows(rows: list[Row], cuda: bool) -> None:
    gib = "GiB" if cuda else "GiB (no CUDA)"
    print(f"\n| model | variant | it/s | vs eager | vs compiled | peak alloc {gib} | peak reserved | context | "
          "card = reserved + context | job s | image | notes |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for row in rows:
        memory = row.memory
        cells = [fmt(memory.peak_allocated, ".2f"), fmt(memory.peak_reserved, ".2f"), fmt(memory.context, ".2f"),
                 fmt(memory.card, ".2f")] if memory else ["—"] * 4
        status = "" if row.status is Status.MEASURED else f"{row.status.value}: "
        eager = ratio(rows, row, EAGER) or ratio(rows, row, FLUX_DIFFUSERS)  # FLUX.1's baseline is eager too
        print(f"| {row.model} | {row.variant} | {fmt(row.its, '.2f')} | {fmt(eager, '.2f', 'x')} | "
              f"{fmt(ratio(rows, row, COMPILED), '.2f', 'x')} | {' | '.join(cells)} | {fmt(row.job_s, '.2f')} | "
              f"{row.image.text if row.image else '—'} | {status}{row.note} |")


def print_switches(switches: list[SwitchTimes]) -> None:
    print("\n| model | cold switch s | cached switch s (from RAM) | manager's own s | page cache before cold | "
          "peak alloc during cold switch GiB (one model) | image after switching back | notes |")
    print("|---|---:|---:|---|---|---:|---|---|")
    for s in switches:
        peak = f"{fmt(s.peak_gib, '.2f')} ({fmt(s.model_gib, '.2f')})"
        status = "" if s.status is Status.MEASURED else f"{s.status.value}: "
        print(f"| {s.model} | {fmt(s.cold_s, '.2f')} | {fmt(s.cached_s, '.2f')} | {s.reported} | {s.page_cache} | "
              f"{peak} | {s.image.text if s.image else '—'} | {status}{s.note} |")
    if not switches:
        print("| — | — | — | — | — | — | — | not measured in this run |")


def print_goals(rows: list[Row], switches: list[SwitchTimes], cuda: bool, archs: list[str]) -> tuple[int, int]:
    """One line per goal; returns (met, evaluated)."""
    met = evaluated = 0
    print()
    for goal in GOALS:
        found = verdict(goal, rows, switches, cuda, archs)
        evaluated += found.evaluated
        met += found.met
        print(f"goal {goal.label}: {found.text}")
    return met, evaluated


def failures(rows: list[Row], switches: list[SwitchTimes]) -> list[str]:
    """Every image check that failed and every row that crashed: each one fails the run."""
    def image(check: ImageCheck | None) -> str:
        return check.text.removeprefix("FAIL: ") if check else ""

    found = [f"{r.model} {r.variant}: image check: {image(r.image)}" for r in rows if r.image_failed]
    found += [f"{r.model} {r.variant}: crashed: {r.note}" for r in rows if r.status is Status.FAILED]
    found += [f"{s.model} switch: image check after switching back: {image(s.image)}" for s in switches
              if s.image_failed]
    found += [f"{s.model} switch: {s.note}" for s in switches if s.status is Status.FAILED]
    return found


def image_counts(rows: list[Row], switches: list[SwitchTimes]) -> tuple[int, int]:
    """(passed, failed) image checks."""
    checks = [r.image for r in rows if r.image] + [s.image for s in switches if s.image]
    return sum(c.ok for c in checks), sum(not c.ok for c in checks)
