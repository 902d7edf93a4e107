"""Upscaler models (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, SCUNet, ...) through spandrel.

A file's state dict is read without running code (safetensors, or a pickle with
``weights_only=True``), spandrel recognises its architecture, and :func:`upscale_to` runs it over a
PIL image, tiled, as many passes as reaching the requested size takes (A1111 stops after three),
then resizes to that size exactly with Lanczos.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.engine.checkpoint_files import load_pickle_state_dict
from modules.engine.upscale_tiles import TileSettings, tiled_forward
from modules.errors import AddonLoadError, ModelLoadError

log = logging.getLogger(__name__)

KIND = "upscaler"  # how errors name these files
SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt")
MAX_PASSES = 3  # A1111: the model runs at most three times to reach the wanted size
DEFAULT_TILES = TileSettings()  # A1111's ESRGAN_tile 192, ESRGAN_tile_overlap 8


@dataclass(frozen=True)
class UpscaleModel:
    """A loaded upscaler: spandrel's descriptor on ``device`` in ``dtype``."""

    path: Path
    descriptor: object  # spandrel.ImageModelDescriptor (its typing is generic over the module)
    device: torch.device
    dtype: torch.dtype

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)  # type: ignore[attr-defined]

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.id)  # type: ignore[attr-defined]


def _refuse(path: Path, reason: str) -> AddonLoadError:
    return AddonLoadError(KIND, str(path), reason)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors; never unpickles anything but tensors. Real-ESRGAN's ``params_ema`` /
    ``params`` wrappers are spandrel's to unwrap."""
    suffix = path.suffix.lower()
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise _refuse(path, f"not a readable .safetensors file ({type(exc).__name__}: {exc})") from exc
    if suffix not in PICKLE_SUFFIXES:
        raise _refuse(path, f"unsupported file type {suffix!r}; use .pth or .safetensors")
    try:
        return _pickle_tensors(path)
    except ModelLoadError as exc:
        raise _refuse(path, exc.reason) from exc


def _pickle_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A weights-only pickle, keeping one level of nesting (``{"params_ema": {...}}``) as dotted keys
    spandrel's canonicalisation understands."""
    import pickle
    import zipfile

    if not zipfile.is_zipfile(path):
        return load_pickle_state_dict(path)  # refuses it, naming the reason
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return load_pickle_state_dict(path)  # the same refusal as checkpoints get
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise _refuse(path, f"unreadable or truncated file ({type(exc).__name__})") from exc
    if not isinstance(data, dict):
        raise _refuse(path, "the file does not hold a state dict")
    for wrapper in ("params_ema", "params", "state_dict", "model"):
        if isinstance(data.get(wrapper), dict):
            data = data[wrapper]
            break
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise _refuse(path, "the file holds no tensors")
    return tensors


def _dtype_for(descriptor: object, device: torch.device) -> torch.dtype:
    """Half precision on a GPU where the architecture supports it; float32 otherwise."""
    if device.type != "cuda":
        return torch.float32
    if descriptor.supports_half:  # type: ignore[attr-defined]
        return torch.float16
    if descriptor.supports_bfloat16 and torch.cuda.is_bf16_supported():  # type: ignore[attr-defined]
        return torch.bfloat16
    return torch.float32


def with_extra_architectures() -> object:
    """spandrel's registry plus its extra architectures (non-commercial licences, so a separate
    package: CodeFormer, SRFormer, ...), as a copy: the global registry stays as it is."""
    import spandrel
    import spandrel_extra_arches

    registry = spandrel.MAIN_REGISTRY.copy()
    registry.add(*spandrel_extra_arches.EXTRA_REGISTRY)
    return registry


