"""A1111's face restorers, CodeFormer and GFPGAN: their model files, and every face of an image restored.

Model files live in A1111's folders (models/Codeformer, models/GFPGAN, and the folders
``--codeformer-models-path`` / ``--gfpgan-models-path`` add), listed again on every call, so a file
dropped in shows up without a restart. A1111's own download name is taken first, then a file whose
name says which restorer it is, then any other model file; facexlib's detection and parsing weights,
which A1111 keeps in these folders too, are not restorers and never taken for one.

Faces are found by a :class:`~modules.engine.face_detection.FaceDetector` (OpenCV's Haar cascade
unless one is given: tests give their own boxes). One model is kept loaded, on the device of the
job that used it last. Torch, spandrel and OpenCV are imported when first needed, never at import.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from modules.engine.face_detection import FaceDetector
from modules.errors import FieldError, ValidationError
from modules.params import DEFAULT_CODE_FORMER_WEIGHT, FACE_RESTORERS, code_former_weight_problem

if TYPE_CHECKING:
    from modules.engine.face_restoration import FaceModel

log = logging.getLogger(__name__)

SUFFIXES = (".pth", ".safetensors")
CODEFORMER = "CodeFormer"
GFPGAN = "GFPGAN"
# The file A1111 downloads for each restorer: what the "put ... in ..." hint names.
DOWNLOAD_NAMES = {CODEFORMER: "codeformer-v0.1.0.pth", GFPGAN: "GFPGANv1.4.pth"}
# facexlib's face detection and parsing weights, which A1111 downloads into these folders too.
HELPER_FILES = frozenset({"detection_resnet50_final.pth", "detection_mobilenet0.25_final.pth",
                          "parsing_parsenet.pth", "parsing_bisenet.pth"})


@dataclass(frozen=True)
class ModelFile:
    """A restorer's model file, and what identifies its contents for the loaded-model cache."""

    restorer: str
    path: Path

    def version(self) -> tuple[str, int, int]:
        stat = self.path.stat()
        return str(self.path), stat.st_size, stat.st_mtime_ns


class FaceRestorers:
    """Finds the restorers' model files, and restores faces with them."""

    def __init__(self, gfpgan_dirs: Sequence[Path], codeformer_dirs: Sequence[Path],
                 detector: FaceDetector | None = None) -> None:
        self._folders = {CODEFORMER: tuple(codeformer_dirs), GFPGAN: tuple(gfpgan_dirs)}
        self._detector = detector  # None: OpenCV's Haar cascade, made when first needed
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[tuple[str, int, int], str], FaceModel] | None = None

    # --- listing ------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """A1111's restorers, whether or not their models are here: ["CodeFormer", "GFPGAN"]."""
        return list(FACE_RESTORERS)

    def folders(self, name: str) -> tuple[Path, ...]:
        """Where the restorer's model files are looked for, first folder first."""
        return self._folders[self._canonical(name, "face_restoration_model")]

    def model_file(self, name: str) -> ModelFile | None:
        """The file the restorer runs: A1111's download name, then a file named after the restorer,
        then any other model file (each group in name order); None when its folders hold none."""
        restorer = self._canonical(name, "face_restoration_model")
        found = [path for folder in self._folders[restorer] if folder.is_dir()
                 for path in sorted(folder.rglob("*"), key=lambda p: str(p).lower())
                 if path.suffix.lower() in SUFFIXES and path.name.lower() not in HELPER_FILES and path.is_file()]

        def rank(path: Path) -> int:
            if path.name.lower() == DOWNLOAD_NAMES[restorer].lower():
                return 0
            return 1 if restorer.lower() in path.name.lower() else 2

        return ModelFile(restorer, min(found, key=rank)) if found else None

    def available(self) -> list[str]:
        """The restorers with a model file present."""
        return [name for name in self.names() if self.model_file(name) is not None]

    def require(self, name: str, field: str) -> None:
        """Refuse (``ValidationError`` on ``field``) an unknown restorer, listing the names, or one
        without a model file, saying which file to put in which folder."""
        restorer = self._canonical(name, field)
        if self.model_file(restorer) is None:
            folders = self._folders[restorer]
            where = " or ".join(str(folder) for folder in folders) if folders else "its models folder"
            raise ValidationError([FieldError(field, f"no {restorer} model is installed: put "
                                                     f"{DOWNLOAD_NAMES[restorer]} in {where}")])

    def _canonical(self, name: str, field: str) -> str:
        wanted = name.strip().lower() if isinstance(name, str) else None
        found = next((known for known in FACE_RESTORERS if known.lower() == wanted), None)
        if found is None:
            raise ValidationError([FieldError(field, f"unknown face restorer {name!r}; valid: "
                                                     f"{', '.join(FACE_RESTORERS)}")])
        return found

    # --- restoring ----------------------------------------------------------------------------

    @property
    def detector(self) -> FaceDetector:
        with self._lock:
            if self._detector is None:
                from modules.engine.face_detection import HaarCascadeDetector

                self._detector = HaarCascadeDetector()
            return self._detector

    def restore(self, image: Image.Image, name: str, codeformer_weight: float = DEFAULT_CODE_FORMER_WEIGHT,
                device: object = "cpu") -> Image.Image:
        """``image`` with every face the detector finds restored at full strength by the restorer
        ``name`` (``codeformer_weight``: CodeFormer's fidelity, 0 strongest to 1 closest to the input).
        RGB in, RGB out, the same size; no face found: the image as it was."""
        from modules.engine.face_restoration import restore_faces, run_face_model

        # 1. What to run, checked before any work.
        self.require(name, "face_restoration_model")
        problem = code_former_weight_problem(codeformer_weight)
        if problem is not None:
            raise ValidationError([FieldError("code_former_weight", problem)])
        # 2. The faces; none: nothing to load.
        image = image.convert("RGB")
        faces = self.detector.detect(image)
        if not faces:
            return image
        # 3. Each face through the model, pasted back.
        model = self._model(name, device)
        restored = restore_faces(image, faces, lambda face: run_face_model(model, face, codeformer_weight))
        log.info("Face restoration: %d face(s) with %s", len(faces), model.path.name)
        return restored

    def _model(self, name: str, device: object) -> FaceModel:
        """The restorer's model on ``device``, loaded unless it is the one kept."""
        from modules.engine.face_restoration import FaceArchitecture, load_face_model

        item = self.model_file(name)
        if item is None:  # removed since it was required
            self.require(name, "face_restoration_model")
        assert item is not None
        key = (item.version(), str(device))
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            self._loaded = None  # the previous model's memory goes before the next one loads
            loaded = load_face_model(item.path, FaceArchitecture(item.restorer), device)  # type: ignore[arg-type]
            self._loaded = (key, loaded)
            return loaded

    def release(self) -> None:
        """Forget the loaded model (its memory is freed with it)."""
        with self._lock:
            self._loaded = None
