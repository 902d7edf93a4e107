"""Turning prompt text into the conditioning the UNet sees, with A1111's semantics.

Atelier encodes prompts itself rather than through the pipeline because (a) the pipeline's
``clip_skip`` crashes on SD1 with transformers 5.x, and (b) A1111's prompt language needs it:
``AND`` sub-prompts, prompt editing and alternation (a schedule of texts over the steps), emphasis
weights on the token embeddings (with the chunk's mean restored, A1111's "Original" emphasis),
``BREAK``, and prompts of any length in 75-token chunks, each wrapped in start/end tokens and
padded to 77. Every text of a job is padded to the same number of chunks so CFG can batch them.

Textual inversion embeddings are named in the prompt (whole words, any case). Each takes as many
positions as it has vectors, never split across chunks, weighted like the text around it; while
the encoder runs, its vectors replace the token embeddings looked up at those positions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline
from transformers import CLIPTokenizer

from modules import prompt_parser
from modules.engine.embeddings import Embedding, EncoderSlot, encoder_width
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.denoiser import Conditioning, CondSchedule, Embeds
from modules.errors import AddonLoadError, FieldError, ValidationError

CHUNK_TOKENS = 75  # 77 positions minus the start and end tokens
COMMA_BACKTRACK = 20  # a full chunk breaks after a comma this close to its end (A1111's default)
# Token id held by an embedding's positions until its vectors replace the looked-up rows ("!").
# Any id but the end token works: the pooled output is read at the end token (the first one, or
# the highest id in old configs), so the placeholder must be neither.
EMBEDDING_PLACEHOLDER = 0


@dataclass(frozen=True)
class EmbeddingFix:
    """An embedding's vectors go at ``offset`` (counted from the chunk's first token) and after."""

    offset: int
    name: str


@dataclass(frozen=True)
class Chunk:
    ids: tuple[int, ...]  # up to 75 token ids, without start/end
    weights: tuple[float, ...]
    fixes: tuple[EmbeddingFix, ...] = ()  # where embeddings' vectors replace placeholder ids


def _embedding_pattern(embeddings: Mapping[str, Embedding]) -> re.Pattern[str] | None:
    """Embedding names as whole words, any case, longest first (so "style v2" wins over "style")."""
    names = sorted((name for name in embeddings if name.strip()), key=lambda name: (-len(name), name))
    if not names:
        return None
    # Any run of whitespace in a name matches any run in the prompt, as tokenisation ignores it.
    alternatives = "|".join(r"\s+".join(re.escape(word) for word in name.split()) for name in names)
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


def _name_key(text: str) -> str:
    return " ".join(text.split()).lower()


def _split_on_embeddings(fragment: str, pattern: re.Pattern[str] | None,
                         by_key: Mapping[str, tuple[str, Embedding]]) -> list[str | tuple[str, Embedding]]:
    """``fragment`` as plain text pieces and the (name, embedding) pairs named in it, in order."""
    if pattern is None:
        return [fragment]
    pieces: list[str | tuple[str, Embedding]] = []
    start = 0
    for match in pattern.finditer(fragment):
        found = by_key.get(_name_key(match.group(0)))
        if found is not None:  # None only where case folding and lower() disagree: plain text then
            pieces += [fragment[start:match.start()], found]
            start = match.end()
    pieces.append(fragment[start:])
    return pieces


class _ChunkBuilder:
    """Fills 75-token chunks the way A1111 does: a full chunk breaks after a comma close to its end,
    and an embedding's vectors always stay together in one chunk."""

    def __init__(self, comma: int) -> None:
        self.comma = comma
        self.chunks: list[Chunk] = []
        self.ids: list[int] = []
        self.weights: list[float] = []
        self.fixes: list[EmbeddingFix] = []

    def close(self) -> None:
        self.chunks.append(Chunk(tuple(self.ids), tuple(self.weights), tuple(self.fixes)))
        self.ids, self.weights, self.fixes = [], [], []

    def _make_room(self) -> None:
        if len(self.ids) < CHUNK_TOKENS:
            return
        last_comma = max((i for i, t in enumerate(self.ids) if t == self.comma), default=-1)
        if last_comma < 0 or len(self.ids) - last_comma > COMMA_BACKTRACK:
            self.close()
            return
        # The words after the comma move to the next chunk, embeddings among them included (a
        # comma is never inside an embedding's placeholders, so none is cut in two).
        cut = last_comma + 1
        carry = (self.ids[cut:], self.weights[cut:],
                 [EmbeddingFix(fix.offset - cut, fix.name) for fix in self.fixes if fix.offset >= cut])
        self.ids, self.weights = self.ids[:cut], self.weights[:cut]
        self.fixes = [fix for fix in self.fixes if fix.offset < cut]
        self.close()
        self.ids, self.weights, self.fixes = carry

    def add_token(self, token: int, weight: float) -> None:
        self._make_room()
        self.ids.append(token)
        self.weights.append(weight)

    def add_embedding(self, name: str, count: int, weight: float) -> None:
        self._make_room()
        if len(self.ids) + count > CHUNK_TOKENS:  # never split: the whole embedding starts a new chunk
            self.close()
        self.fixes.append(EmbeddingFix(len(self.ids), name))
        self.ids += [EMBEDDING_PLACEHOLDER] * count
        self.weights += [weight] * count

    def finish(self) -> list[Chunk]:
        if self.ids or not self.chunks:
            self.close()
        return self.chunks


