"""Random face restorer files and a detector that finds the faces a test says, shared by the face
restoration tests. Each file (300-350 MB) is written once per test session, when first needed."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from modules.engine.face_detection import FaceBox


@dataclass(frozen=True)
class FixedFaces:
    """A detector that "finds" the given boxes in every image (none: no face anywhere)."""

    boxes: tuple[FaceBox, ...] = ()

    def detect(self, image: Image.Image) -> list[FaceBox]:
        return list(self.boxes)


@functools.cache
def _written(path: Path, kind: str) -> Path:
    from modules.devtools.tiny_restorer import RestorerKind, write_tiny_restorer

    return write_tiny_restorer(path, RestorerKind(kind))


def restorer_file(tmp_path_factory: pytest.TempPathFactory, kind: str, suffix: str = ".pth") -> Path:
    """The session's random ``kind`` ("gfpgan" or "codeformer", seed 0) as ``suffix`` (.pth or
    .safetensors), written when first asked for."""
    return _written(tmp_path_factory.getbasetemp() / "tiny-restorers" / f"{kind}{suffix}", kind)


def install(source: Path, folder: Path, name: str) -> Path:
    """``source`` linked into a models folder as ``name`` (no copy of hundreds of megabytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    target.symlink_to(source)
    return target
