"""Choosing a job's memory mode from its plan and the device's memory, or refusing the job.

Automatic: the fastest mode whose predicted peak fits with a margin (full, then medvram, then
lowvram). A mode the user forced (``--medvram``, ``--lowvram``, ``--medvram-sdxl``) is kept, and
the job refused only when the prediction says it cannot fit. Off CUDA nothing is chosen or refused:
the CPU and Apple's MPS share system memory with everything else, and the plan is only reported.
A refusal names what to change: the batch size that would fit, a smaller size, hires fix, a mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modules.engine.devices import MemoryMode
from modules.engine.loaded_model import LoadedModel
from modules.engine.memory import free_device_bytes, on_device_bytes
from modules.engine.vram_plan import JobMemoryPlan, MemoryPlan, Phase, size_text
from modules.errors import NotEnoughMemoryError

# An automatic choice leaves a tenth of the budget free: the caching allocator's fragmentation, and
# what the estimate does not see (another process starting on the card, a kernel's workspace).
AUTO_MARGIN = 0.9
_HIRES_PHASES = frozenset({Phase.HIRES_ENCODE, Phase.HIRES_SAMPLING, Phase.HIRES_DECODE})
_SIZE_STEP = 64


@dataclass(frozen=True)
class ModeChoice:
    """The mode a job runs in, its plan there, and a sentence for the log."""

    mode: MemoryMode
    plan: MemoryPlan
    reason: str
    budget_bytes: int | None  # None: not on CUDA, nothing was checked

    @property
    def fits(self) -> bool | None:
        return None if self.budget_bytes is None else self.plan.peak_bytes <= self.budget_bytes


def budget_bytes(model: LoadedModel) -> int | None:
    """What torch's allocator can give a job on ``model``'s device now: free memory, the blocks it
    caches, and what ``model`` already holds there; None off CUDA."""
    free = free_device_bytes(model.execution_device)
    return None if free is None else free + on_device_bytes(model)


def choose_mode(plan: JobMemoryPlan, budget: int | None, forced: MemoryMode | None) -> ModeChoice:
    """The memory mode for the job ``plan`` describes, within ``budget`` bytes of the allocator
    (:func:`budget_bytes`; None off CUDA), keeping ``forced`` if the user gave a mode. Raises
    :class:`NotEnoughMemoryError` naming what to change when the job cannot fit."""
    # 1. Off CUDA: report only.
    if plan.device_type != "cuda" or budget is None:
        chosen = plan.for_mode(forced or MemoryMode.FULL)
        return ModeChoice(chosen.mode, chosen, f"{plan.device_type}: models share system memory; "
                                               f"about {size_text(chosen.device_bytes)} at the peak", None)
    # 2. The user's mode, if it fits at all.
    if forced is not None:
        chosen = plan.for_mode(forced)
        if chosen.peak_bytes <= budget:
            return ModeChoice(chosen.mode, chosen, f"--{forced.value} was given; {_needs(chosen, budget)}", budget)
        raise _refusal(plan, budget, chosen, forced)
    # 3. The fastest mode that fits with a margin; lowvram even without one, as the last resort.
    for candidate in plan.plans:
        if candidate.peak_bytes <= budget * AUTO_MARGIN:
            return ModeChoice(candidate.mode, candidate, f"{candidate.mode.value} chosen; {_needs(candidate, budget)}",
                              budget)
    lowest = plan.for_mode(MemoryMode.LOWVRAM)
    if lowest.peak_bytes <= budget:
        return ModeChoice(lowest.mode, lowest, f"lowvram chosen, with little to spare; {_needs(lowest, budget)}",
                          budget)
    raise _refusal(plan, budget, lowest, None)


def _needs(plan: MemoryPlan, budget: int) -> str:
    peak = plan.peak
    return (f"predicted peak {size_text(plan.peak_bytes)} (at the {peak.phase.value}: weights "
            f"{size_text(peak.weights_bytes)}, activations {size_text(peak.activation_bytes)}), "
            f"{size_text(budget)} available")


def _largest_batch(plan: MemoryPlan, batch: int, budget: int) -> int:
    """The largest batch size that would fit ``budget`` in ``plan``'s mode (0: not even one)."""
    largest = batch
    for cost in plan.phases:
        per_image = cost.activation_bytes // batch if cost.grows_with_batch else 0
        fixed = cost.total - per_image * batch
        if per_image:
            largest = min(largest, max(0, (budget - fixed) // per_image))
        elif fixed > budget:
            return 0
    return largest


def _smaller_size(plan: MemoryPlan, budget: int) -> tuple[int, int] | None:
    """A size about the peak phase's aspect that would bring its activations within ``budget``
    (activations grow with the pixel count); None when the weights alone do not fit."""
    peak = plan.peak
    room = budget - peak.weights_bytes
    if room <= 0 or peak.activation_bytes <= 0:
        return None
    scale = math.sqrt(room / peak.activation_bytes)
    width, height = (max(_SIZE_STEP, int(side * scale) // _SIZE_STEP * _SIZE_STEP) for side in peak.size)
    return (width, height) if (width, height) != peak.size else None


def _shape_advice(plan: JobMemoryPlan, basis: MemoryPlan, budget: int) -> list[str]:
    """Smaller batch, size or hires fix that would fit ``budget`` in ``basis``'s mode."""
    advice = []
    largest = _largest_batch(basis, plan.shape.batch, budget)
    if 0 < largest < plan.shape.batch:
        advice.append(f"a batch size of {largest} or less")
    size = _smaller_size(basis, budget)
    hires_peak = basis.peak.phase in _HIRES_PHASES
    first = (plan.shape.width, plan.shape.height)
    if size is not None and not (hires_peak and size < first):  # hires fix below the first pass is no fix
        advice.append(f"{'a hires fix size' if hires_peak else 'a size'} of about {size[0]}x{size[1]} or less")
    if plan.shape.hires is not None and all(c.total <= budget for c in basis.phases if c.phase not in _HIRES_PHASES):
        advice.append("turning hires fix off")
    return advice


def _advice(plan: JobMemoryPlan, budget: int, considered: MemoryPlan, forced: MemoryMode | None) -> list[str]:
    """What would make the job fit, each as a short phrase."""
    if forced is None:  # the automatic choice has tried every mode already
        return _shape_advice(plan, considered, budget)
    fitting = [p for p in plan.plans if p.peak_bytes <= budget]
    if fitting:
        return [f"restarting with --{fitting[0].mode.value} (about {size_text(fitting[0].peak_bytes)}), or without a "
                "memory flag so that Atelier picks the mode for each job", *_shape_advice(plan, considered, budget)]
    lowest = plan.for_mode(MemoryMode.LOWVRAM)
    advice = _shape_advice(plan, considered, budget)
    if advice or lowest is considered:
        return advice
    # The forced mode's weights alone may not fit: advise for lowvram instead.
    lighter = _shape_advice(plan, lowest, budget)
    return [f"restarting with --lowvram and {' or '.join(lighter)}"] if lighter else []


def _refusal(plan: JobMemoryPlan, budget: int, considered: MemoryPlan, forced: MemoryMode | None
             ) -> NotEnoughMemoryError:
    peak = considered.peak
    advice = _advice(plan, budget, considered, forced)
    message = (f"Not enough GPU memory for this job: it needs about {size_text(considered.peak_bytes)} at its peak "
               f"(the {peak.phase.value} at {peak.size[0]}x{peak.size[1]}, {considered.mode.value}), and "
               f"{size_text(budget)} is available.")
    if advice:
        message += " Try " + ", or ".join(advice) + "."
    else:
        message += " The model's weights alone do not fit on this GPU."
    return NotEnoughMemoryError(message, needed_bytes=considered.peak_bytes, available_bytes=budget,
                                suggestions=tuple(advice))

