"""CLIP image encoders for IP-Adapter units, from ``models/clip_vision`` (A1111's folder).

Owns: finding the encoder an IP-Adapter needs (by width: a plain adapter takes the projected image
embedding, so the encoder's ``projection_dim`` must match; a plus adapter takes the penultimate
layer's tokens, so its ``hidden_size`` must), loading it offline from a transformers folder or a
single file with transformers' keys (A1111's ``clip_h.pth`` / ``clip_g.pth``, the IP-Adapter
repository's ``model.safetensors`` renamed) with a ``<name>.json`` config beside it or one read off
the weights' shapes, and encoding an image as diffusers' pipelines do (the unconditional side:
zeros for plain adapters, the encoding of a black-zero input for plus ones).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cn_adapters import UNREADABLE

if TYPE_CHECKING:  # torch and transformers are imported where used: loading the extension must not import them
    import torch
    from transformers import CLIPVisionModelWithProjection

log = logging.getLogger(__name__)

_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# heads of the released encoders by width (ViT-L, ViT-H, ViT-bigG); others: 64-wide heads
_HEADS = {1024: 16, 1280: 16, 1664: 16}
_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class EncoderNeed:
    hidden_states: bool  # True: the penultimate layer's tokens (plus); False: the projected embedding (plain)
    width: int  # hidden_size when hidden_states, else projection_dim


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _config_from_shapes(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """A CLIPVisionConfig's values read off the weights (what the files do not say: heads, activation)."""
    hidden = shapes["vision_model.embeddings.class_embedding"][0]
    patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
    positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
    layers = 1 + max(int(m.group(1)) for k in shapes if (m := _LAYER.match(k)))
    return {
        "hidden_size": hidden,
        "intermediate_size": shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": layers,
        "num_attention_heads": _HEADS.get(hidden, max(1, hidden // 64)),
        "patch_size": patch,
        "image_size": math.isqrt(positions - 1) * patch,
        "projection_dim": shapes["visual_projection.weight"][0],
        # OpenAI's ViT-L was trained with quick_gelu, the LAION ViT-H and bigG with gelu
        "hidden_act": "quick_gelu" if hidden == 1024 else "gelu",
    }


def encoder_config(path: Path) -> dict[str, Any]:
    """The encoder's config: a folder's ``config.json``, a ``<name>.json`` beside a file, or the shapes."""
    path = Path(path)
    if path.is_dir():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return config.get("vision_config", config)
    beside = path.with_suffix(".json")
    if beside.is_file():
        return json.loads(beside.read_text(encoding="utf-8"))
    return _config_from_shapes(_shapes(path))


def _candidates(dirs: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for folder in dirs:
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir()
                            if (p.is_file() and p.suffix.lower() in _SUFFIXES) or (p / "config.json").is_file())
    return found


def find_image_encoder(dirs: Sequence[Path], need: EncoderNeed, name: str) -> Path:
    """The first encoder in ``dirs`` whose width fits ``need``; ValueError saying what to put where."""
    for path in _candidates(dirs):
        try:
            config = encoder_config(path)
        except UNREADABLE as exc:  # not a CLIP image encoder: try the next
            log.debug("skipping %s: %s", path, exc)
            continue
        width = config.get("hidden_size") if need.hidden_states else config.get("projection_dim")
        if width == need.width:
            return path
    what = "hidden size" if need.hidden_states else "projection size"
    folders = ", ".join(str(d) for d in dirs) or "models/clip_vision"
    raise ValueError(f"{name} needs a CLIP image encoder with {what} {need.width} "
                     f"(e.g. clip_h.pth for SD1.5 adapters); put one in {folders}")


def load_image_encoder(path: Path) -> CLIPVisionModelWithProjection:
    """The encoder at ``path`` (transformers folder or single file), offline, in eval mode."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    path = Path(path)
    if path.is_dir():
        return CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True).eval()
    config = {k: v for k, v in encoder_config(path).items() if not k.startswith("_")}
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**config))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # a buffer in older files
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"{path.name} is not a CLIP image encoder with transformers' keys "
                         f"(missing {len(missing)} weights, e.g. {missing[0]})")
    if unexpected:  # e.g. a whole CLIP model's text half
        log.info("%s: ignoring %d weights the image encoder does not use", path.name, len(unexpected))
    return model.eval()


def pixel_values(image: Any, size: int) -> torch.Tensor:
    """CLIP's preprocessing: shortest side to ``size`` (bicubic), centre crop, CLIP mean/std."""
    import numpy as np
    import torch
    from PIL import Image

    rgb = image.convert("RGB")
    scale = size / min(rgb.size)
    resized = rgb.resize((max(size, round(rgb.width * scale)), max(size, round(rgb.height * scale))),
                         Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    crop = resized.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(crop, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(_CLIP_MEAN).view(3, 1, 1), torch.tensor(_CLIP_STD).view(3, 1, 1)
    return ((x - mean) / std)[None]


def encode_image(encoder: CLIPVisionModelWithProjection, image: Any,
                 hidden_states: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond), each with a leading 1, as diffusers' ``encode_image`` makes them."""
    import torch

    with torch.no_grad():
        param = next(encoder.parameters())
        x = pixel_values(image, int(encoder.config.image_size)).to(device=param.device, dtype=param.dtype)
        if hidden_states:
            cond = encoder(x, output_hidden_states=True).hidden_states[-2]
            uncond = encoder(torch.zeros_like(x), output_hidden_states=True).hidden_states[-2]
            return cond, uncond
        cond = encoder(x).image_embeds
        return cond, torch.zeros_like(cond)
