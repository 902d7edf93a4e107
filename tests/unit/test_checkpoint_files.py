"""Hostile and broken model files are refused with a clear reason, before any weights are read."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.engine.checkpoint_files import (
    load_pickle_state_dict,
    read_safetensors_index,
)
from modules.errors import ModelLoadError, UnsafeCheckpointError


def good_safetensors(path: Path) -> Path:
    save_file({"a": torch.zeros(4, 4), "b": torch.ones(2)}, str(path))
    return path


def test_a_valid_file_lists_names_and_shapes(tmp_path: Path) -> None:
    index = read_safetensors_index(good_safetensors(tmp_path / "ok.safetensors"))
    assert index.shapes == {"a": (4, 4), "b": (2,)}


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "git-LFS pointer"),
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 10**12) + b"{}", "impossible"),
    (struct.pack("<Q", 5) + b"{nope", "not valid JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_broken_safetensors_are_refused(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=reason) as err:
        read_safetensors_index(path)
    assert str(path) in str(err.value)


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    path = good_safetensors(tmp_path / "t.safetensors")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_safetensors_index(path)


def test_header_offsets_outside_the_file_are_refused(tmp_path: Path) -> None:
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4096]}}).encode()
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(ModelLoadError, match="truncated"):
        read_safetensors_index(path)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a hostile checkpoint does: run a command while unpickling
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        load_pickle_state_dict(path)
    assert not marker.exists()


def test_plain_pickle_that_is_not_a_torch_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    path.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(ModelLoadError, match="not a PyTorch checkpoint"):
        load_pickle_state_dict(path)


def test_weights_only_ckpt_loads_its_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "fine.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "global_step": 10}, path)
    assert torch.equal(load_pickle_state_dict(path)["w"], torch.arange(3.0))


def test_no_torch_load_without_weights_only_anywhere() -> None:
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for source in [*root.glob("modules/**/*.py"), *root.glob("extensions/**/*.py"), root / "app.py"]:
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{source.relative_to(root)}:{number}")
    assert offenders == []