def weighted_chunks(tokenizer: CLIPTokenizer, text: str,
                    embeddings: Mapping[str, Embedding] | None = None) -> list[Chunk]:
    """``text`` (with emphasis and BREAK) as 75-token chunks of ids and their weights.

    Names of ``embeddings`` written in the text become placeholders, one per vector, with the
    weight of the text around them; the chunks' ``fixes`` say where their vectors go."""
    pattern = _embedding_pattern(embeddings) if embeddings else None
    # Names equal but for case are one name to the prompt; the first in sorted order wins.
    by_key = {_name_key(name): (name, emb) for name, emb in sorted((embeddings or {}).items(), reverse=True)}
    builder = _ChunkBuilder(tokenizer.convert_tokens_to_ids(",</w>"))
    for fragment, weight in prompt_parser.parse_attention(text):
        if weight == -1:  # BREAK: the rest of this chunk stays empty
            builder.close()
            continue
        for piece in _split_on_embeddings(fragment, pattern, by_key):
            if isinstance(piece, str):
                for token in tokenizer(piece, add_special_tokens=False, truncation=False).input_ids:
                    builder.add_token(token, weight)
            else:
                name, embedding = piece
                builder.add_embedding(name, embedding.vector_count, weight)
    return builder.finish()


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


Placement = tuple[int, int, torch.Tensor]  # (chunk row, first position in the row, vectors)


def _placements(chunks: list[Chunk], embeddings: Mapping[str, Embedding], slot: EncoderSlot,
                width: int) -> list[Placement]:
    """Where each embedding's vectors for the encoder ``slot`` go in the padded rows (after the start token)."""
    placed: list[Placement] = []
    for row, chunk in enumerate(chunks):
        for fix in chunk.fixes:
            vectors = embeddings[fix.name].vectors.get(slot)
            if vectors is None or vectors.shape[-1] != width:
                raise AddonLoadError("embedding", fix.name, f"it has no {width}-wide {slot} vectors for this model")
            placed.append((row, 1 + fix.offset, vectors))
    return placed


