"""One job's extension hooks where it renders (the in-process worker or a Ray worker).

:class:`JobHooks` is what the renderer and the engine's denoiser call: JOB_START once the model is
set up (its model patches undone when the job ends, even on error), MODEL_CALL / DENOISED /
AFTER_CFG at every model call, STEP_END after each step, INFOTEXT for each image's text. Each
extension gets one ``state`` dict for the job, shared by its handlers. Handlers run through the
extension manager, which applies their failure policy; warnings of skipped handlers end up in the
job's result.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch

from modules.engine.loader import LoadedModel
from modules.engine.sampling.hooks import UnetExtras, UnetInputs
from modules.extension_api import (
    AfterCfg,
    Denoised,
    Hook,
    InfotextFields,
    JobInfo,
    JobStart,
    ModelCall,
    ModelCallChanges,
    ModelPatches,
    ModelView,
)
from modules.params import LATENT_SCALE, GenerationRequest
from modules.services.extensions import ExtensionManager, ExtensionRecord

log = logging.getLogger(__name__)

# The hooks that run where the job renders; a job without handlers for any of them gets no JobHooks.
WORKER_HOOKS = (Hook.JOB_START, Hook.MODEL_CALL, Hook.DENOISED, Hook.AFTER_CFG, Hook.STEP_END, Hook.INFOTEXT)


def job_hooks_for(extensions: ExtensionManager, job_id: str, request: GenerationRequest) -> JobHooks | None:
    """The job's hooks, or None when no extension handles a worker-side hook (nothing to call)."""
    if not any(extensions.has(hook) for hook in WORKER_HOOKS):
        return None
    return JobHooks(extensions, job_id, request)


def _same_shape(expected: torch.Tensor, what: str) -> Callable[[Any], Exception | None]:
    def check(returned: Any) -> Exception | None:
        if returned is None:
            return None
        if not isinstance(returned, torch.Tensor) or returned.shape != expected.shape:
            shape = tuple(returned.shape) if isinstance(returned, torch.Tensor) else type(returned).__name__
            return TypeError(f"returned {shape}, not {what} of shape {tuple(expected.shape)} or None")
        return None
    return check


