"""Reading textual inversion embedding files: every A1111 format loads, anything else is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.devtools.tiny_embedding import EmbeddingFormat, write_tiny_embedding
from modules.engine.embeddings import Embedding, load_embedding
from modules.errors import AddonLoadError


def test_a1111_pt_with_string_to_param(tmp_path: Path) -> None:
    path = tmp_path / "Style-One.pt"
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(3, 32, requires_grad=True)},
                "name": "ignored", "step": 1200, "sd_checkpoint": "abcdef0123", "sd_checkpoint_name": "v1-5"}, path)
    emb = load_embedding(path)
    assert (emb.name, emb.vector_count, emb.shape, emb.step) == ("Style-One", 3, 32, 1200)
    assert (emb.checkpoint_name, emb.checkpoint_hash) == ("v1-5", "abcdef0123")
    assert emb.vectors["clip"].dtype == torch.float32 and not emb.vectors["clip"].requires_grad


@pytest.mark.parametrize("fmt", [EmbeddingFormat.A1111_PT, EmbeddingFormat.SAFETENSORS, EmbeddingFormat.DIFFUSERS_BIN])
def test_sd_formats_from_the_factory(tmp_path: Path, fmt: EmbeddingFormat) -> None:
    path = write_tiny_embedding(tmp_path / f"tinyemb{fmt.value}", widths={"clip": 32}, vectors=2, seed=3)
    emb = load_embedding(path)
    assert (emb.name, emb.vector_count, emb.shape, set(emb.vectors)) == ("tinyemb", 2, 32, {"clip"})
    assert emb.step == (500 if fmt is EmbeddingFormat.A1111_PT else None)


def test_diffusers_concept_with_one_vector(tmp_path: Path) -> None:
    path = tmp_path / "cat-toy.bin"
    torch.save({"<cat-toy>": torch.randn(768)}, path)
    emb = load_embedding(path)
    assert (emb.vector_count, emb.shape, tuple(emb.vectors["clip"].shape)) == (1, 768, (1, 768))


def test_sdxl_safetensors_has_both_encoders(tmp_path: Path) -> None:
    path = tmp_path / "xlstyle.safetensors"
    save_file({"clip_l": torch.randn(4, 768), "clip_g": torch.randn(4, 1280).half()}, str(path))
    emb = load_embedding(path)
    assert emb.vector_count == 4 and emb.shape == 768 + 1280  # A1111 reports the two widths summed
    assert emb.vectors["clip_g"].dtype == torch.float32 and tuple(emb.vectors["clip_l"].shape) == (4, 768)


def test_factory_is_deterministic(tmp_path: Path) -> None:
    a = write_tiny_embedding(tmp_path / "a" / "e.safetensors", widths={"clip_l": 32, "clip_g": 64}, seed=1)
    b = write_tiny_embedding(tmp_path / "b" / "e.safetensors", widths={"clip_l": 32, "clip_g": 64}, seed=1)
    assert a.read_bytes() == b.read_bytes()


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.makedirs, (str(self.marker),)  # harmless, but proves whether code ran


def _refused(path: Path) -> str:
    with pytest.raises(AddonLoadError) as info:
        load_embedding(path)
    assert info.value.kind == "embedding" and info.value.path == str(path)
    return info.value.reason


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.pt", tmp_path / "code-ran"
    torch.save({"string_to_param": {"*": _RunsCode(marker)}}, path)
    assert "refused" in _refused(path)
    assert not marker.exists()


def test_broken_files_are_refused(tmp_path: Path) -> None:
    good_pt = write_tiny_embedding(tmp_path / "good.pt", widths={"clip": 32})
    good_st = write_tiny_embedding(tmp_path / "good.safetensors", widths={"clip": 32})
    cases = {
        "empty.pt": b"",
        "garbage.pt": b"not a pickle at all" * 10,
        "garbage.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......",
        "truncated.pt": good_pt.read_bytes()[: good_pt.stat().st_size // 2],
        "truncated.safetensors": good_st.read_bytes()[:-16],
        "notes.txt": b"hello",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        _refused(tmp_path / name)
    assert "empty" in _refused(tmp_path / "empty.pt")


def test_files_that_are_not_one_embedding_are_refused(tmp_path: Path) -> None:
    torch.save({"string_to_param": {"*": torch.randn(1, 8), "x": torch.randn(1, 8)}}, tmp_path / "two.pt")
    assert "exactly one" in _refused(tmp_path / "two.pt")
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(3, 1280)}, str(tmp_path / "odd.safetensors"))
    assert "vectors" in _refused(tmp_path / "odd.safetensors")
    save_file({"emb_params": torch.randn(76, 768)}, str(tmp_path / "long.safetensors"))
    assert "75" in _refused(tmp_path / "long.safetensors")
    torch.save({"string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(1, 8))})},
               tmp_path / "old.pt")
    assert "ParameterDict" in _refused(tmp_path / "old.pt")
    torch.save({"step": 3}, tmp_path / "nothing.pt")
    _refused(tmp_path / "nothing.pt")


def test_embedding_is_hashable_by_identity() -> None:
    emb = Embedding(name="e", vectors={"clip": torch.zeros(1, 4)})
    assert {emb: 1}[emb] == 1 and emb.vector_count == 1
