"""Turning prompt text into the embeddings the UNet is conditioned on.

Atelier encodes prompts itself rather than through the pipeline because (a) the pipeline's
``clip_skip`` crashes on SD1 with transformers 5.x, and (b) A1111's semantics need it: prompts of
any length are split into 75-token chunks, each wrapped in start/end tokens and padded to 77,
encoded separately and concatenated; the negative prompt is padded to the same number of chunks.
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline
from transformers import CLIPTokenizer

from modules.engine.model_detect import ModelArch
from modules.engine.sampling.denoiser import Conditioning, CondSchedule, Embeds

CHUNK_TOKENS = 75  # 77 positions minus the start and end tokens


def tokenize_chunks(tokenizer: CLIPTokenizer, text: str, min_chunks: int = 1) -> list[list[int]]:
    """Token ids of ``text`` in 77-long chunks: start, up to 75 tokens, end, padding."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    count = max(min_chunks, (len(ids) + CHUNK_TOKENS - 1) // CHUNK_TOKENS)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    chunks = []
    for i in range(count):
        body = ids[i * CHUNK_TOKENS:(i + 1) * CHUNK_TOKENS]
        chunk = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
        chunks.append(chunk + [pad] * (CHUNK_TOKENS + 2 - len(chunk)))
    return chunks


def count_chunks(tokenizer: CLIPTokenizer, text: str) -> int:
    return len(tokenize_chunks(tokenizer, text))


def _final_norm(encoder: torch.nn.Module) -> torch.nn.Module:
    # transformers >= 5.6 flattened CLIPTextModel; CLIPTextModelWithProjection still nests it.
    inner = getattr(encoder, "text_model", encoder)
    return inner.final_layer_norm


def _encode_sd(encoder: torch.nn.Module, chunks: list[list[int]], clip_skip: int, device: torch.device) -> torch.Tensor:
    """SD1/SD2: output of layer -clip_skip, through the final layer norm as the last layer has."""
    ids = torch.tensor(chunks, device=device)
    out = encoder(ids, output_hidden_states=clip_skip > 1)
    if clip_skip > 1:
        hidden = _final_norm(encoder)(out.hidden_states[-clip_skip])
    else:
        hidden = out.last_hidden_state
    return hidden.reshape(1, -1, hidden.shape[-1])


def _encode_sdxl_part(encoder: torch.nn.Module, chunks: list[list[int]], clip_skip: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDXL: penultimate layer by default (clip skip N uses layer -(N+1)), no final norm."""
    ids = torch.tensor(chunks, device=device)
    out = encoder(ids, output_hidden_states=True)
    hidden = out.hidden_states[-(clip_skip + 1)]
    pooled = getattr(out, "text_embeds", None)
    return hidden.reshape(1, -1, hidden.shape[-1]), (pooled[:1] if pooled is not None else None)


@torch.inference_mode()
def encode_pair(pipe: DiffusionPipeline, arch: ModelArch, prompt: str, negative: str,
                clip_skip: int) -> tuple[Embeds, Embeds]:
    """Embeddings for a prompt and its negative, with equal chunk counts so CFG can batch them."""
    device = pipe.unet.device
    main_tokenizer = pipe.tokenizer if pipe.tokenizer is not None else pipe.tokenizer_2
    chunks = max(count_chunks(main_tokenizer, prompt), count_chunks(main_tokenizer, negative))
    results = []
    for text in (prompt, negative):
        if arch.is_sdxl:
            parts, pooled = [], None
            for tokenizer, encoder in ((pipe.tokenizer, pipe.text_encoder), (pipe.tokenizer_2, pipe.text_encoder_2)):
                if encoder is None:  # the refiner has only the second encoder
                    continue
                hidden, pooled = _encode_sdxl_part(encoder, tokenize_chunks(tokenizer, text, chunks), clip_skip, device)
                parts.append(hidden)
            results.append(Embeds(tokens=torch.cat(parts, dim=-1), pooled=pooled))
        else:
            tokens = _encode_sd(pipe.text_encoder, tokenize_chunks(pipe.tokenizer, text, chunks), clip_skip, device)
            results.append(Embeds(tokens=tokens, pooled=None))
    return results[0], results[1]


def plain_conditioning(pipe: DiffusionPipeline, arch: ModelArch, prompt: str, negative: str,
                       clip_skip: int) -> Conditioning:
    """One prompt and one negative, the same at every step."""
    positive, negative_embeds = encode_pair(pipe, arch, prompt, negative, clip_skip)
    return Conditioning(positive=((CondSchedule.constant(positive), 1.0),),
                        negative=CondSchedule.constant(negative_embeds))
