"""FLUX.2 [klein] in Atelier's loop: prompt encoding, the network in the flow convention, its shift,
and the latent layout the sampler works on.

Every convention here is the one of diffusers' ``Flux2KleinPipeline`` (pipelines/flux2/
pipeline_flux2_klein.py): the Qwen3 chat template around the prompt, padded to 512 tokens, the
hidden states of layers 9, 18 and 27 stacked per token; the latent patchified 2x2 and normalised
by the VAE's batch-norm statistics (128 channels at 1/16 of the image size), packed to tokens
with (t, h, w, l) position ids; the transformer given sigma as its timestep and predicting the
velocity ``noise - x0``; the shift ``exp(mu)`` from ``compute_empirical_mu`` of the image's token
count and the step count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from diffusers.pipelines.flux2.pipeline_flux2_klein import Flux2KleinPipeline, compute_empirical_mu
from diffusers.utils.torch_utils import get_module_execution_device

from modules import prompt_parser
from modules.engine.families import text_weights
from modules.engine.families.base import FlowJob, FlowParts
from modules.engine.latent_format import LatentFormat
from modules.engine.sampling.denoiser import Embeds
from modules.engine.sampling.flow import flow_sigmas
from modules.engine.sampling.schedules import ModelSigmas

if TYPE_CHECKING:
    from modules.engine.loaded_model import LoadedModel

MAX_SEQUENCE_LENGTH = 512  # Flux2KleinPipeline.tokenizer_max_length / max_sequence_length
HIDDEN_STATES_LAYERS = (9, 18, 27)  # _get_qwen3_prompt_embeds(hidden_states_layers=...)
LATENT_SCALE = 16  # 8x VAE, then 2x2 patches
DEFAULT_SIZE, DEFAULT_STEPS = 1024, 4
_MARK = "\x00atelier-prompt\x00"  # stands for the prompt when the chat template is split around it
# Qwen3's chat template as it renders one user message with add_generation_prompt and
# enable_thinking=False (what the pipeline asks for); used when a tokenizer carries no template.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


# -- the sampler's latents ---------------------------------------------------------------------------


def _bn_stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


def _from_vae(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """As Flux2KleinPipeline._encode_vae_image: patchify 2x2, then normalise with the VAE's batch norm."""
    patched = Flux2KleinPipeline._patchify_latents(latents)
    mean, std = _bn_stats(vae, patched)
    return (patched - mean) / std


