"""The token counter as A1111 counts: extra-network tags left out, an embedding's name counted as its
vectors, shown as "N/<next multiple of 75>"."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from modules.devtools.tiny_embedding import write_tiny_embedding
from modules.devtools.tiny_model import TinyArch
from modules.services.addon_library import AddonLibrary
from modules.services.addons import AddonKind, AddonRegistry
from modules.services.hashing import HashCache
from modules.services.token_counter import count_prompt_tokens


def a1111_label(tokens: int) -> str:
    """A1111's counter: token count over math.ceil(max(count, 1) / 75) * 75."""
    return f"{tokens}/{math.ceil(max(tokens, 1) / 75) * 75}"


@pytest.fixture
def library(tmp_path: Path) -> AddonLibrary:
    hashes = HashCache(tmp_path / "hashes.json")
    embeddings = tmp_path / "embeddings"
    write_tiny_embedding(embeddings / "threevec.pt", arch=TinyArch.SD15, vectors=3, seed=1)
    return AddonLibrary(AddonRegistry(AddonKind.LORA, (tmp_path / "Lora",), hashes),
                        AddonRegistry(AddonKind.EMBEDDING, (embeddings,), hashes),
                        AddonRegistry(AddonKind.VAE, (tmp_path / "VAE",), hashes))


def count(text: str, library: AddonLibrary) -> str:
    return str(count_prompt_tokens(text, 20, library, None))


def test_extra_network_tags_are_left_out(library: AddonLibrary) -> None:
    assert count("a photo of a cat", library) == a1111_label(5)
    assert count("a photo of a cat <lora:style:0.8>", library) == a1111_label(5)
    assert count("<hypernet:thing:1> a photo <lora:x:bad> of a cat", library) == a1111_label(5)


def test_an_embedding_counts_as_its_vectors(library: AddonLibrary) -> None:
    assert count("threevec", library) == a1111_label(3)
    assert count("a photo of threevec", library) == a1111_label(6)


def test_the_limit_is_the_next_chunk_boundary(library: AddonLibrary) -> None:
    assert count(" ".join(["word"] * 75), library) == "75/75"
    assert count(" ".join(["word"] * 76), library) == "76/150"
    assert count("", library) == "0/75"