class JobHooks:
    """A job's worker-side hooks; see the module docstring."""

    def __init__(self, extensions: ExtensionManager, job_id: str, request: GenerationRequest) -> None:
        self._extensions = extensions
        self.job = JobInfo(job_id, request.owner, request)
        self.warnings: list[str] = []
        self._states: dict[str, dict[str, Any]] = {}
        self._patches = ModelPatches()
        # Fixed for the job (read once: the model-call hooks run at every UNet call).
        self._handlers = {hook: extensions.handlers(hook) for hook in WORKER_HOOKS}
        self._param_values: dict[str, Mapping[str, Any]] = {}
        self.model_calls = bool(self._handlers[Hook.MODEL_CALL])
        self._has_denoised = bool(self._handlers[Hook.DENOISED])
        self._has_after_cfg = bool(self._handlers[Hook.AFTER_CFG])
        self._pass = -1
        self._step = -1
        self._latent_scale = LATENT_SCALE
        self._total = 0

    def _state(self, record: ExtensionRecord) -> dict[str, Any]:
        return self._states.setdefault(record.name, {})

    def _params(self, record: ExtensionRecord) -> Mapping[str, Any]:
        found = self._param_values.get(record.name)
        if found is None:
            found = self._param_values[record.name] = self._extensions.params_for(record.name, self.job.request)
        return found

    def _dispatch(self, hook: Hook, make_context: Callable[[ExtensionRecord], Any],
                  combine: Callable[[Any], Exception | None] | None = None) -> None:
        self._extensions.dispatch(hook, make_context, combine, self.warnings, self._handlers[hook])

    # --- the renderer calls these ---------------------------------------------------------------

    def job_start(self, model: LoadedModel) -> None:
        """JOB_START, once the job's model, VAE and LoRAs are in place."""
        unet = model.denoiser_network  # the UNet, or a flow family's transformer
        self._latent_scale = model.latent_format.scale  # pixels per latent cell, for the sizes hooks see
        view = ModelView(family=model.arch.value, architecture=model.arch.label, unet=unet, pipeline=model.pipeline,
                         device=model.execution_device, dtype=next(unet.parameters()).dtype)
        owner = self.job.user
        self._dispatch(Hook.JOB_START, lambda r: JobStart(
            self.job, self._params(r), self._extensions.host(r.name, owner), view, self._patches, self._state(r)))

    def job_end(self) -> None:
        """Undo the job's model patches (newest first); an undo that fails is logged and reported."""
        for exc in self._patches.undo_all():
            log.error("Undoing an extension's model patch failed", exc_info=exc)
            self.warnings.append(f"An extension's model patch could not be undone: {type(exc).__name__}: {exc}")

    def begin_batch(self) -> None:
        """A batch (or a group of its images with their own prompts) starts: its passes count from 0."""
        self._pass = -1

    def step_end(self, step: int, total: int, interrupt: Callable[[], None]) -> None:
        if self._handlers[Hook.STEP_END]:
            self._extensions.step_end(self.job.id, step, total, self.job.request, interrupt, self.warnings)

    def infotext(self, index: int, seed: int, prompt: str) -> dict[str, object]:
        """The keys INFOTEXT handlers add to image ``index``'s infotext, in handler order."""
        fields: dict[str, object] = {}

        def take(returned: Any) -> Exception | None:
            if returned is None:
                return None
            if not isinstance(returned, Mapping) or not all(isinstance(k, str) for k in returned):
                return TypeError(f"returned {type(returned).__name__}, not a dict of infotext keys or None")
            fields.update(returned)
            return None

        self._dispatch(Hook.INFOTEXT, lambda r: InfotextFields(
            self.job, self._params(r), self._state(r), index, seed, prompt), take)
        return fields

    # --- the denoiser calls these (DenoiserHooks) --------------------------------------------------

    def begin_pass(self, total: int) -> None:
        self._pass += 1
        self._total = total
        self._step = -1

    def begin_step(self) -> None:
        self._step += 1

    def model_call(self, inputs: UnetInputs) -> UnetExtras | None:
        total = ModelCallChanges()
        current: list[ModelCallChanges] = []

        def context(record: ExtensionRecord) -> ModelCall:
            current[:] = [ModelCallChanges()]  # a handler that fails adds nothing
            return ModelCall(self.job, self._params(record), self._state(record), max(self._step, 0), self._total,
                             self._pass, inputs.x.shape[-1] * self._latent_scale,
                             inputs.x.shape[-2] * self._latent_scale,
                             inputs.x, inputs.sigma, inputs.timestep, inputs.tokens, inputs.added, inputs.cond_rows,
                             inputs.batch, inputs.unet, current[0])

        def merge(_returned: Any) -> Exception | None:
            made = current[0]
            if made.down is not None and made.mid is not None:
                total.add_residuals(made.down, made.mid)
            if made.intrablock is not None:
                total.add_intrablock(made.intrablock)
            for name, value in made.conditions.items():
                total.add_condition(name, value)
            if made.tokens is not None:
                total.set_tokens(made.tokens)
            return None

        self._dispatch(Hook.MODEL_CALL, context, merge)
        if total.down is None and total.mid is None and total.intrablock is None and not total.conditions \
                and total.tokens is None:
            return None
        return UnetExtras(total.down, total.mid, total.intrablock, total.conditions, total.tokens)

    def _replaced(self, hook: Hook, value: torch.Tensor, what: str,
                  make_context: Callable[[ExtensionRecord, torch.Tensor], Any]) -> torch.Tensor:
        """``value`` after every handler of ``hook``, each seeing the previous one's replacement."""
        latest = [value]
        check = _same_shape(value, what)

        def take(returned: Any) -> Exception | None:
            problem = check(returned)
            if problem is None and returned is not None:
                latest[0] = returned
            return problem

        self._dispatch(hook, lambda r: make_context(r, latest[0]), take)
        return latest[0]

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor, cond_rows: torch.Tensor,
                 batch: int) -> torch.Tensor:
        if not self._has_denoised:
            return denoised
        return self._replaced(Hook.DENOISED, denoised, "the rows' predictions", lambda r, value: Denoised(
            self.job, self._params(r), self._state(r), max(self._step, 0), self._total, self._pass, x, sigma,
            value, cond_rows, batch))

    def after_cfg(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor, cond: torch.Tensor,
                  uncond: torch.Tensor | None, cfg_scale: float) -> torch.Tensor:
        if not self._has_after_cfg:
            return denoised
        return self._replaced(Hook.AFTER_CFG, denoised, "the guided prediction", lambda r, value: AfterCfg(
            self.job, self._params(r), self._state(r), max(self._step, 0), self._total, self._pass, x, sigma,
            value, cond, uncond, cfg_scale))
