"""ControlNet model files: finding them, naming them as the A1111 extension does, loading them.

Models live in ``host.model_dirs("ControlNet")`` (``<models dir>/ControlNet`` and ``--controlnet-dir``),
in subfolders too: single files (lllyasviel's ``.pth`` / ``.safetensors`` with ``control_model.*``
LDM keys or without the prefix, diffusers-keyed ``.safetensors``; ``.pt``/``.ckpt``/``.bin`` read
with ``torch.load(weights_only=True)`` only) and diffusers folders (``config.json`` +
``diffusion_pytorch_model.*``). Each is listed as ``name [hash]``: the file (or folder) name without
extension and the first 8 hex digits of the weights file's SHA-256.

A single file's configuration is read off its tensors' shapes (levels, widths, attention layers,
text width, SDXL's extra embedding), so any size loads, the real ones and tests' tiny ones alike;
``configs/`` holds the published diffusers configs of the SD 1.5 and SDXL canny ControlNets, which
tests check this reading reproduces for real-sized weights.
The family it was trained for (SD 1.x, SD 2.x, SDXL) follows from the text width and the extra
embedding; a ControlNet for another family than the checkpoint's is refused. Control-LoRA files
(``lora_controlnet`` key) are listed here like the others and built by ``cn_control_lora``.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

if TYPE_CHECKING:  # torch and diffusers are imported where used: loading the extension must not import them
    import torch
    from diffusers import ControlNetModel

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors")
NONE = "None"
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
# Checkpoint kinds (ModelView.family) -> the ControlNet family they take.
CHECKPOINT_FAMILIES = {"sd15": "sd1", "sd15_inpaint": "sd1", "sd2_v": "sd2", "sd2": "sd2", "sdxl": "sdxl",
                       "sdxl_refiner": "sdxl_refiner"}
LDM_PREFIX = "control_model."
CACHE_SIZE = 2  # loaded ControlNets kept for the next job (a real SDXL one is 2.5 GB in fp16)


@dataclass(frozen=True)
class ModelFile:
    title: str  # "name [hash]"
    name: str
    path: Path  # the file, or the diffusers folder
    weights: Path  # the file whose hash is in the title


def _weights_of(folder: Path) -> Path | None:
    if not (folder / "config.json").is_file():
        return None
    return next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)


def _candidates(root: Path) -> list[tuple[Path, Path]]:
    found: list[tuple[Path, Path]] = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir(), key=lambda p: p.name.lower()):
        if entry.is_dir():
            weights = _weights_of(entry)
            found += [(entry, weights)] if weights else _candidates(entry)
        elif entry.suffix.lower() in FILE_SUFFIXES and entry.stem != NONE:
            found.append((entry, entry))
    return found


def find_models(host: Any) -> list[ModelFile]:
    """Every ControlNet model in the ControlNet folders, named as the A1111 extension names them;
    a name found twice keeps the first folder's (the models folder before ``--controlnet-dir``)."""
    models: dict[str, ModelFile] = {}
    for root in host.model_dirs("ControlNet"):
        for path, weights in _candidates(Path(root)):
            name = path.name if path.is_dir() else path.stem
            if name.lower() in models:
                continue
            title = f"{name} [{host.sha256(weights)[:8]}]"
            models[name.lower()] = ModelFile(title, name, path, weights)
    return list(models.values())


def resolve(value: str, models: list[ModelFile]) -> ModelFile | None:
    """The model a unit's ``model`` names: its title, its name (any case), or a title whose hash
    differs (the file changed); None for "None". ValueError listing the available ones."""
    text = value.strip()
    if text == NONE:
        return None
    name = re.sub(r"\s*\[[0-9a-fA-F]{8,}\]$", "", text).lower()
    found = next((m for m in models if m.title == text), None) or next(
        (m for m in models if m.name.lower() == name), None)
    if found is None:
        available = ", ".join(m.title for m in models) or "none (put ControlNet models in the ControlNet models folder)"
        raise ValueError(f"model: unknown ControlNet model {value!r}; available: {available}")
    return found


# --- reading a single file ------------------------------------------------------------------------


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A file's tensors; pickles only through ``torch.load(weights_only=True)``."""
    import torch
    from safetensors.torch import load_file

    if path.suffix.lower() == ".safetensors":
        state: Any = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path.name} holds no plain tensors")
    return state


def _to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if "controlnet_cond_embedding.conv_in.weight" in state:
        return state
    plain = {k[len(LDM_PREFIX):] if k.startswith(LDM_PREFIX) else k: v for k, v in state.items()}
    if "input_hint_block.0.weight" not in plain:
        raise ValueError("not a ControlNet (no hint block); a T2I-Adapter, IP-Adapter or LoRA?")
    levels = 1 + sum(1 for k in plain if re.fullmatch(r"input_blocks\.\d+\.0\.op\.weight", k))
    blocks = len({k.split(".")[1] for k in plain if k.startswith("input_blocks.")})
    layers = (blocks - 1 - (levels - 1)) // levels
    converted = convert_controlnet_checkpoint(plain, {"layers_per_block": layers})
    for i in (0, 2):  # SDXL's text_time embedding (LDM's label_emb), which the converter leaves out
        for kind in ("weight", "bias"):
            if f"label_emb.0.{i}.{kind}" in plain:
                converted[f"add_embedding.linear_{i // 2 + 1}.{kind}"] = plain[f"label_emb.0.{i}.{kind}"]
    return {k: v for k, v in converted.items() if v is not None}


