"""Where the faces in an image are, and which square crop of it a face model sees for each.

A detector is anything with ``detect(image) -> list[FaceBox]`` (:class:`FaceDetector`), so a test or
a better detector can stand in for the default: OpenCV's frontal-face Haar cascade, which ships
inside opencv-python-headless (no download, no network) and is imported only when it first runs.

A1111 aligns each face on five landmarks before restoring it; a box detector has no landmarks, so
each box is grown by :data:`CROP_MARGIN` on every side into a square around it (about the framing
of the aligned 512 px faces GFPGAN and CodeFormer were trained on), moved inside the image where
it fits and clipped to it where it does not. Pure numpy and PIL here: no torch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

# The square crop's side is the box's longer side plus this fraction of it on each side (2x the side).
CROP_MARGIN = 0.5
HAAR_CASCADE = "haarcascade_frontalface_default.xml"


@dataclass(frozen=True)
class FaceBox:
    """A rectangle of an image in pixels: ``left``/``top`` inclusive, ``right``/``bottom`` exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def empty(self) -> bool:
        return self.width <= 0 or self.height <= 0

    def as_tuple(self) -> tuple[int, int, int, int]:
        """PIL's ``(left, upper, right, lower)``."""
        return self.left, self.top, self.right, self.bottom

    def clipped(self, width: int, height: int) -> FaceBox:
        """The part of this box inside a ``width`` x ``height`` image (possibly :attr:`empty`)."""
        return FaceBox(max(self.left, 0), max(self.top, 0), min(self.right, width), min(self.bottom, height))

    def contains(self, x: int, y: int) -> bool:
        return self.left <= x < self.right and self.top <= y < self.bottom


class FaceDetector(Protocol):
    """Finds faces: one box per face, in pixels of ``image``."""

    def detect(self, image: Image.Image) -> list[FaceBox]: ...


def crop_box(face: FaceBox, width: int, height: int, margin: float = CROP_MARGIN) -> FaceBox:
    """The region of a ``width`` x ``height`` image a face model restores for ``face``: a square
    ``margin`` larger than the face on every side, centred on it, shifted inside the image where it
    fits, clipped to the image where it does not."""
    # 1. The square around the face's centre.
    side = max(1, round(max(face.width, face.height) * (1 + 2 * margin)))
    left = round((face.left + face.right - side) / 2)
    top = round((face.top + face.bottom - side) / 2)
    # 2. Inside the image when the image is large enough (the face stays inside it either way).
    left = min(max(left, 0), max(width - side, 0))
    top = min(max(top, 0), max(height - side, 0))
    # 3. Whatever still sticks out is cut off.
    return FaceBox(left, top, left + side, top + side).clipped(width, height)


class HaarCascadeDetector:
    """OpenCV's frontal-face Haar cascade (the default detector). Its classifier is loaded on first
    use and used by one thread at a time (OpenCV's cascade keeps state while it scans)."""

    def __init__(self, cascade_file: str | None = None, scale_factor: float = 1.1, min_neighbors: int = 5,
                 min_size: int = 24) -> None:
        self._cascade_file = cascade_file  # None: the frontal-face cascade that ships with OpenCV
        self._scale_factor = scale_factor
        self._min_neighbors = min_neighbors
        self._min_size = min_size
        self._classifier: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        import cv2

        path = self._cascade_file or cv2.data.haarcascades + HAAR_CASCADE
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            raise RuntimeError(f"OpenCV could not read the face detector cascade {path}")
        return classifier

    def detect(self, image: Image.Image) -> list[FaceBox]:
        gray = np.ascontiguousarray(np.asarray(image.convert("L")))
        with self._lock:
            if self._classifier is None:
                self._classifier = self._load()
            found = self._classifier.detectMultiScale(gray, scaleFactor=self._scale_factor,
                                                      minNeighbors=self._min_neighbors,
                                                      minSize=(self._min_size, self._min_size))
        return [FaceBox(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in found]