def _only_in_extras(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The name of the extra architecture ``state_dict`` is, when it is one."""
    from spandrel import ModelLoader, UnsupportedModelError

    try:
        return str(ModelLoader(registry=with_extra_architectures()).load_from_state_dict(  # type: ignore[arg-type]
            state_dict).architecture.name)
    except (UnsupportedModelError, KeyError, RuntimeError, ValueError):
        return None


def load_upscale_model(path: Path, device: torch.device | str = "cpu", extra_architectures: bool = False) -> UpscaleModel:
    """The upscaler in ``path`` on ``device``; :class:`AddonLoadError` naming the file when it is
    corrupt, unsafe, or not an image upscaler (a LoRA, a checkpoint, a face restorer...).
    ``extra_architectures``: also spandrel's extra ones (setting ``upscaler_extra_architectures``)."""
    from spandrel import (
        ImageModelDescriptor,
        ModelLoader,
        UnsupportedModelError,
        canonicalize_state_dict,
    )

    # 1. The tensors, 2. the architecture spandrel recognises in them.
    state_dict = canonicalize_state_dict(read_state_dict(path))
    loader = ModelLoader(registry=with_extra_architectures()) if extra_architectures else ModelLoader()  # type: ignore[arg-type]
    try:
        descriptor = loader.load_from_state_dict(state_dict)
    except UnsupportedModelError as exc:
        extra = None if extra_architectures else _only_in_extras(state_dict)
        if extra is not None:
            raise _refuse(path, f"a {extra} model: its architecture is in spandrel's extra package, under a "
                                "non-commercial licence; set upscaler_extra_architectures: true in config.yaml "
                                "to use it") from exc
        raise _refuse(path, "not an upscaler model spandrel knows (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, "
                            "SCUNet, ...)") from exc
    except (KeyError, RuntimeError, ValueError) as exc:
        raise _refuse(path, f"its weights do not fit the architecture they resemble ({type(exc).__name__})") from exc
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.purpose not in ("SR", "Restoration"):
        raise _refuse(path, f"a {descriptor.architecture.name} model for {descriptor.purpose}, not an upscaler")
    # 3. Placed for inference.
    device = torch.device(device)
    dtype = _dtype_for(descriptor, device)
    descriptor.to(device)
    if dtype is torch.float16:
        descriptor.half()
    elif dtype is torch.bfloat16:
        descriptor.bfloat16()
    descriptor.eval()
    log.info("Upscaler %s: %s, %dx, %s on %s", path.name, descriptor.architecture.id, descriptor.scale, dtype, device)
    return UpscaleModel(path=path, descriptor=descriptor, device=device, dtype=dtype)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def _to_image(pixels: torch.Tensor) -> Image.Image:
    array = pixels[0].float().clamp(0.0, 1.0).permute(1, 2, 0).mul(255.0).round().byte().cpu().numpy()
    return Image.fromarray(array, "RGB")


def upscale_tensor(model: UpscaleModel, pixels: torch.Tensor, tiles: TileSettings = DEFAULT_TILES) -> torch.Tensor:
    """One pass of the model over (1, 3, H, W) floats in [0, 1]: (1, 3, H * scale, W * scale), float32 on the CPU."""
    def run(tile: torch.Tensor) -> torch.Tensor:
        return model.descriptor(tile.to(model.device, model.dtype)).float().cpu()  # type: ignore[operator]

    with torch.inference_mode():
        return tiled_forward(run, pixels, model.scale, tiles)


def upscale_to(model: UpscaleModel, image: Image.Image, size: tuple[int, int],
               tiles: TileSettings = DEFAULT_TILES) -> Image.Image:
    """``image`` upscaled by the model until it covers ``size`` (width, height), at most
    :data:`MAX_PASSES` passes, then resized to ``size`` exactly with Lanczos."""
    width, height = size
    current = image.convert("RGB")
    for _ in range(MAX_PASSES):
        if current.width >= width and current.height >= height:
            break
        current = _to_image(upscale_tensor(model, _to_tensor(current), tiles))
    if current.size != (width, height):
        current = current.resize((width, height), Image.Resampling.LANCZOS)
    return current
