"""Reading checkpoint files safely: validate before loading, never unpickle code.

A checkpoint is checked before any weights are read: an empty file, a git-LFS pointer, a
truncated or malformed safetensors header, or a pickle that wants more than plain tensors is
refused with a :class:`ModelLoadError` that names the file and the reason.
"""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modules.errors import ModelLoadError, UnsafeCheckpointError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
GGUF_SUFFIXES = (".gguf",)  # quantized transformers (modules.engine.quantized)
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + (".ckpt",) + GGUF_SUFFIXES
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit; larger headers are hostile
_LFS_MAGIC = b"version https://git-lfs"

if TYPE_CHECKING:  # torch is imported where a pickle is loaded: the checkpoint list needs only the names above
    import torch


@dataclass(frozen=True)
class TensorIndex:
    """Names and shapes of a checkpoint's tensors, read without loading their data."""

    shapes: Mapping[str, tuple[int, ...]]
    # safetensors dtype names ("F16", "BF16", "F8_E4M3", ...) by tensor; empty for pickles
    dtypes: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)  # the safetensors header's __metadata__

    def __contains__(self, key: str) -> bool:
        return key in self.shapes

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.shapes)

    def shape(self, key: str) -> tuple[int, ...] | None:
        return self.shapes.get(key)


def _refuse(path: Path, reason: str) -> ModelLoadError:
    return ModelLoadError(str(path), reason)


def _check_not_placeholder(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _refuse(path, f"cannot read the file ({exc.strerror})") from exc
    if size == 0:
        raise _refuse(path, "the file is empty (0 bytes); the download or copy did not finish")
    with path.open("rb") as f:
        head = f.read(len(_LFS_MAGIC))
    if head == _LFS_MAGIC:
        raise _refuse(path, "this is a git-LFS pointer, not the weights; fetch it with `git lfs pull`")


def read_safetensors_index(path: Path) -> TensorIndex:
    """Parse and sanity-check a safetensors header: sizes, offsets and dtypes, without loading."""
    _check_not_placeholder(path)
    size = path.stat().st_size
    with path.open("rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise _refuse(path, "too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(_MAX_HEADER_BYTES, size - 8):
            raise _refuse(path, f"header length {header_len} is impossible for a {size}-byte file "
                                "(truncated or not a safetensors file)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _refuse(path, "the safetensors header is not valid JSON (not a safetensors file?)") from exc
    if not isinstance(header, dict):
        raise _refuse(path, "the safetensors header is not a JSON object")
    data_size = size - 8 - header_len
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    raw_metadata = header.get("__metadata__")
    metadata = {str(k): str(v) for k, v in raw_metadata.items()} if isinstance(raw_metadata, dict) else {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            shape = tuple(int(d) for d in entry["shape"])
        except (TypeError, KeyError, ValueError) as exc:
            raise _refuse(path, f"tensor {name!r} has a malformed header entry") from exc
        if not 0 <= start <= end <= data_size:
            raise _refuse(path, f"the file is truncated: tensor {name!r} ends at byte {end} "
                                f"but only {data_size} bytes of data are present")
        shapes[name] = shape
        dtypes[name] = str(entry.get("dtype", ""))
    if not shapes:
        raise _refuse(path, "the file holds no tensors")
    return TensorIndex(shapes=shapes, dtypes=dtypes, metadata=metadata)


def load_pickle_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a ``.ckpt`` with ``weights_only=True``: plain tensors only, never arbitrary code."""
    import torch

    _check_not_placeholder(path)
    if not zipfile.is_zipfile(path):
        raise _refuse(path, "not a PyTorch checkpoint (not a zip archive); the file may be truncated")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(str(path), "refused: the pickle asks to build objects other than "
                                    "tensors (possible code execution). Convert it to .safetensors "
                                    f"from a trusted source. Detail: {str(exc).splitlines()[0]}") from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _refuse(path, f"unreadable or truncated checkpoint ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from exc
    while isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise _refuse(path, "the checkpoint does not hold a state dict")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise _refuse(path, "the checkpoint holds no tensors")
    return tensors


def index_of_state_dict(state_dict: Mapping[str, torch.Tensor]) -> TensorIndex:
    return TensorIndex(shapes={k: tuple(v.shape) for k, v in state_dict.items()})
