"""Face restoration models (GFPGAN, CodeFormer) through spandrel, and their work pasted back.

A file's tensors are read without running code (:func:`modules.engine.upscale_models.read_state_dict`:
safetensors, or a weights-only pickle); spandrel recognises the architecture, with
``spandrel_extra_arches`` for CodeFormer, in a registry of our own (the global one is left as it
is). Both run in float32 (spandrel marks them as not supporting half precision).

Each face is restored as A1111 does it: its crop resized to 512 x 512, scaled to [-1, 1], run
through the model (CodeFormer with its fidelity weight), scaled back, resized to the crop's size,
and blended in with a mask that fades to nothing at the crop's edges. Pixels outside the crop are
never touched. GFPGAN runs with its stored noise rather than fresh random noise, so the same image
restores to the same pixels every time (a seed reproduces its image, faces included).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.engine.face_detection import FaceBox, crop_box
from modules.engine.upscale_models import read_state_dict, with_extra_architectures
from modules.errors import AddonLoadError

log = logging.getLogger(__name__)

KIND = "face restorer"  # how errors name these files
FACE_SIZE = 512  # the side of the aligned faces both models were trained on
FEATHER = 0.125  # the blend mask rises from 0 at the crop's edge to 1 over this fraction of its side


class FaceArchitecture(enum.Enum):
    """The face models Atelier runs; values are spandrel's architecture ids and A1111's names."""

    GFPGAN = "GFPGAN"
    CODEFORMER = "CodeFormer"


@dataclass(frozen=True)
class FaceModel:
    """A loaded face model: its network on ``device`` in float32."""

    path: Path
    architecture: FaceArchitecture
    network: torch.nn.Module
    device: torch.device


def _refuse(path: Path, reason: str) -> AddonLoadError:
    return AddonLoadError(KIND, str(path), reason)


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors; a refusal names the file as a face restorer, not as an upscaler."""
    try:
        return read_state_dict(path)
    except AddonLoadError as exc:
        raise _refuse(path, exc.reason) from exc


def load_face_model(path: Path, expected: FaceArchitecture, device: torch.device | str = "cpu") -> FaceModel:
    """The ``expected`` face model in ``path``, on ``device``; :class:`AddonLoadError` naming the file
    when it is corrupt, unsafe, or another kind of model."""
    from spandrel import ModelLoader, UnsupportedModelError, canonicalize_state_dict

    # 1. The tensors, 2. the architecture spandrel recognises in them, 3. the one asked for.
    state_dict = _tensors(path)
    try:
        descriptor = ModelLoader(registry=with_extra_architectures()).load_from_state_dict(  # type: ignore[arg-type]
            canonicalize_state_dict(state_dict))
    except UnsupportedModelError as exc:
        raise _refuse(path, f"not a {expected.value} model (spandrel recognises no architecture in it)") from exc
    except (KeyError, RuntimeError, ValueError) as exc:
        raise _refuse(path, f"its weights do not fit the architecture they resemble ({type(exc).__name__})") from exc
    found = descriptor.architecture.id
    if found != expected.value:
        raise _refuse(path, f"a {descriptor.architecture.name} model, not {expected.value}")
    # 4. Placed for inference, in float32.
    device = torch.device(device)
    network = descriptor.model.to(device=device, dtype=torch.float32).eval()
    log.info("Face restorer %s: %s on %s", path.name, found, device)
    return FaceModel(path=path, architecture=expected, network=network, device=device)


def _to_tensor(face: Image.Image, device: torch.device) -> torch.Tensor:
    """A 512 px RGB face as (1, 3, 512, 512) floats in [-1, 1], the range both models work in."""
    array = np.asarray(face.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)


def _to_image(pixels: torch.Tensor) -> Image.Image:
    array = pixels[0].float().clamp(-1.0, 1.0).add(1.0).mul(127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def run_face_model(model: FaceModel, face: Image.Image, codeformer_weight: float = 0.5) -> Image.Image:
    """One aligned ``FACE_SIZE`` px face through the model. ``codeformer_weight`` is CodeFormer's
    fidelity ``w`` (0: the strongest restoration, 1: closest to the input); spandrel's descriptor call
    cannot pass it, so the network is called directly, as it is for GFPGAN's fixed noise."""
    pixels = _to_tensor(face, model.device)
    with torch.inference_mode():
        if model.architecture is FaceArchitecture.CODEFORMER:
            out = model.network(pixels, weight=codeformer_weight)[0]
        else:
            out = model.network(pixels, return_rgb=False, randomize_noise=False)[0]
    return _to_image(out)


def feather_mask(width: int, height: int, feather: float = FEATHER) -> np.ndarray:
    """(height, width) weights: 0 on the crop's outermost pixels, rising linearly to 1 over
    ``feather`` of the shorter side, so a pasted face has no seam."""
    ramp = max(1.0, min(width, height) * feather)
    across = np.minimum(np.arange(width), np.arange(width)[::-1]).astype(np.float32)
    down = np.minimum(np.arange(height), np.arange(height)[::-1]).astype(np.float32)
    return np.clip(np.minimum(down[:, None], across[None, :]) / ramp, 0.0, 1.0)


def paste_face(image: Image.Image, face: Image.Image, crop: FaceBox) -> Image.Image:
    """``image`` with ``face`` (any size: resized to the crop) blended into ``crop`` through
    :func:`feather_mask`; every pixel outside ``crop`` is left exactly as it was."""
    original = np.asarray(image.crop(crop.as_tuple()), dtype=np.float32)
    restored = np.asarray(face.resize((crop.width, crop.height), Image.Resampling.LANCZOS), dtype=np.float32)
    mask = feather_mask(crop.width, crop.height)[:, :, None]
    blended = np.rint(original * (1.0 - mask) + restored * mask).clip(0, 255).astype(np.uint8)
    result = image.copy()
    result.paste(Image.fromarray(blended, "RGB"), (crop.left, crop.top))
    return result


def restore_faces(image: Image.Image, faces: Sequence[FaceBox],
                  restore: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """``image`` (RGB) with each face's crop run through ``restore`` (a ``FACE_SIZE`` px face in, one
    out) and pasted back, one face after the other. Boxes outside the image are skipped."""
    result = image.convert("RGB")
    for face in faces:
        box = face.clipped(result.width, result.height)
        if box.empty:
            continue
        crop = crop_box(box, result.width, result.height)
        aligned = result.crop(crop.as_tuple()).resize((FACE_SIZE, FACE_SIZE), Image.Resampling.LANCZOS)
        result = paste_face(result, restore(aligned), crop)
    return result
