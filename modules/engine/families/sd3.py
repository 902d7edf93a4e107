"""Stable Diffusion 3.5 (Large and Medium): MMDiT flow transformers with CLIP-L, CLIP-G and T5-XXL.

Recognised by their MMDiT tensors (single files, :mod:`.sd3_layout`) or a ``StableDiffusion3Pipeline``
folder; single files are assembled with their missing parts from the component folders
(:mod:`.sd3_parts`). The loop sees them through diffusers' conventions (``StableDiffusion3Pipeline``):
the prompt is CLIP-L's and CLIP-G's penultimate hidden states side by side, zero-padded to the joint
width, followed by T5's 256 tokens; the pooled vector is both CLIP projections; the transformer
takes ``timestep = sigma * 1000`` and predicts the velocity; the shift is the scheduler's static 3.0.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.families import sd3_layout, sd3_parts
from modules.engine.families.base import EngineFamily, FileLoad, FlowJob, FlowParts, FolderLoad
from modules.engine.families.text_weights import apply_weights, weighted_tokens
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.denoiser import Embeds
from modules.engine.sampling.flow import compute_dtype, flow_sigmas
from modules.engine.sampling.schedules import ModelSigmas
from modules.errors import ModelLoadError

if TYPE_CHECKING:
    from modules.engine.loaded_model import LoadedModel

ARCHS = (ModelArch.SD35_LARGE, ModelArch.SD35_MEDIUM)
T5_TOKENS = 256  # the pipeline's default max_sequence_length
_FOLDER_CLASSES = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")


def detect_file(index: TensorIndex) -> ModelArch | None:
    return sd3_layout.detect(index)


def detect_folder(folder: Path, model_index: Mapping[str, Any]) -> ModelArch | None:
    if model_index.get("_class_name") not in _FOLDER_CLASSES:
        return None
    try:
        config = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(folder), f"not a diffusers model folder ({exc})") from exc
    return ModelArch.SD35_MEDIUM if config.get("dual_attention_layers") else ModelArch.SD35_LARGE


def load_file(load: FileLoad) -> DiffusionPipeline:
    return sd3_parts.assemble(load)


def load_folder(load: FolderLoad) -> DiffusionPipeline:
    return StableDiffusion3Pipeline.from_pretrained(str(load.path), local_files_only=True, dtype=load.device.dtype)


def _padded(ids: list[int], weights: list[float], length: int, pad_id: int) -> tuple[list[int], list[float]]:
    missing = length - len(ids)
    return ids + [pad_id] * missing, weights + [1.0] * missing


def _clip(tokenizer: Any, encoder: Any, text: str, emphasis: str,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states (1, 77, width), pooled projection (1, proj)) of one CLIP, as
    diffusers' ``_get_clip_prompt_embeds`` with clip_skip None; emphasis weights the hidden states
    and keeps their mean (A1111's rule), the pooled vector is the plain text's."""
    length = tokenizer.model_max_length
    tokens = weighted_tokens(tokenizer, text, emphasis)
    body = length - 2  # truncated like the tokenizer's max_length padding
    ids = [tokenizer.bos_token_id, *tokens.ids[:body], tokenizer.eos_token_id]
    ids, weights = _padded(ids, [1.0, *tokens.weights[:body], 1.0], length, tokenizer.pad_token_id)
    out = encoder(torch.tensor([ids], device=device), output_hidden_states=True)
    hidden = apply_weights(out.hidden_states[-2], torch.tensor(weights), emphasis)
    return hidden, out[0]


def _t5(model: LoadedModel, text: str, emphasis: str, device: torch.device) -> torch.Tensor:
    """T5's 256 token states (diffusers' ``_get_t5_prompt_embeds``: no attention mask, padded with
    <pad>); zeros of the joint width when the model has no T5, as diffusers does."""
    pipe = model.pipeline
    if pipe.text_encoder_3 is None:
        width = pipe.transformer.config.joint_attention_dim
        return torch.zeros(1, T5_TOKENS, width, device=device, dtype=pipe.text_encoder.dtype)
    tokenizer = pipe.tokenizer_3
    tokens = weighted_tokens(tokenizer, text, emphasis)
    body = T5_TOKENS - 1
    ids, weights = _padded([*tokens.ids[:body], tokenizer.eos_token_id], [*tokens.weights[:body], 1.0],
                           T5_TOKENS, tokenizer.pad_token_id)
    hidden = pipe.text_encoder_3(torch.tensor([ids], device=device))[0]
    return apply_weights(hidden, torch.tensor(weights), emphasis)


def encode(model: LoadedModel, texts: Sequence[str], emphasis: str) -> dict[str, Embeds]:
    """Each text's 77 + 256 tokens and pooled vector (diffusers' ``encode_prompt``)."""
    pipe, device = model.pipeline, model.execution_device
    out: dict[str, Embeds] = {}
    with torch.no_grad():
        for text in texts:
            l_hidden, l_pooled = _clip(pipe.tokenizer, pipe.text_encoder, text, emphasis, device)
            g_hidden, g_pooled = _clip(pipe.tokenizer_2, pipe.text_encoder_2, text, emphasis, device)
            t5 = _t5(model, text, emphasis, device)
            clip = torch.cat([l_hidden, g_hidden], dim=-1)
            clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
            out[text] = Embeds(tokens=torch.cat([clip.to(t5.dtype), t5], dim=-2),
                               pooled=torch.cat([l_pooled, g_pooled], dim=-1))
    return out


@dataclass(frozen=True)
class SD3Network:
    """The MMDiT in the flow convention: diffusers' scheduler timesteps are sigma * 1000, and its
    output is already the velocity noise - x0 (FlowMatchEulerDiscreteScheduler.step adds
    (sigma_next - sigma) * output)."""

    transformer: torch.nn.Module
    train_steps: int
    dtype: torch.dtype  # read once: diffusers' ``.dtype`` walks every parameter

    def conditions(self, embeds: Embeds) -> dict[str, torch.Tensor]:
        assert embeds.pooled is not None
        return {"pooled": embeds.pooled}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor,
                 conditions: dict[str, torch.Tensor] | None, concat: torch.Tensor | None) -> torch.Tensor:
        assert conditions is not None
        dtype = self.dtype
        out = self.transformer(hidden_states=x.to(dtype), timestep=sigma.float() * self.train_steps,
                               encoder_hidden_states=tokens.to(dtype),
                               pooled_projections=conditions["pooled"].to(dtype), return_dict=False)[0]
        return out.float()


def network(model: LoadedModel, job: FlowJob) -> SD3Network:
    pipe = model.pipeline
    return SD3Network(pipe.transformer, int(pipe.scheduler.config.num_train_timesteps),
                      compute_dtype(pipe.transformer))


def _shift(pipe: DiffusionPipeline) -> float:
    return float(pipe.scheduler.config.get("shift", 3.0))


def sigmas(model: LoadedModel, job: FlowJob) -> ModelSigmas:
    """The scheduler's static shift (3.0 for SD 3.5; no resolution-dependent shift), or the job's."""
    return flow_sigmas(job.shift if job.shift is not None else _shift(model.pipeline))


FAMILY = EngineFamily(
    name="Stable Diffusion 3.5",
    archs=ARCHS,
    detect_file=detect_file,
    detect_folder=detect_folder,
    load_file=load_file,
    load_folder=load_folder,
    flow=FlowParts(encode=encode, network=network, sigmas=sigmas),
    default_sigmas=lambda pipe: flow_sigmas(_shift(pipe)),
)
