"""Where the T5 and LLM tokenizers of the flow families come from, and finding a downloaded copy.

No wheel carries these tokenizers and single-file checkpoints do not bundle them, so they are
downloaded once (by :mod:`modules.services.tokenizer_downloads`) from the model's own repository
into the tokenizers folder, one sub-folder per tokenizer (:attr:`TokenizerSource.folder_name`).
Only the fast tokenizer files (``tokenizer.json`` and its config) are fetched: they load with the
``tokenizers`` library alone, without sentencepiece.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modules.errors import MissingComponentError

HF_BASE_URL = "https://huggingface.co"


@dataclass(frozen=True)
class TokenizerSource:
    """One tokenizer: the repository and sub-folder it is downloaded from, and the files it needs."""

    name: str  # the key families use ("t5xxl", "qwen3")
    repo_id: str
    subfolder: str  # "" for the repository root
    files: tuple[str, ...]
    folder_name: str  # the sub-folder of the tokenizers folder holding the downloaded copy
    used_by: str  # the families, in words, for messages

    @property
    def required(self) -> tuple[str, ...]:
        """The files whose presence makes a copy usable (the rest are optional config)."""
        return ("tokenizer.json",)

    def url(self) -> str:
        sub = f"/tree/main/{self.subfolder}" if self.subfolder else ""
        base = os.environ.get("HF_ENDPOINT", HF_BASE_URL).rstrip("/")  # a mirror, when the hub client uses one
        return f"{base}/{self.repo_id}{sub}"


# T5: the fast tokenizer files of the T5-XXL encoder FLUX.1 and SD3.5 use (the same SentencePiece
# vocabulary as google/t5-v1_1-xxl, which ships only spiece.model and so would need sentencepiece).
# Followed: diffusers FluxPipeline's ``tokenizer_2`` (T5TokenizerFast) in the FLUX.1-schnell repo.
# Qwen3: the LLM tokenizer of Z-Image (Qwen3-4B text encoder, diffusers ZImagePipeline ``tokenizer``)
# and FLUX.2 klein (Qwen3 encoder, Flux2KleinPipeline ``tokenizer``); Qwen3 models share one tokenizer.
TOKENIZERS: tuple[TokenizerSource, ...] = (
    TokenizerSource("t5xxl", "black-forest-labs/FLUX.1-schnell", "tokenizer_2",
                    ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
                    "t5-v1_1-xxl", "FLUX.1, SD3.5"),
    TokenizerSource("qwen3", "Qwen/Qwen3-4B", "",
                    ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"),
                    "Qwen3", "Z-Image, FLUX.2 klein"),
)


def tokenizer_source(name: str) -> TokenizerSource:
    """The table entry for ``name``; KeyError naming the known ones otherwise."""
    for source in TOKENIZERS:
        if source.name == name:
            return source
    raise KeyError(f"unknown tokenizer {name!r}; known: {', '.join(s.name for s in TOKENIZERS)}")


def find_tokenizer(name: str, folder: Path | None) -> Path | None:
    """The folder of a usable downloaded copy of tokenizer ``name`` under ``folder``, or None."""
    if folder is None:
        return None
    source = tokenizer_source(name)
    candidate = folder / source.folder_name
    if all((candidate / f).is_file() for f in source.required):
        return candidate
    return None


def missing_tokenizer(checkpoint: Path, name: str, folder: Path | None) -> MissingComponentError:
    """The error a family raises when tokenizer ``name`` is needed and absent (the UI and API offer
    the download from it: ``component`` is ``tokenizer:<name>``)."""
    source = tokenizer_source(name)
    where = str(folder / source.folder_name) if folder is not None else f"models/tokenizers/{source.folder_name}"
    return MissingComponentError(str(checkpoint), f"tokenizer:{name}", ", ".join(source.files), where, source.url())


def require_tokenizer(checkpoint: Path, name: str, folder: Path | None) -> Path:
    """:func:`find_tokenizer`, raising the download-offer error when there is no copy."""
    found = find_tokenizer(name, folder)
    if found is None:
        raise missing_tokenizer(checkpoint, name, folder)
    return found
