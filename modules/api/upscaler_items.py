"""A1111's upscaler lists: GET /sdapi/v1/upscalers and /sdapi/v1/realesrgan-models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modules.services.model_downloads import KNOWN_MODELS
from modules.services.upscaler_library import UpscalerLibrary
from modules.upscalers import UPSCALERS, UpscalerKind


def upscaler_items(library: UpscalerLibrary) -> list[dict[str, Any]]:
    """[{name, model_name, model_path, model_url, scale}]: the image upscalers (None, Lanczos,
    Nearest), then each model file with the factor it upscales by."""
    items: list[dict[str, Any]] = [{"name": u.name, "model_name": None, "model_path": None, "model_url": None,
                                    "scale": 4} for u in UPSCALERS if u.kind is UpscalerKind.IMAGE]
    urls = {model.filename.lower(): model.url for model in KNOWN_MODELS}  # where a standard model came from
    for item in library.files():
        items.append({"name": item.name, "model_name": item.folder, "model_path": str(item.path),
                      "model_url": urls.get(item.path.name.lower()), "scale": library.scale_of(item)})
    return items


def realesrgan_items(library: UpscalerLibrary, folder: Path) -> list[dict[str, Any]]:
    """[{name, path, scale}] for the models in models/RealESRGAN."""
    return [{"name": item.name, "path": str(item.path), "scale": library.scale_of(item)}
            for item in library.files(folder)]
