"""Turning prompt text into the conditioning the UNet sees, with A1111's semantics.

Atelier encodes prompts itself rather than through the pipeline because (a) the pipeline's
``clip_skip`` crashes on SD1 with transformers 5.x, and (b) A1111's prompt language needs it:
``AND`` sub-prompts, prompt editing and alternation (a schedule of texts over the steps), emphasis
weights on the token embeddings (A1111's option ``emphasis``, see :func:`apply_emphasis`),
``BREAK``, and prompts of any length in 75-token chunks, each wrapped in start/end tokens and
padded to 77. Every text of a job is padded to the same number of chunks so CFG can batch them.

As in A1111, the texts one prompt is scheduled to (prompt editing, alternation) are encoded
together: "Original" emphasis restores the mean of all of them at once, chunk by chunk.

Textual inversion embeddings are named in the prompt (whole words, any case). Each takes as many
positions as it has vectors, never split across chunks, weighted like the text around it; while
the encoder runs, its vectors replace the token embeddings looked up at those positions.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterator, Mapping, Sequence
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

# A1111's emphasis modes (option "emphasis"): "Original" scales each token's output by its weight
# and restores the mean, "No norm" only scales, "Ignore" reads the brackets but not the weights,
# "None" reads brackets and BREAK as plain text.
ORIGINAL, NO_NORM, IGNORE, NONE = "Original", "No norm", "Ignore", "None"
EMPHASIS_MODES = (ORIGINAL, NO_NORM, IGNORE, NONE)
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
                    embeddings: Mapping[str, Embedding] | None = None, literal: bool = False) -> list[Chunk]:
    """``text`` (with emphasis and BREAK) as 75-token chunks of ids and their weights.

    Names of ``embeddings`` written in the text become placeholders, one per vector, with the
    weight of the text around them; the chunks' ``fixes`` say where their vectors go.
    ``literal``: brackets and BREAK are plain text (A1111's emphasis "None")."""
    pattern = _embedding_pattern(embeddings) if embeddings else None
    # Names equal but for case are one name to the prompt; the first in sorted order wins.
    by_key = {_name_key(name): (name, emb) for name, emb in sorted((embeddings or {}).items(), reverse=True)}
    builder = _ChunkBuilder(tokenizer.convert_tokens_to_ids(",</w>"))
    fragments = [(text, 1.0)] if literal else prompt_parser.parse_attention(text)
    for fragment, weight in fragments:
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


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, mode: str) -> torch.Tensor:
    """A1111's emphasis on the texts one prompt is scheduled to, encoded together.

    ``hidden``: (texts, chunks, 77, width), each distinct text once; ``weights``: (texts, chunks, 77);
    ``counts``: how many times each text is in the schedule (A1111 encodes the schedule's list,
    repeats included, so a text's share of the mean is its count). "Original", chunk by chunk:
    mean over the whole batch, multiply by the weights, rescale so the batch's mean is the one before.
    A random or degenerate encoder can have a mean near 0; then only the scaling applies."""
    if mode in (IGNORE, NONE) or bool((weights == 1.0).all()):
        return hidden
    weights = weights.to(hidden.device, hidden.dtype)
    scaled = hidden * weights[..., None]
    if mode == NO_NORM:
        return scaled
    share = (counts / counts.sum()).to(hidden.device, hidden.dtype)[:, None]  # (texts, 1)
    original = (hidden.mean(dim=(2, 3)) * share).sum(dim=0)  # (chunks,): each chunk's batch mean
    new = (scaled.mean(dim=(2, 3)) * share).sum(dim=0)
    safe = new.abs() > 1e-6 * hidden.abs().mean()
    ratio = torch.where(safe, original / torch.where(safe, new, torch.ones_like(new)), torch.ones_like(new))
    return scaled * ratio[None, :, None, None]


def _encode_sd(encoder: torch.nn.Module, rows: list[list[int]], clip_skip: int,
               device: torch.device) -> torch.Tensor:
    """SD1/SD2: output of layer -clip_skip, through the final layer norm as the last layer has."""
    out = encoder(torch.tensor(rows, device=device), output_hidden_states=clip_skip > 1)
    return _final_norm(encoder)(out.hidden_states[-clip_skip]) if clip_skip > 1 else out.last_hidden_state