def _to_vae(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """As the end of Flux2KleinPipeline.__call__: undo the normalisation, then unpatchify."""
    mean, std = _bn_stats(vae, latents)
    return Flux2KleinPipeline._unpatchify_latents(latents * std + mean)


def latent_format(_pipe: Any) -> LatentFormat:
    return LatentFormat(scale=LATENT_SCALE, from_vae=_from_vae, to_vae=_to_vae)


# -- noise levels ------------------------------------------------------------------------------------


def shift_for(width: int, height: int, steps: int) -> float:
    """The pipeline's shift: ``mu`` from the packed image's token count and the step count
    (compute_empirical_mu), applied by the scheduler's exponential time shift, i.e. shift = e^mu."""
    tokens = (height // LATENT_SCALE) * (width // LATENT_SCALE)
    return math.exp(compute_empirical_mu(image_seq_len=tokens, num_steps=max(1, steps)))


def sigmas(_model: LoadedModel, job: FlowJob) -> ModelSigmas:
    shift = job.shift if job.shift else shift_for(job.width, job.height, job.steps)
    return flow_sigmas(shift)


def default_sigmas(_pipe: Any) -> ModelSigmas:
    return flow_sigmas(shift_for(DEFAULT_SIZE, DEFAULT_SIZE, DEFAULT_STEPS))


# -- prompts -----------------------------------------------------------------------------------------


def _render(tokenizer: Any, content: str) -> str:
    # _get_qwen3_prompt_embeds: one user message, generation prompt, thinking off
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=False)


def _padded(tokenizer: Any, ids: list[int], weights: list[float]) -> tuple[list[int], list[int], list[float]]:
    ids, weights = ids[:MAX_SEQUENCE_LENGTH], weights[:MAX_SEQUENCE_LENGTH]
    pad = MAX_SEQUENCE_LENGTH - len(ids)
    mask = [1] * len(ids)
    if tokenizer.padding_side == "left":
        return [tokenizer.pad_token_id] * pad + ids, [0] * pad + mask, [1.0] * pad + weights
    return ids + [tokenizer.pad_token_id] * pad, mask + [0] * pad, weights + [1.0] * pad


def prompt_tokens(tokenizer: Any, text: str, emphasis: str) -> tuple[list[int], list[int], list[float]]:
    """(ids, attention mask, per-token weights), padded to 512 tokens. A text without emphasis is
    tokenised exactly as the pipeline does (template and text together); with emphasis, the
    template's two halves and each weighted fragment are tokenised on their own."""
    weighted = text_weights.weighted_tokens(tokenizer, text, emphasis)
    if all(w == 1.0 for w in weighted.weights):
        content = text if emphasis == text_weights.NONE else "".join(
            piece for piece, _ in prompt_parser.parse_attention(text) if piece != prompt_parser.BREAK_MARK)
        ids = tokenizer(_render(tokenizer, content), add_special_tokens=False)["input_ids"]
        return _padded(tokenizer, list(ids), [1.0] * len(ids))
    before, after = _render(tokenizer, _MARK).split(_MARK)
    head = tokenizer(before, add_special_tokens=False)["input_ids"]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"]
    ids = list(head) + list(weighted.ids) + list(tail)
    weights = [1.0] * len(head) + list(weighted.weights) + [1.0] * len(tail)
    return _padded(tokenizer, ids, weights)


@torch.inference_mode()
def encode(model: LoadedModel, texts: Sequence[str], emphasis: str) -> dict[str, Embeds]:
    pipe = model.pipeline
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    if tokenizer.chat_template is None:
        tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    distinct = list(dict.fromkeys(texts))
    rows = [prompt_tokens(tokenizer, text, emphasis) for text in distinct]
    device = get_module_execution_device(encoder)
    ids = torch.tensor([r[0] for r in rows], device=device)
    mask = torch.tensor([r[1] for r in rows], device=device)
    output = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    stacked = torch.stack([output.hidden_states[k] for k in HIDDEN_STATES_LAYERS], dim=1)
    batch, layers, length, width = stacked.shape
    # (B, layers, T, width) -> (B, T, layers * width), as the pipeline reshapes it
    embeds = stacked.permute(0, 2, 1, 3).reshape(batch, length, layers * width)
    dtype, target = model.denoiser_network.dtype, model.execution_device
    out: dict[str, Embeds] = {}
    for i, text in enumerate(distinct):
        weights = torch.tensor(rows[i][2], dtype=torch.float32)
        row = text_weights.apply_weights(embeds[i:i + 1].float(), weights, emphasis)
        out[text] = Embeds(tokens=row.to(target, dtype))
    return out


# -- the network -------------------------------------------------------------------------------------


@dataclass
class Flux2Network:
    """Flux2Transformer2DModel called in the flow convention on unpacked (B, 128, h, w) latents."""

    transformer: torch.nn.Module
    _ids: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    def conditions(self, _embeds: Embeds) -> dict[str, torch.Tensor]:
        return {}  # klein conditions on the token embeddings alone (no pooled vector, no guidance)

    def _positions(self, h: int, w: int, tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, tokens, device)
        if key not in self._ids:
            one = torch.arange(1)
            # _prepare_latent_ids: (t=0, row, column, l=0); _prepare_text_ids: (0, 0, 0, token index)
            img = torch.cartesian_prod(one, torch.arange(h), torch.arange(w), one).to(device)
            txt = torch.cartesian_prod(one, one, one, torch.arange(tokens)).to(device)
            self._ids[key] = (img, txt)
        return self._ids[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor,
                 conditions: dict[str, torch.Tensor] | None, concat: torch.Tensor | None) -> torch.Tensor:
        batch, channels, h, w = x.shape
        dtype = self.transformer.dtype
        packed = x.reshape(batch, channels, h * w).permute(0, 2, 1).to(dtype)  # _pack_latents
        img_ids, txt_ids = self._positions(h, w, tokens.shape[1], x.device)
        out = self.transformer(hidden_states=packed, encoder_hidden_states=tokens.to(dtype),
                               # the pipeline passes t / 1000 = sigma; the model scales it by 1000 itself
                               timestep=sigma.to(dtype), img_ids=img_ids, txt_ids=txt_ids, guidance=None,
                               return_dict=False)[0]
        return out.float().permute(0, 2, 1).reshape(batch, channels, h, w)


def network(model: LoadedModel, _job: FlowJob) -> Flux2Network:
    return Flux2Network(model.pipeline.transformer)


FLOW = FlowParts(encode=encode, network=network, sigmas=sigmas)
