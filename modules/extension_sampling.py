"""Extension API v2's job-time contexts: per-image prompts, per-job model patches, the model call,
the guidance moments, infotext fields, failure policy and REST routes. Extensions import these
names from :mod:`modules.extension_api`, which re-exports them.

Where each runs: PLAN_IMAGES on the front (before the job is queued, so every image's prompt and
seed is part of the job); JOB_START, MODEL_CALL, DENOISED, AFTER_CFG and INFOTEXT where the
renderer runs (the local worker or a Ray worker, which loads the same extensions from its own
folders). Tensors are torch tensors on the job's device; a handler must not keep them past the call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modules.extension_host_api import Host
from modules.params import GenerationRequest, ImagePrompt

# torch's types, named without importing torch here (the API module loads without it): a Tensor is a
# Tensor, a Module a Module, and so on.
Tensor = Any
Module = Any
Device = Any
DType = Any


class OnError(enum.Enum):
    """What a v2 handler's exception does to the job it ran for (never to the extension itself)."""

    FAIL_JOB = "fail_job"  # the job fails with an error naming the extension and the hook (the default)
    SKIP = "skip"  # the handler's effect is dropped for that job, which goes on with a warning naming it


@dataclass(frozen=True)
class JobInfo:
    """The job a hook runs for: its id, the user it belongs to (None: no login), its request."""

    id: str
    user: str | None
    request: GenerationRequest


@dataclass(frozen=True)
class PlanImages:
    """Front, once per job after BEFORE_GENERATE (seeds resolved). Return one :class:`ImagePrompt`
    per image of the job (``request.images_per_job`` of them; None fields keep the job's), or None.
    A later handler sees the earlier ones' plan in ``request.per_image``."""

    request: GenerationRequest
    params: Mapping[str, Any]
    host: Host
    user: str | None