def _encode_sdxl_part(encoder: torch.nn.Module, rows: list[list[int]], clip_skip: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDXL: penultimate layer by default (clip skip N uses layer -(N+1)), no final norm; the pooled
    vector of the first chunk (emphasis never changes it)."""
    out = encoder(torch.tensor(rows, device=device), output_hidden_states=True)
    pooled = getattr(out, "text_embeds", None)
    return out.hidden_states[-(clip_skip + 1)], (pooled[:1] if pooled is not None else None)


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


@dataclass(frozen=True)
class _Raw:
    """One text through one encoder, before emphasis: (chunks, 77, width), its weights, pooled."""

    hidden: torch.Tensor
    weights: torch.Tensor
    pooled: torch.Tensor | None


def _raw(pipe: DiffusionPipeline, arch: ModelArch, text: str, count: int, clip_skip: int,
         embeddings: Mapping[str, Embedding], literal: bool) -> list[_Raw]:
    """``text`` through each of the model's text encoders, padded to ``count`` chunks."""
    device = pipe._execution_device  # the GPU even when weights wait in RAM (offload)
    found = []
    for slot, tokenizer, encoder in _encoders(pipe, arch):
        chunks = weighted_chunks(tokenizer, text, embeddings, literal)
        rows, weights = _padded(tokenizer, chunks, count)
        pooled = None
        with _vectors_placed(encoder, _placements(chunks, embeddings, slot, encoder_width(encoder))):
            if arch.is_sdxl:
                hidden, pooled = _encode_sdxl_part(encoder, rows, clip_skip, device)
            else:
                hidden = _encode_sd(encoder, rows, clip_skip, device)
        found.append(_Raw(hidden, weights, pooled))
    return found


@torch.inference_mode()
def encode_groups(pipe: DiffusionPipeline, arch: ModelArch, groups: Sequence[Sequence[str]], clip_skip: int,
                  embeddings: Mapping[str, Embedding] | None = None,
                  emphasis: str = ORIGINAL) -> list[dict[str, Embeds]]:
    """Each group's texts as embeddings (emphasis applied over the group, as A1111 applies it to the
    texts of one prompt's schedule), all with the same number of chunks. A group lists its texts
    as the schedule does, repeats included.

    ``embeddings`` (by name) are the textual inversions the prompt may use; each must fit the model."""
    if emphasis not in EMPHASIS_MODES:
        raise ValueError(f"emphasis must be one of {', '.join(EMPHASIS_MODES)}, got {emphasis!r}")
    check_clip_skip(pipe, arch, clip_skip)
    embeddings, literal = embeddings or {}, emphasis == NONE
    texts = list(dict.fromkeys(text for group in groups for text in group))
    count = max(len(weighted_chunks(_main_tokenizer(pipe), text, embeddings, literal)) for text in texts)
    raw = {text: _raw(pipe, arch, text, count, clip_skip, embeddings, literal) for text in texts}
    result = []
    for group in groups:
        counts = collections.Counter(group)
        members = list(counts)
        parts = []
        for index in range(len(raw[members[0]])):  # per encoder: A1111 weighs each encoder's output alone
            hidden = torch.stack([raw[text][index].hidden.reshape(count, CHUNK_TOKENS + 2, -1) for text in members])
            weights = torch.stack([raw[text][index].weights for text in members])
            parts.append(apply_emphasis(hidden, weights, torch.tensor([counts[t] for t in members]), emphasis))
        # (chunks, 77, width) of each encoder, side by side, as one (1, chunks * 77, widths) sequence.
        result.append({text: Embeds(tokens=torch.cat([part[i] for part in parts], dim=-1).flatten(0, 1)[None],
                                    pooled=raw[text][-1].pooled) for i, text in enumerate(members)})
    return result


def encode_texts(pipe: DiffusionPipeline, arch: ModelArch, texts: list[str], clip_skip: int,
                 embeddings: Mapping[str, Embedding] | None = None, emphasis: str = ORIGINAL) -> dict[str, Embeds]:
    """Embeddings of each text on its own (emphasis applied), all with the same number of chunks."""
    groups = encode_groups(pipe, arch, [[text] for text in dict.fromkeys(texts)], clip_skip, embeddings, emphasis)
    return {text: embeds for group in groups for text, embeds in group.items()}


def build_conditioning(pipe: DiffusionPipeline, arch: ModelArch, prompt: str, negative: str, clip_skip: int,
                       steps: int, embeddings: Mapping[str, Embedding] | None = None, *,
                       hires_base_steps: int | None = None, emphasis: str = ORIGINAL) -> Conditioning:
    """The job's conditioning: AND-weighted sub-prompts and the negative, each scheduled over ``steps``
    (model calls, as A1111 counts them) and encoded with its own schedule's texts.

    ``embeddings`` are the textual inversions offered to the prompt and the negative, by name.
    ``hires_base_steps``: hires fix's second pass, whose prompt editing counts on from a first pass
    of that many model calls (see :func:`prompt_parser.schedule`). ``emphasis``: A1111's mode."""
    positives = [(prompt_parser.schedule(text, steps, hires_base_steps), weight)
                 for text, weight in prompt_parser.split_and(prompt)]
    negatives = prompt_parser.schedule(negative, steps, hires_base_steps)
    schedules = [entries for entries, _weight in positives] + [negatives]
    encoded = encode_groups(pipe, arch, [[entry.text for entry in entries] for entries in schedules], clip_skip,
                            embeddings, emphasis)

    def scheduled(entries: list[prompt_parser.ScheduledText], embeds: Mapping[str, Embeds]) -> CondSchedule:
        # A1111 uses an entry while the step (counting model calls from 0) is <= its end step.
        return CondSchedule(parts=tuple((entry.end_at_step + 1, embeds[entry.text]) for entry in entries))

    negative_embeds = encoded[-1]
    if arch.is_sdxl and negative == "":  # A1111 (and diffusers' SDXL) use zeros for an empty negative prompt
        negative_embeds = {text: _zeroed(embeds) for text, embeds in negative_embeds.items()}
    return Conditioning(positive=tuple((scheduled(entries, embeds), weight)
                                       for (entries, weight), embeds in zip(positives, encoded, strict=False)),
                        negative=scheduled(negatives, negative_embeds))


def _zeroed(embeds: Embeds) -> Embeds:
    """``embeds`` as zeros: SDXL's empty negative prompt (A1111's force_zero_embeddings on its text
    embedders: the tokens and the pooled vector; the size conditioning stays)."""
    return Embeds(tokens=torch.zeros_like(embeds.tokens),
                  pooled=None if embeds.pooled is None else torch.zeros_like(embeds.pooled))
