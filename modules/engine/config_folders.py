"""Config folders for loading single-file checkpoints with no network.

``from_single_file(path, config=FOLDER, local_files_only=True)`` needs a diffusers-style folder of
JSON configs and tokenizer files. Atelier ships one real-size folder per architecture
(``model_configs/<arch>/``) and one copy of CLIP's BPE vocabulary (``model_configs/clip_bpe/``).
When a checkpoint's shapes differ from the shipped config (a pruned or tiny model), a patched
copy is written to the cache, so the config always matches the weights.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from modules.engine.model_detect import CheckpointDims, ModelArch, TextEncoderDims

SHIPPED_CONFIGS = Path(__file__).resolve().parent / "model_configs"
_BPE_FILES = ("vocab.json", "merges.txt")
_TOKENIZER_DIRS = ("tokenizer", "tokenizer_2")


def _heads(width: int) -> int:
    """Attention heads by the convention of SD2/SDXL/OpenCLIP/CLIP: 64-wide heads."""
    return max(1, width // 64)


def _patch_unet(config: dict[str, Any], dims: CheckpointDims) -> None:
    unet = dims.unet
    config.update(
        in_channels=unet.in_channels,
        block_out_channels=list(unet.block_out_channels),
        layers_per_block=unet.layers_per_block,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in unet.has_attention],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(unet.has_attention)],
        cross_attention_dim=unet.cross_attention_dim,
        use_linear_projection=unet.linear_projection,
    )
    if isinstance(config.get("transformer_layers_per_block"), list) or any(d != 1 for d in unet.transformer_depth):
        config["transformer_layers_per_block"] = list(unet.transformer_depth)
    if isinstance(config.get("attention_head_dim"), list):  # SD2/SDXL: heads of width 64 per block
        config["attention_head_dim"] = [_heads(c) for c in unet.block_out_channels]
    if unet.adm_in_channels is not None and dims.text_encoder_2 is not None:
        pooled = dims.text_encoder_2.projection_dim or dims.text_encoder_2.hidden_size
        time_ids = 5 if dims.arch is ModelArch.SDXL_REFINER else 6  # refiner: aesthetic score, no target size
        config["projection_class_embeddings_input_dim"] = unet.adm_in_channels
        config["addition_time_embed_dim"] = (unet.adm_in_channels - pooled) // time_ids


def _patch_vae(config: dict[str, Any], dims: CheckpointDims) -> None:
    levels = len(dims.vae.block_out_channels)
    config.update(
        block_out_channels=list(dims.vae.block_out_channels),
        layers_per_block=dims.vae.layers_per_block,
        latent_channels=dims.vae.latent_channels,
        down_block_types=["DownEncoderBlock2D"] * levels,
        up_block_types=["UpDecoderBlock2D"] * levels,
    )


def _patch_text_encoder(config: dict[str, Any], te: TextEncoderDims) -> None:
    config.update(
        vocab_size=te.vocab_size,
        hidden_size=te.hidden_size,
        intermediate_size=te.intermediate_size,
        num_hidden_layers=te.num_layers,
        num_attention_heads=_heads(te.hidden_size),
        max_position_embeddings=te.max_positions,
    )
    if te.projection_dim is not None:
        config["projection_dim"] = te.projection_dim


def _patched_files(dims: CheckpointDims) -> dict[str, dict[str, Any]]:
    base = SHIPPED_CONFIGS / dims.arch.value
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(base.rglob("*.json")):
        files[path.relative_to(base).as_posix()] = json.loads(path.read_text(encoding="utf-8"))
    _patch_unet(files["unet/config.json"], dims)
    _patch_vae(files["vae/config.json"], dims)
    if dims.text_encoder is not None:
        _patch_text_encoder(files["text_encoder/config.json"], dims.text_encoder)
    if dims.text_encoder_2 is not None:
        _patch_text_encoder(files["text_encoder_2/config.json"], dims.text_encoder_2)
    return files


def read_bpe_file(name: str) -> bytes:
    """One of CLIP's tokenizer files, from the shipped (possibly gzipped) copy."""
    plain = SHIPPED_CONFIGS / "clip_bpe" / name
    if plain.exists():
        return plain.read_bytes()
    return gzip.decompress((SHIPPED_CONFIGS / "clip_bpe" / f"{name}.gz").read_bytes())


def prepare_config_folder(dims: CheckpointDims, cache_root: Path) -> Path:
    """A folder whose configs match ``dims`` exactly, written once into ``cache_root`` and reused."""
    files = _patched_files(dims)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_root / f"{dims.arch.value}-{digest}"
    if (target / "model_index.json").exists():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))
    try:
        for rel, content in files.items():
            out = staging / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(content, indent=2), encoding="utf-8")
        for tok_dir in _TOKENIZER_DIRS:
            if (staging / tok_dir).is_dir():
                for name in _BPE_FILES:
                    (staging / tok_dir / name).write_bytes(read_bpe_file(name))
        try:
            os.replace(staging, target)  # atomic: another process may have won the race, which is fine
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