def _level_shape(state: dict[str, torch.Tensor], level: int) -> tuple[int, int, int, bool]:
    """(resnets, width, transformer layers per attention (0: none), linear projection) of a level."""
    resnets = len({k.split(".")[3] for k in state if k.startswith(f"down_blocks.{level}.resnets.")})
    width = state[f"down_blocks.{level}.resnets.0.conv1.weight"].shape[0]
    prefix = f"down_blocks.{level}.attentions.0."
    transformers = len({k.split(".")[5] for k in state if k.startswith(prefix + "transformer_blocks.")})
    proj = state.get(prefix + "proj_in.weight")
    return resnets, width, transformers, proj is not None and proj.ndim == 2


def infer_config(state: dict[str, torch.Tensor], time_embed_dim: int | None = None) -> tuple[dict[str, Any], str]:
    """(a ControlNetModel config, the family) read off a diffusers-keyed state dict's shapes.
    ``time_embed_dim``: SDXL's size/crop embedding width, which the weights do not show (the
    checkpoint's ``addition_time_embed_dim``; 256 in SDXL)."""
    levels = len({k.split(".")[1] for k in state if k.startswith("down_blocks.")})
    shapes = [_level_shape(state, level) for level in range(levels)]
    attention = next((i for i, s in enumerate(shapes) if s[2]), None)
    if attention is None:
        raise ValueError("a ControlNet without attention layers is not supported")
    cross = state[f"down_blocks.{attention}.attentions.0.transformer_blocks.0.attn2.to_k.weight"].shape[1]
    hint = sorted(int(k.split(".")[2]) for k in state if re.fullmatch(r"controlnet_cond_embedding\.blocks\.\d+\.weight", k))
    embedding = [state["controlnet_cond_embedding.conv_in.weight"].shape[0]]
    embedding += [state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in hint[1::2]]
    add = state.get("add_embedding.linear_1.weight")
    family = "sdxl" if add is not None else "sd2" if cross == 1024 else "sd1"
    widths = [s[1] for s in shapes]
    config: dict[str, Any] = {
        "in_channels": state["conv_in.weight"].shape[1],
        "conditioning_channels": state["controlnet_cond_embedding.conv_in.weight"].shape[1],
        "block_out_channels": widths,
        "down_block_types": ["CrossAttnDownBlock2D" if s[2] else "DownBlock2D" for s in shapes],
        "layers_per_block": shapes[0][0],
        "cross_attention_dim": cross,
        "transformer_layers_per_block": [max(1, s[2]) for s in shapes],
        "use_linear_projection": shapes[attention][3],
        "conditioning_embedding_out_channels": embedding,
        # Heads are not in the weights: SD 1.x uses 8 per layer, SD 2.x and SDXL 64-wide heads.
        "attention_head_dim": 8 if family == "sd1" else [max(1, w // 64) for w in widths],
    }
    if add is not None:
        time_dim = time_embed_dim or 256
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=add.shape[1])
    return config, family


def family_of_config(config: Any) -> str:
    if getattr(config, "addition_embed_type", None) == "text_time":
        return "sdxl"
    return "sd2" if getattr(config, "cross_attention_dim", 768) == 1024 else "sd1"


def load_controlnet(model: ModelFile, time_embed_dim: int | None = None) -> tuple[ControlNetModel, str]:
    """(the ControlNet on the CPU in fp32, its family)."""
    from diffusers import ControlNetModel

    if model.path.is_dir():
        net = ControlNetModel.from_pretrained(str(model.path), local_files_only=True)
        return net.eval(), family_of_config(net.config)
    state = _to_diffusers(read_state(model.path))
    config, family = infer_config(state, time_embed_dim)
    net = ControlNetModel.from_config(config)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{model.path.name}: weights do not fit a ControlNet (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return net.eval(), family


def check_family(model: ModelFile, family: str, checkpoint_kind: str) -> None:
    """ValueError naming both families when the ControlNet is not for the checkpoint's family."""
    wanted = CHECKPOINT_FAMILIES.get(checkpoint_kind, checkpoint_kind)
    if family != wanted:
        have = FAMILY_LABELS.get(family, family)
        need = FAMILY_LABELS.get(wanted, checkpoint_kind)
        raise ValueError(f"model: {model.title} is a ControlNet for {have}, but the checkpoint is {need}; "
                         f"choose a ControlNet made for {need}")


class ControlNetCache:
    """The last few loaded ControlNets by file (weights hash in the title), kept on the CPU;
    one per worker process (the extension's module state lives as long as the worker)."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._nets: OrderedDict[tuple[Any, ...], tuple[ControlNetModel, str]] = OrderedDict()

    def get(self, model: ModelFile, time_embed_dim: int | None = None) -> tuple[ControlNetModel, str]:
        key = (str(model.path), model.title, time_embed_dim)  # SDXL's width comes from the checkpoint
        return self.remember(key, lambda: self._load(model, time_embed_dim))

    def remember(self, key: tuple[Any, ...],
                 load: Callable[[], tuple[ControlNetModel, str]]) -> tuple[ControlNetModel, str]:
        """The net cached under ``key``, or ``load()``'s, kept (the oldest dropped past the size);
        Control-LoRAs (cn_control_lora) share the budget under their own keys."""
        if key in self._nets:
            self._nets.move_to_end(key)
            return self._nets[key]
        loaded = load()
        self._nets[key] = loaded
        while len(self._nets) > self._size:
            self._nets.popitem(last=False)
        return loaded

    @staticmethod
    def _load(model: ModelFile, time_embed_dim: int | None) -> tuple[ControlNetModel, str]:
        try:
            loaded = load_controlnet(model, time_embed_dim)
        except (OSError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError, SafetensorError) as exc:
            # a truncated or foreign file, an unsafe pickle: refused, naming the file
            raise ValueError(f"model: cannot load {model.title} as a ControlNet: {exc}") from exc
        log.info("loaded ControlNet %s (%s)", model.title, FAMILY_LABELS.get(loaded[1], loaded[1]))
        return loaded
