"""The UNet as a denoiser in sigma space, and classifier-free guidance over scheduled prompts.

:class:`SigmaDenoiser` turns an eps- or v-predicting UNet into ``D(x, sigma)`` (Karras et al.'s
preconditioning, as k-diffusion's CompVis wrappers do). :class:`GuidedDenoiser` is the ``model``
the sampler functions call: it picks each prompt's embeddings for the current step (prompt
editing), evaluates all prompts and the negative in one batch, combines them with their weights
(``AND``) and the CFG scale, and keeps the unmasked area of an inpainting job on the original.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from modules.engine.sampling.hooks import DenoiserHooks, UnetExtras, UnetInputs
from modules.engine.sampling.schedules import ModelSigmas

# (scaled input, timestep) -> what a job's hooks add to this UNet call
ExtrasFor = Callable[[torch.Tensor, torch.Tensor], UnetExtras | None]


class SamplingStopped(Exception):
    """Raised inside the loop when the job is interrupted or skipped; the loop catches it."""


@dataclass(frozen=True)
class Embeds:
    """One prompt's conditioning: token embeddings, plus SDXL's pooled vector."""

    tokens: torch.Tensor  # (1, tokens, width)
    pooled: torch.Tensor | None = None  # (1, width), SDXL only


@dataclass(frozen=True)
class CondSchedule:
    """A prompt whose embeddings change with the step: ``(until_step, embeds)`` in order."""

    parts: tuple[tuple[int, Embeds], ...]

    @staticmethod
    def constant(embeds: Embeds) -> CondSchedule:
        return CondSchedule(parts=((2**31, embeds),))

    def at(self, step: int) -> Embeds:
        for until, embeds in self.parts:
            if step < until:
                return embeds
        return self.parts[-1][1]


@dataclass(frozen=True)
class Conditioning:
    """Weighted positive prompts (``AND``) and the negative prompt, each possibly scheduled."""

    positive: tuple[tuple[CondSchedule, float], ...]
    negative: CondSchedule


class SigmaDenoiser:
    """``D(x, sigma)`` from a UNet trained on discrete timesteps (eps or v prediction)."""

    def __init__(self, unet: torch.nn.Module, model_sigmas: ModelSigmas, v_prediction: bool) -> None:
        self.unet = unet
        self.model_sigmas = model_sigmas
        self.v_prediction = v_prediction
        # Read once: diffusers' ``unet.dtype`` walks every submodule, about 1.5 ms a call on a CPU.
        self.dtype = next(unet.parameters()).dtype

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor,
                 added: dict[str, torch.Tensor] | None, concat: torch.Tensor | None,
                 extras_for: ExtrasFor | None = None) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        c_in = 1 / (s**2 + 1) ** 0.5
        x_in = x * c_in
        t = self.model_sigmas.sigma_to_t(sigma)
        dtype = self.dtype
        extras = extras_for(x_in, t) if extras_for is not None else None
        kwargs: dict[str, Any] = {}
        conditions = {k: v.to(dtype) for k, v in added.items()} if added else {}
        if extras is not None:  # a job's hooks add residuals, conditions or other tokens to this call
            kwargs = extras.unet_kwargs(dtype)
            conditions.update(extras.conditions)
            tokens = extras.tokens if extras.tokens is not None else tokens
        if concat is not None:  # inpainting models also see the mask and the masked image
            x_in = torch.cat([x_in, concat], dim=1)
        out = self.unet(x_in.to(dtype), t, encoder_hidden_states=tokens.to(dtype),
                        added_cond_kwargs=conditions or None, return_dict=False, **kwargs)[0].float()
        if self.v_prediction:
            return x / (s**2 + 1) - out * s / (s**2 + 1) ** 0.5
        return x - out * s


@dataclass(frozen=True)
class LatentMask:
    """Inpainting with an ordinary model: where ``keep`` is 1 the original latent wins every step."""

    init_latent: torch.Tensor
    keep: torch.Tensor  # (B or 1, 1, h, w), 1 = keep the original

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return self.init_latent * self.keep + x * (1 - self.keep)


@dataclass(frozen=True)
class _BatchedInputs:
    """The model inputs beside x and sigma for one set of prompts, batched for the call."""

    tokens: torch.Tensor
    added: dict[str, torch.Tensor] | None
    concat: torch.Tensor | None


class GuidedDenoiser:
    """Classifier-free guidance over scheduled, weighted prompts; what the samplers call."""

    def __init__(self, inner: SigmaDenoiser, conditioning: Conditioning, cfg_scale: float,
                 added: Callable[[Embeds], dict[str, torch.Tensor]] | None, concat: torch.Tensor | None,
                 mask: LatentMask | None, should_stop: Callable[[], bool], hooks: DenoiserHooks | None = None,
                 model_calls: bool = True) -> None:
        self.inner = inner
        self.hooks = hooks  # a job's extension hooks (None: none)
        self._hook_model_calls = hooks is not None and hooks.model_calls and model_calls
        self.conditioning = conditioning
        self.cfg_scale = cfg_scale
        self.added = added
        self.concat = concat
        self.mask = mask
        self.should_stop = should_stop
        self.calls = 0  # model calls so far: prompt editing counts these, as A1111 does
        # The batched model inputs of each prompt-schedule part, built once and reused every step.
        self._inputs: dict[tuple[int, ...], _BatchedInputs] = {}
        self._rows: dict[tuple[int, int], torch.Tensor] = {}

    def _skip_uncond(self) -> bool:
        positive = self.conditioning.positive
        return self.cfg_scale == 1.0 and len(positive) == 1 and positive[0][1] == 1.0

    def begin_pass(self, total: int) -> None:
        """A sampling pass of ``total`` steps begins; only hooks count passes."""
        if self.hooks is not None:
            self.hooks.begin_pass(total)

    def begin_step(self, sigma: float) -> None:
        """The sampler starts a step at ``sigma`` (a Python float); only hooks count steps."""
        if self.hooks is not None:
            self.hooks.begin_step()

    def _extras_for(self, sigma: torch.Tensor, tokens: torch.Tensor, added: dict[str, torch.Tensor] | None,
                    groups: int, batch: int) -> ExtrasFor | None:
        """How this call asks the hooks for their additions (None without MODEL_CALL hooks)."""
        if not self._hook_model_calls:
            return None
        hooks = self.hooks
        assert hooks is not None
        cond_rows = self._cond_rows(groups, batch, sigma.device)

        def extras(x_in: torch.Tensor, t: torch.Tensor) -> UnetExtras | None:
            return hooks.model_call(UnetInputs(x_in, sigma, t, tokens, added, cond_rows, batch, self.inner.unet))

        return extras

    def _cond_rows(self, groups: int, batch: int, device: torch.device) -> torch.Tensor:
        """Which rows of a call are the prompts' (True) and which the negative prompt's, made once."""
        key = (groups, batch)
        found = self._rows.get(key)
        if found is None:
            prompts = len(self.conditioning.positive)
            found = self._rows[key] = torch.tensor([group < prompts for group in range(groups) for _ in range(batch)],
                                                   device=device)
        return found

    def _batched(self, embeds: list[Embeds], batch: int) -> _BatchedInputs:
        key = (batch, *map(id, embeds))
        found = self._inputs.get(key)
        if found is None:
            tokens = torch.cat([e.tokens.expand(batch, -1, -1) for e in embeds])
            added = None
            if self.added is not None:
                parts = [self.added(e) for e in embeds]
                added = {k: torch.cat([p[k].expand(batch, -1) for p in parts]) for k in parts[0]}
            concat = self.concat.repeat(len(embeds), 1, 1, 1) if self.concat is not None else None
            found = self._inputs[key] = _BatchedInputs(tokens, added, concat)
        return found

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        if self.should_stop():
            raise SamplingStopped
        batch = x.shape[0]
        embeds = [schedule.at(self.calls) for schedule, _w in self.conditioning.positive]
        if not self._skip_uncond():
            embeds.append(self.conditioning.negative.at(self.calls))
        groups = len(embeds)
        inputs = self._batched(embeds, batch)
        sigmas = sigma.repeat(groups)
        extras_for = self._extras_for(sigmas, inputs.tokens, inputs.added, groups, batch)
        args = (x.repeat(groups, 1, 1, 1), sigmas, inputs.tokens, inputs.added, inputs.concat)
        out = self.inner(*args) if extras_for is None else self.inner(*args, extras_for)
        self.calls += 1
        if self.hooks is not None:
            out = self.hooks.denoised(x, sigma, out, self._cond_rows(groups, batch, x.device), batch)
        uncond = None
        if self._skip_uncond():
            denoised = out
        else:
            uncond = out[-batch:]
            denoised = uncond.clone()
            for i, (_schedule, weight) in enumerate(self.conditioning.positive):
                denoised += (out[i * batch:(i + 1) * batch] - uncond) * (weight * self.cfg_scale)
        if self.hooks is not None:
            denoised = self.hooks.after_cfg(x, sigma, denoised, out[:batch], uncond, self.cfg_scale)
        return self.mask.apply(denoised) if self.mask is not None else denoised


class SwitchingDenoiser:
    """Hands the rest of the sampling to a second model (A1111's refiner) once ``switch_at`` of the
    denoising is done, judged as A1111 does by the timestep: done = (999 - t) / 1000. The judgement
    is made on the Python float of each step's sigma as the step begins (so the device is never
    read), and a step's extra model calls stay with the model it began on. The second denoiser is
    built only when the switch happens, and inherits the call count (prompt editing)."""

    def __init__(self, first: GuidedDenoiser, make_second: Callable[[], GuidedDenoiser],
                 model_sigmas: ModelSigmas, switch_at: float) -> None:
        self.active = first
        self._make_second = make_second
        self._levels = model_sigmas.sigmas.tolist()
        self._switch_at = switch_at
        self.switched = False
        self.mask = first.mask

    def _done(self, sigma: float) -> float:
        t = min(range(len(self._levels)), key=lambda i: abs(self._levels[i] - sigma))
        return (len(self._levels) - 1 - t) / len(self._levels)

    def begin_pass(self, total: int) -> None:
        self.active.begin_pass(total)

    def begin_step(self, sigma: float) -> None:
        if not self.switched and self._done(sigma) >= self._switch_at:
            calls = self.active.calls
            self.active = self._make_second()
            self.active.calls = calls
            self.switched = True
        self.active.begin_step(sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.active(x, sigma, **kwargs)
