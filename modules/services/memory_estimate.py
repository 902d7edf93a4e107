"""A request's predicted peak device memory, for the text beside the Generate button and for the
worker that picks each job's memory mode (:mod:`modules.engine.vram_plan`, ``vram_choice``).

Both read the same numbers: :func:`plan_request` turns a request into the planner's job shape
(one batch; hires fix's second pass and what happens between the passes; an init image), and
:func:`choose_for_request` picks the mode or raises :class:`NotEnoughMemoryError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules import prompt_parser
from modules.engine.devices import DeviceInfo, MemoryMode
from modules.engine.loader import LoadedModel
from modules.engine.model_detect import ModelArch
from modules.engine.placement import effective_mode
from modules.engine.token_count import count_tokens
from modules.engine.vram_choice import ModeChoice, budget_bytes, choose_mode
from modules.engine.vram_plan import (
    CUDA_OVERHEAD_BYTES,
    HiresShape,
    JobMemoryPlan,
    JobShape,
    plan_for,
    profile_of,
    size_text,
)
from modules.errors import NotEnoughMemoryError
from modules.params import GenerationRequest
from modules.upscalers import UpscalerKind, find_upscaler

NO_MODEL = "Estimated peak memory: load a model to estimate"
_TOKENS_PER_CHUNK = 75


@dataclass(frozen=True)
class MemoryEstimate:
    """What the UI shows: one line, and whether the job fits (None: not checked, off CUDA)."""

    summary: str
    fits: bool | None = None
    mode: MemoryMode | None = None
    device_bytes: int | None = None  # the predicted peak as the card would show it in use


def _hires_shape(request: GenerationRequest) -> HiresShape | None:
    hires = request.hires
    if hires is None or request.is_img2img:  # hires fix is txt2img's
        return None
    # A name that is not built in is a model upscaler (the request was validated): it decodes and
    # encodes again, as the image resamplers do.
    upscaler = find_upscaler(hires.upscaler)
    return HiresShape(final_size=hires.final_size(request.width, request.height),
                      upscale_size=hires.upscale_size(request.width, request.height),
                      image_upscaler=upscaler is None or upscaler.kind is not UpscalerKind.LATENT,
                      save_first_pass=bool(hires.save_first_pass))


def _guidance_groups(request: GenerationRequest) -> int:
    """Images per UNet call per picture: each AND part of the prompt, and the negative unless
    guidance is off (CFG 1 with one part)."""
    parts = len(prompt_parser.split_and(request.prompt or ""))
    return parts if parts == 1 and request.cfg_scale == 1.0 else parts + 1


def _prompt_chunks(request: GenerationRequest) -> int:
    texts = (request.prompt or "", request.negative_prompt or "")
    return max(count_tokens(text, max(1, request.steps)).limit for text in texts) // _TOKENS_PER_CHUNK


def job_shape(request: GenerationRequest, arch: ModelArch, init_image: bool = False) -> JobShape:
    """The planner's view of one batch of ``request`` on a model of ``arch``; ``init_image``: the
    job will have one although this request does not carry it (the UI leaves images out)."""
    encodes = init_image or request.is_img2img or arch is ModelArch.SD1_INPAINT  # inpainting models always encode
    return JobShape(width=request.width, height=request.height, batch=request.batch_size,
                    hires=_hires_shape(request), init_image=encodes, guidance_groups=_guidance_groups(request),
                    prompt_chunks=max(1, _prompt_chunks(request)))


def plan_request(model: LoadedModel, request: GenerationRequest, init_image: bool = False) -> JobMemoryPlan:
    """The request's predicted peak memory on ``model``, in every memory mode."""
    return plan_for(profile_of(model), job_shape(request, model.arch, init_image))


def forced_mode(device: DeviceInfo, arch: ModelArch) -> MemoryMode | None:
    """The mode jobs must keep: the one the user's flag gives for this architecture; None (a mode
    chosen from the card's size, or none given) leaves the choice to the planner."""
    return effective_mode(device, arch) if device.memory_forced else None


def choose_for_request(model: LoadedModel, request: GenerationRequest, forced: MemoryMode | None) -> ModeChoice:
    """The memory mode for ``request`` on ``model`` now; NotEnoughMemoryError when it cannot fit."""
    return choose_mode(plan_request(model, request), budget_bytes(model), forced)


def estimate(model: LoadedModel | None, request: GenerationRequest, init_image: bool = False) -> MemoryEstimate:
    """The line beside the Generate button: the predicted peak, the mode, and whether it fits."""
    if model is None:
        return MemoryEstimate(NO_MODEL)
    plan = plan_request(model, request, init_image)
    budget = budget_bytes(model)
    try:
        choice = choose_mode(plan, budget, forced_mode(model.device, model.arch))
    except NotEnoughMemoryError as exc:
        return MemoryEstimate(f"Estimated peak memory: does not fit. {exc}", fits=False)
    shown = choice.plan.device_bytes
    head = f"Estimated peak memory: {size_text(shown)} ({choice.mode.value})"
    if budget is None:
        where = "system memory" if plan.device_type == "cpu" else f"{plan.device_type} shared memory"
        return MemoryEstimate(f"{head}, in {where}", mode=choice.mode, device_bytes=shown)
    # The CUDA context is in the peak shown and already spent from the free memory: shown on both sides.
    return MemoryEstimate(f"{head}: fits in {size_text(budget + CUDA_OVERHEAD_BYTES)} available", fits=True,
                          mode=choice.mode, device_bytes=shown)
