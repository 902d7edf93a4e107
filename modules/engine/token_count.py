"""Counting a prompt's tokens the way its encoding will chunk them (A1111's "n/75" counter).

Every Stable Diffusion text encoder uses CLIP's BPE vocabulary, so the shipped copy answers for
any checkpoint without touching the loaded model (the worker may be busy with it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from transformers import CLIPTokenizer

from modules import prompt_parser
from modules.engine.config_folders import SHIPPED_CONFIGS
from modules.engine.embeddings import Embedding
from modules.engine.prompt_encoding import CHUNK_TOKENS, weighted_chunks


@dataclass(frozen=True)
class TokenCount:
    tokens: int  # the longest of the prompt's texts (AND parts, editing steps)
    limit: int  # the chunk capacity those tokens fill: 75, 150, ...

    def __str__(self) -> str:
        return f"{self.tokens}/{self.limit}"


@lru_cache(maxsize=1)
def _tokenizer() -> CLIPTokenizer:
    folder = SHIPPED_CONFIGS / "clip_bpe"
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))


def count_tokens(prompt: str, steps: int = 20, embeddings: Mapping[str, Embedding] | None = None) -> TokenCount:
    """Tokens of the longest text ``prompt`` becomes, and the chunk capacity they need.

    An embedding named in the prompt counts as many tokens as it has vectors."""
    tokenizer = _tokenizer()
    longest = 0
    for text, _weight in prompt_parser.split_and(prompt):
        for entry in prompt_parser.schedule(text, steps):
            chunks = weighted_chunks(tokenizer, entry.text, embeddings)
            # Full chunks count as 75 (BREAK and comma backtracking leave them part empty).
            longest = max(longest, (len(chunks) - 1) * CHUNK_TOKENS + len(chunks[-1].ids))
    return TokenCount(tokens=longest, limit=max(1, math.ceil(longest / CHUNK_TOKENS)) * CHUNK_TOKENS)
