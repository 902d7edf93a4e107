"""Turning prompt text into the conditioning the UNet sees, with A1111's semantics.

Atelier encodes prompts itself rather than through the pipeline because (a) the pipeline's
``clip_skip`` crashes on SD1 with transformers 5.x, and (b) A1111's prompt language needs it:
``AND`` sub-prompts, prompt editing and alternation (a schedule of texts over the steps), emphasis
weights on the token embeddings (with the chunk's mean restored, A1111's "Original" emphasis),
``BREAK``, and prompts of any length in 75-token chunks, each wrapped in start/end tokens and
padded to 77. Every text of a job is padded to the same number of chunks so CFG can batch them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from transformers import CLIPTokenizer

from modules import prompt_parser
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.denoiser import Conditioning, CondSchedule, Embeds

CHUNK_TOKENS = 75  # 77 positions minus the start and end tokens
COMMA_BACKTRACK = 20  # a full chunk breaks after a comma this close to its end (A1111's default)


@dataclass(frozen=True)
class Chunk:
    ids: tuple[int, ...]  # up to 75 token ids, without start/end
    weights: tuple[float, ...]


def weighted_chunks(tokenizer: CLIPTokenizer, text: str) -> list[Chunk]:
    """``text`` (with emphasis and BREAK) as 75-token chunks of ids and their weights."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []

    def close() -> None:
        nonlocal ids, weights
        chunks.append(Chunk(tuple(ids), tuple(weights)))
        ids, weights = [], []

    for fragment, weight in prompt_parser.parse_attention(text):
        if weight == -1:  # BREAK: the rest of this chunk stays empty
            close()
            continue
        for token in tokenizer(fragment, add_special_tokens=False, truncation=False).input_ids:
            if len(ids) == CHUNK_TOKENS:
                last_comma = max((i for i, t in enumerate(ids) if t == comma), default=-1)
                if last_comma >= 0 and len(ids) - last_comma <= COMMA_BACKTRACK:
                    carry_ids, carry_weights = ids[last_comma + 1:], weights[last_comma + 1:]
                    ids, weights = ids[:last_comma + 1], weights[:last_comma + 1]
                    close()
                    ids, weights = carry_ids, carry_weights
                else:
                    close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


def _padded(tokenizer: CLIPTokenizer, chunks: list[Chunk], count: int) -> tuple[list[list[int]], torch.Tensor]:
    """(ids, weights) of ``count`` 77-long chunks: start, tokens, end, padding; empty chunks last."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows, weights = [], []
    for chunk in chunks + [Chunk((), ())] * (count - len(chunks)):
        row = [tokenizer.bos_token_id, *chunk.ids, tokenizer.eos_token_id]
        rows.append(row + [pad] * (CHUNK_TOKENS + 2 - len(row)))
        weights.append([1.0, *chunk.weights] + [1.0] * (CHUNK_TOKENS + 1 - len(chunk.weights)))
    return rows, torch.tensor(weights)


def _final_norm(encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers >= 5.6 flattened CLIPTextModel; CLIPTextModelWithProjection still nests it.
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm


def _emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Scale each token's embedding by its weight, then restore each chunk's mean (A1111 "Original").
    A random or degenerate encoder can have a mean near 0; then only the scaling applies."""
    if bool((weights == 1.0).all()):
        return hidden
    weights = weights.to(hidden.device, hidden.dtype)
    original = hidden.mean(dim=(1, 2), keepdim=True)
    scaled = hidden * weights[..., None]
    new = scaled.mean(dim=(1, 2), keepdim=True)
    safe = new.abs() > 1e-6 * hidden.abs().mean()
    return torch.where(safe, scaled * (original / torch.where(safe, new, torch.ones_like(new))), scaled)


def _encode_sd(encoder: torch.nn.Module, rows: list[list[int]], weights: torch.Tensor, clip_skip: int,
               device: torch.device) -> torch.Tensor:
    """SD1/SD2: output of layer -clip_skip, through the final layer norm as the last layer has."""
    out = encoder(torch.tensor(rows, device=device), output_hidden_states=clip_skip > 1)
    hidden = _final_norm(encoder)(out.hidden_states[-clip_skip]) if clip_skip > 1 else out.last_hidden_state
    hidden = _emphasis(hidden, weights)
    return hidden.reshape(1, -1, hidden.shape[-1])


def _encode_sdxl_part(encoder: torch.nn.Module, rows: list[list[int]], weights: torch.Tensor, clip_skip: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDXL: penultimate layer by default (clip skip N uses layer -(N+1)), no final norm; the pooled
    vector of the first chunk."""
    out = encoder(torch.tensor(rows, device=device), output_hidden_states=True)
    hidden = _emphasis(out.hidden_states[-(clip_skip + 1)], weights)
    pooled = getattr(out, "text_embeds", None)
    return hidden.reshape(1, -1, hidden.shape[-1]), (pooled[:1] if pooled is not None else None)


def _main_tokenizer(pipe: DiffusionPipeline) -> CLIPTokenizer:
    return pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2


@torch.inference_mode()
def encode_texts(pipe: DiffusionPipeline, arch: ModelArch, texts: list[str], clip_skip: int) -> dict[str, Embeds]:
    """Embeddings of each text (emphasis applied), all with the same number of chunks."""
    device = pipe.unet.device
    tokenizer = _main_tokenizer(pipe)
    count = max(len(weighted_chunks(tokenizer, text)) for text in texts)
    result: dict[str, Embeds] = {}
    for text in dict.fromkeys(texts):
        if arch.is_sdxl:
            parts, pooled = [], None
            for tok, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
                if encoder is None:  # the refiner has only the second encoder
                    continue
                rows, weights = _padded(tok, weighted_chunks(tok, text), count)
                hidden, pooled = _encode_sdxl_part(encoder, rows, weights, clip_skip, device)
                parts.append(hidden)
            result[text] = Embeds(tokens=torch.cat(parts, dim=-1), pooled=pooled)
        else:
            rows, weights = _padded(tokenizer, weighted_chunks(tokenizer, text), count)
            result[text] = Embeds(tokens=_encode_sd(pipe.text_encoder, rows, weights, clip_skip, device))
    return result


def build_conditioning(pipe: DiffusionPipeline, arch: ModelArch, prompt: str, negative: str, clip_skip: int,
                       steps: int) -> Conditioning:
    """The job's conditioning: AND-weighted sub-prompts and the negative, each scheduled over ``steps``."""
    positives = [(prompt_parser.schedule(text, steps), weight) for text, weight in prompt_parser.split_and(prompt)]
    negatives = prompt_parser.schedule(negative, steps)
    texts = [entry.text for schedule, _ in positives for entry in schedule] + [entry.text for entry in negatives]
    embeds = encode_texts(pipe, arch, texts, clip_skip)

    def scheduled(entries: list[prompt_parser.ScheduledText]) -> CondSchedule:
        # A1111 uses an entry while the step (counting model calls from 0) is <= its end step.
        return CondSchedule(parts=tuple((entry.end_at_step + 1, embeds[entry.text]) for entry in entries))

    return Conditioning(positive=tuple((scheduled(s), weight) for s, weight in positives),
                        negative=scheduled(negatives))