class ModelPatches:
    """A job's changes to the model, undone in reverse order when the job ends (even on error)."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []

    def replace(self, owner: Any, attribute: str, value: Any) -> None:
        """Set ``owner.attribute = value`` for this job; the old value comes back after it (an
        attribute it did not have is removed again)."""
        missing = object()
        old = getattr(owner, attribute, missing)
        setattr(owner, attribute, value)
        if old is missing:
            self._undo.append(lambda: delattr(owner, attribute))
        else:
            self._undo.append(lambda: setattr(owner, attribute, old))

    def on_undo(self, undo: Callable[[], None]) -> None:
        """Call ``undo()`` when the job ends (e.g. remove adapter weights loaded into the UNet)."""
        self._undo.append(undo)

    def undo_all(self) -> list[BaseException]:
        """Undo everything, newest first; the errors of undo functions that raised (all still run)."""
        errors: list[BaseException] = []
        while self._undo:
            try:
                self._undo.pop()()
            except Exception as exc:  # every undo must run; the caller reports these
                errors.append(exc)
        return errors


@dataclass(frozen=True)
class ModelView:
    """The loaded model a job runs on, for JOB_START handlers."""

    family: str  # the checkpoint kind (ModelArch value): "sd15", "sd15_inpaint", "sd2", "sd2_v", "sdxl", "flux_dev", ...
    architecture: str  # its label, as MODEL_LOADED gives it ("SD 1.x", "SDXL", ...)
    unet: Module
    pipeline: Any  # the diffusers pipeline (vae, text encoders, unet)
    device: Device  # where the job's tensors live
    dtype: DType  # the UNet's weights' dtype


@dataclass(frozen=True)
class JobStart:
    """Worker, once per job before its first model call: load what the job needs (a ControlNet, an
    adapter), prepare its inputs, patch the model through ``patches`` (undone when the job ends).
    ``state`` is this extension's scratch space for this job, shared with its MODEL_CALL, DENOISED,
    AFTER_CFG and INFOTEXT handlers of the same job."""

    job: JobInfo
    params: Mapping[str, Any]
    host: Host
    model: ModelView
    patches: ModelPatches
    state: dict[str, Any]


class ModelCallChanges:
    """What MODEL_CALL handlers add to one UNet call; residuals of several handlers are summed."""

    def __init__(self) -> None:
        self.down: list[Tensor] | None = None
        self.mid: Tensor | None = None
        self.intrablock: list[Tensor] | None = None
        self.conditions: dict[str, Any] = {}
        self.tokens: Tensor | None = None

    def add_residuals(self, down: Sequence[Tensor], mid: Tensor) -> None:
        """ControlNet-style residuals, added to the UNet's down-block outputs (one per skip connection,
        conv_in's first) and to its middle block's output; the UNet takes them only together."""
        if down is None or mid is None:
            raise ValueError("add_residuals needs both the down-block residuals and the middle block's")
        self.down = list(down) if self.down is None else [a + b for a, b in zip(self.down, down, strict=True)]
        self.mid = mid if self.mid is None else self.mid + mid

    def add_intrablock(self, residuals: Sequence[Tensor]) -> None:
        """T2I-Adapter-style residuals, added inside the down blocks."""
        self.intrablock = (list(residuals) if self.intrablock is None
                           else [a + b for a, b in zip(self.intrablock, residuals, strict=True)])

    def add_condition(self, name: str, value: Any) -> None:
        """An extra UNet conditioning input (``added_cond_kwargs[name]``, e.g. IP-Adapter's image_embeds)."""
        if name in self.conditions:
            raise ValueError(f"the UNet condition {name!r} was already given for this call")
        self.conditions[name] = value

    def set_tokens(self, tokens: Tensor) -> None:
        """Replace the text conditioning (encoder hidden states) of this call, same shape."""
        self.tokens = tokens


@dataclass(frozen=True)
class ModelCall:
    """Worker, before every UNet call (A1111's ``cfg_denoiser`` moment, at the UNet itself). Rows are
    the prompts' groups then the negative prompt's, ``batch`` images each; ``cond_rows`` is True for
    the prompts' rows (no negative rows when CFG is skipped). Add to the call through ``changes``."""

    job: JobInfo
    params: Mapping[str, Any]
    state: dict[str, Any]
    step: int  # the sampler step this call belongs to, from 0, within this pass
    total: int  # steps of this pass
    pass_index: int  # 0, or 1 for hires fix's second pass
    width: int  # the pass's image size in pixels
    height: int
    x: Tensor  # the UNet's input latents, already scaled for it (rows, C, h, w)
    sigma: Tensor  # (rows,)
    timestep: Tensor  # (rows,) the UNet's timestep
    tokens: Tensor  # encoder hidden states (rows, tokens, width)
    added: Mapping[str, Tensor] | None  # SDXL's text_embeds and time_ids
    cond_rows: Tensor  # (rows,) bool
    batch: int
    unet: Module
    changes: ModelCallChanges


@dataclass(frozen=True)
class Denoised:
    """Worker, after the UNet call, before guidance combines it (A1111's ``cfg_denoised``): every row's
    prediction of the clean latent. Return a replacement of the same shape, or None."""

    job: JobInfo
    params: Mapping[str, Any]
    state: dict[str, Any]
    step: int
    total: int
    pass_index: int
    x: Tensor  # the sampler's latents (batch, C, h, w)
    sigma: Tensor  # (batch,)
    denoised: Tensor  # (rows, C, h, w)
    cond_rows: Tensor  # (rows,) bool
    batch: int


@dataclass(frozen=True)
class AfterCfg:
    """Worker, after guidance (A1111's ``after_cfg``): the combined prediction. Return a replacement of
    the same shape (e.g. a CFG-rescale), or None."""

    job: JobInfo
    params: Mapping[str, Any]
    state: dict[str, Any]
    step: int
    total: int
    pass_index: int
    x: Tensor  # (batch, C, h, w)
    sigma: Tensor  # (batch,)
    denoised: Tensor  # the guided prediction (batch, C, h, w)
    cond: Tensor  # the first prompt's own prediction (batch, C, h, w)
    uncond: Tensor | None  # the negative prompt's, None when CFG was skipped
    cfg_scale: float


@dataclass(frozen=True)
class InfotextFields:
    """Where an image's infotext is written (every returned and saved image; a grid takes its first
    image's). Return ``{key: value}`` to add (None values are left out), or None."""

    job: JobInfo
    params: Mapping[str, Any]
    state: dict[str, Any]  # what this extension's JOB_START kept for the job ({} when it has none)
    index: int  # the image's position in the job
    seed: int
    prompt: str


# fields of a pasted or sent infotext (``{"Steps": "20", "ControlNet 0": "Module: canny, ..."}``) ->
# this extension's values (by param name, or a positional list) or None when the text has none of its keys
InfotextReader = Callable[[Mapping[str, str]], "Mapping[str, Any] | list[Any] | None"]


@dataclass(frozen=True)
class RouteCall:
    """One request to an extension's REST route, after the server's guard passed it (auth, host,
    origin, size). Return a JSON value; raise ValidationError for a 422 naming the fields."""

    method: str
    path: str  # below the extension's prefix, e.g. "/version"
    query: Mapping[str, str]
    body: Any  # the parsed JSON body (None for GET)
    user: str | None
    host: Host


@dataclass(frozen=True)
class Route:
    method: str  # "GET" or "POST"
    path: str  # "/version"
    call: Callable[[RouteCall], Any]


@dataclass(frozen=True)
class PanelValue:
    """A UI panel control made of several Gradio components that together give one param's value
    (a ControlNet unit): ``combine(*values)`` makes the value from the components' values, ``split(value)``
    the components' values back from a param value (pasting parameters), in the same order."""

    components: tuple[Any, ...]
    combine: Callable[..., Any]
    split: Callable[[Any], Sequence[Any]]


__all__ = ["AfterCfg", "Denoised", "ImagePrompt", "InfotextFields", "InfotextReader", "JobInfo", "JobStart",
           "ModelCall", "ModelCallChanges", "ModelPatches", "ModelView", "OnError", "PanelValue", "PlanImages",
           "Route", "RouteCall"]