@contextmanager
def _vectors_placed(encoder: torch.nn.Module, placements: list[Placement]) -> Iterator[None]:
    """While the encoder runs, embeddings' vectors replace the placeholder rows its token lookup
    returns. The hook is removed afterwards: nothing stays on the model."""
    if not placements:
        yield
        return

    def replace_rows(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for row, start, vectors in placements:
            output[row, start:start + vectors.shape[0]] = vectors.to(output.device, output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(replace_rows)
    try:
        yield
    finally:
        handle.remove()


def _encoders(pipe: DiffusionPipeline, arch: ModelArch) -> list[tuple[EncoderSlot, CLIPTokenizer, torch.nn.Module]]:
    if not arch.is_sdxl:
        return [(EncoderSlot.CLIP, pipe.tokenizer, pipe.text_encoder)]
    pairs = [(EncoderSlot.CLIP_L, pipe.tokenizer, pipe.text_encoder),
             (EncoderSlot.CLIP_G, pipe.tokenizer_2, pipe.text_encoder_2)]
    return [pair for pair in pairs if pair[2] is not None]  # the refiner has only the second encoder


def clip_skip_limit(pipe: DiffusionPipeline, arch: ModelArch) -> int:
    """The largest clip skip this model can take: its text encoders' fewest hidden layers (SD1/SD2
    read layer -clip_skip, SDXL layer -(clip_skip + 1) of the layers plus the token embeddings)."""
    return min(int(encoder.config.num_hidden_layers) for _slot, _tokenizer, encoder in _encoders(pipe, arch))


def check_clip_skip(pipe: DiffusionPipeline, arch: ModelArch, clip_skip: int) -> None:
    """A ValidationError naming the maximum, rather than an IndexError deep in the encoder."""
    limit = clip_skip_limit(pipe, arch)
    if clip_skip > limit:
        raise ValidationError([FieldError("clip_skip", f"must be at most {limit} (allowed: 1 to {limit}): this "
                                                       f"model's text encoder has {limit} layers, got {clip_skip}")])


@torch.inference_mode()
def encode_texts(pipe: DiffusionPipeline, arch: ModelArch, texts: list[str], clip_skip: int,
                 embeddings: Mapping[str, Embedding] | None = None) -> dict[str, Embeds]:
    """Embeddings of each text (emphasis applied), all with the same number of chunks.

    ``embeddings`` (by name) are the textual inversions the prompt may use; each must fit the model."""
    check_clip_skip(pipe, arch, clip_skip)
    device = pipe._execution_device  # the GPU even when weights wait in RAM (offload)
    embeddings = embeddings or {}
    count = max(len(weighted_chunks(_main_tokenizer(pipe), text, embeddings)) for text in texts)
    result: dict[str, Embeds] = {}
    for text in dict.fromkeys(texts):
        parts, pooled = [], None
        for slot, tokenizer, encoder in _encoders(pipe, arch):
            chunks = weighted_chunks(tokenizer, text, embeddings)
            rows, weights = _padded(tokenizer, chunks, count)
            with _vectors_placed(encoder, _placements(chunks, embeddings, slot, encoder_width(encoder))):
                if arch.is_sdxl:
                    hidden, pooled = _encode_sdxl_part(encoder, rows, weights, clip_skip, device)
                else:
                    hidden = _encode_sd(encoder, rows, weights, clip_skip, device)
            parts.append(hidden)
        result[text] = Embeds(tokens=torch.cat(parts, dim=-1), pooled=pooled)
    return result


def build_conditioning(pipe: DiffusionPipeline, arch: ModelArch, prompt: str, negative: str, clip_skip: int,
                       steps: int, embeddings: Mapping[str, Embedding] | None = None) -> Conditioning:
    """The job's conditioning: AND-weighted sub-prompts and the negative, each scheduled over ``steps``.

    ``embeddings`` are the textual inversions offered to the prompt and the negative, by name."""
    positives = [(prompt_parser.schedule(text, steps), weight) for text, weight in prompt_parser.split_and(prompt)]
    negatives = prompt_parser.schedule(negative, steps)
    texts = [entry.text for schedule, _ in positives for entry in schedule] + [entry.text for entry in negatives]
    embeds = encode_texts(pipe, arch, texts, clip_skip, embeddings)

    def scheduled(entries: list[prompt_parser.ScheduledText]) -> CondSchedule:
        # A1111 uses an entry while the step (counting model calls from 0) is <= its end step.
        return CondSchedule(parts=tuple((entry.end_at_step + 1, embeds[entry.text]) for entry in entries))

    return Conditioning(positive=tuple((scheduled(s), weight) for s, weight in positives),
                        negative=scheduled(negatives))
