"""T2I-Adapter units of the ControlNet extension, and what tells adapter files apart.

Owns: which kind of model a file in ``models/ControlNet`` is (:func:`detect_kind`: a T2I-Adapter, an
IP-Adapter, or None for anything else, i.e. a ControlNet), which model family an adapter file is for
(:func:`adapter_family`), loading a T2I-Adapter (TencentARC's ``t2iadapter_*.pth``, diffusers
folders and diffusers-keyed single files) and adding its features at every UNet call, as diffusers'
``StableDiffusionAdapterPipeline`` does: ``adapter(hint) * weight``, repeated over the rows, passed
as ``down_intrablock_additional_residuals``. The adapter runs once per pass (hires fix's second
pass has another size), not once per step.
"""

from __future__ import annotations

import enum
import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from modules.extension_api import JobStart, ModelCall

if TYPE_CHECKING:  # torch and diffusers are imported where used: loading the extension must not import them
    import torch
    from diffusers import T2IAdapter

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# what reading a broken, truncated or unsafe (pickled code) file raises
UNREADABLE = (OSError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError, SafetensorError)
FAMILY_LABELS = {"sd15": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
# the real UNets' cross-attention widths (text encoder outputs): an IP-Adapter's keys carry them
CROSS_ATTENTION_FAMILIES = {768: "sd15", 1024: "sd2", 2048: "sdxl"}
# A1111's soft injection ("My prompt is more important"): shallow features count less
_SOFT_BASE = 0.825


class AdapterKind(str, enum.Enum):
    T2I = "t2i_adapter"
    IP = "ip_adapter"


class ControlMode(enum.IntEnum):
    """A1111's control modes, as the extension's units carry them (0, 1, 2)."""

    BALANCED = 0
    PROMPT = 1  # "My prompt is more important"
    CONTROL = 2  # "ControlNet is more important": the negative rows get nothing


def weights_file(path: Path) -> Path | None:
    """The weights file of a model (a file, or the weights inside a diffusers folder)."""
    if path.is_file():
        return path
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors"):
        if (path / name).is_file():
            return path / name
    return None


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's key and shape, without reading the weights where the format allows (nested
    dicts, as IP-Adapter ``.bin`` files hold, give ``"outer.inner"`` keys)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return _flat_shapes(state.get("state_dict", state) if isinstance(state, dict) else {})


def _flat_shapes(state: dict[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    import torch

    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in state.items():
        if isinstance(value, dict):
            shapes.update(_flat_shapes(value, f"{prefix}{key}."))
        elif isinstance(value, torch.Tensor):
            shapes[f"{prefix}{key}"] = tuple(value.shape)
    return shapes


def _folder_config(path: Path) -> dict[str, Any]:
    config = path / "config.json"
    return json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}


def kind_of_keys(shapes: dict[str, tuple[int, ...]]) -> AdapterKind | None:
    keys = shapes.keys()
    if any(k.startswith("image_proj.") for k in keys) and any(k.startswith("ip_adapter.") for k in keys):
        return AdapterKind.IP
    if "conv_in.weight" in shapes and "body.0.block1.weight" in shapes:  # TencentARC's full adapter
        return AdapterKind.T2I
    if "style_embedding" in shapes:  # TencentARC's style adapter: listed, refused when loaded
        return AdapterKind.T2I
    if any(k.startswith("adapter.body.") for k in keys):  # diffusers' T2IAdapter keys
        return AdapterKind.T2I
    return None


def detect_kind(path: Path) -> str | None:
    """``"t2i_adapter"``, ``"ip_adapter"`` or None (a ControlNet, or not a model) for a file or
    diffusers folder in ``models/ControlNet``. Reads keys only (cheap for ``.safetensors``)."""
    path = Path(path)
    try:
        if path.is_dir():
            return AdapterKind.T2I.value if _folder_config(path).get("_class_name") == "T2IAdapter" else None
        if path.suffix.lower() not in _WEIGHT_SUFFIXES:
            return None
        kind = kind_of_keys(read_shapes(path))
    except UNREADABLE as exc:  # an unreadable file is no adapter (the ControlNet loader refuses it by name)
        log.debug("cannot read %s: %s", path, exc)
        return None
    return kind.value if kind is not None else None


def model_family(family: str) -> str:
    """The adapter family a checkpoint kind takes (``ModelView.family``: "sd15_inpaint" -> "sd15")."""
    if family.startswith("sdxl"):
        return "sdxl"
    return "sd2" if family.startswith("sd2") else "sd15"


def _t2i_family(shapes: dict[str, tuple[int, ...]], config: dict[str, Any]) -> str | None:
    if config.get("adapter_type"):
        return "sdxl" if config["adapter_type"] == "full_adapter_xl" else "sd15"
    conv_in = shapes.get("conv_in.weight") or shapes.get("adapter.conv_in.weight")
    if conv_in is None:
        return None
    # pixel-unshuffled input: 8x8 patches (SD1) or 16x16 (SDXL) of 1 or 3 channels
    return "sdxl" if conv_in[1] in (256, 768) else "sd15"


def adapter_family(path: Path) -> str | None:
    """"sd15", "sd2" or "sdxl": the family an adapter file is for; None when it cannot tell (then the
    check happens against the UNet at job start)."""
    path = Path(path)
    if path.is_dir():
        config = _folder_config(path)
        weights = weights_file(path)
        return _t2i_family(read_shapes(weights) if weights else {}, config) if config else None
    shapes = read_shapes(path)
    kind = kind_of_keys(shapes)
    if kind is AdapterKind.T2I:
        return _t2i_family(shapes, {})
    if kind is AdapterKind.IP:
        widths = {s[1] for k, s in shapes.items() if k.startswith("ip_adapter.") and k.endswith("to_k_ip.weight")}
        return CROSS_ATTENTION_FAMILIES.get(widths.pop()) if len(widths) == 1 else None
    return None


def check_family(name: str, adapter: str | None, model: str, sd15_on_sd2: bool = False) -> None:
    """ValueError naming both families when an adapter for one family is used on another's model
    (``sd15_on_sd2``: SD1 T2I-Adapters fit SD2's UNet channels, IP-Adapters do not)."""
    if adapter is None or adapter == model or (sd15_on_sd2 and (adapter, model) == ("sd15", "sd2")):
        return
    raise ValueError(f"{name} is for {FAMILY_LABELS.get(adapter, adapter)} models, "
                     f"the loaded model is {FAMILY_LABELS.get(model, model)}")


def guidance_active(step: int, total: int, start: float, end: float) -> bool:
    """Whether a unit acts at this step: ``start <= step / total < end`` (end 0: never, end 1: always)."""
    fraction = step / max(total, 1)
    return start <= fraction < end


# --- T2I-Adapter ------------------------------------------------------------------------------

_TENCENT_BODY = re.compile(r"^body\.(\d+)\.(.+)$")


def _from_tencentarc(state: dict[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """TencentARC's ``Adapter(sk=True, use_conv=False, ksize=1)`` keys -> diffusers' full adapter."""
    indices = sorted({int(m.group(1)) for k in state if (m := _TENCENT_BODY.match(k))})
    first_in_conv = next((i for i in indices if f"body.{i}.in_conv.weight" in state), None)
    if first_in_conv is None or any(k.endswith(("skep.weight", "down_opt.op.weight")) for k in state):
        raise ValueError("this TencentARC adapter layout is not supported (only the released sk=True adapters)")
    blocks = first_in_conv  # resnet blocks per level: the second level starts with a channel change
    levels = len(indices) // blocks
    channels = [state[f"body.{level * blocks}.block1.weight"].shape[0] for level in range(levels)]
    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _TENCENT_BODY.match(key)
        if m is None:
            converted[f"adapter.{key}"] = value
            continue
        index, rest = int(m.group(1)), m.group(2)
        level, block = divmod(index, blocks)
        name = f"in_conv.{rest.split('.', 1)[1]}" if rest.startswith("in_conv.") else f"resnets.{block}.{rest}"
        converted[f"adapter.body.{level}.{name}"] = value
    config = {"in_channels": state["conv_in.weight"].shape[1] // 64, "channels": channels,
              "num_res_blocks": blocks, "downscale_factor": 8, "adapter_type": "full_adapter"}
    return config, converted


def _diffusers_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    levels = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("adapter.body."))
    blocks = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("adapter.body.0.resnets."))
    channels = [state[f"adapter.body.{level}.resnets.0.block1.weight"].shape[0] for level in range(levels)]
    unshuffled = state["adapter.conv_in.weight"].shape[1]
    xl = unshuffled in (256, 768)
    return {"in_channels": unshuffled // (256 if xl else 64), "channels": channels, "num_res_blocks": blocks,
            "downscale_factor": 16 if xl else 8, "adapter_type": "full_adapter_xl" if xl else "full_adapter"}


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state)


def load_t2i_adapter(path: Path) -> T2IAdapter:
    """A T2I-Adapter from a diffusers folder, TencentARC's ``.pth`` or a diffusers-keyed single file
    (a ``config.json`` or ``<name>.json`` beside a single file is used when present)."""
    from diffusers import T2IAdapter

    path = Path(path)
    if path.is_dir():
        return T2IAdapter.from_pretrained(path, local_files_only=True)
    state = _load_state(path)
    if "style_embedding" in state:
        raise ValueError(f"{path.name} is a T2I style adapter, which is not supported")
    beside = path.with_suffix(".json")
    if "conv_in.weight" in state:
        config, state = _from_tencentarc(state)
    elif beside.is_file():
        config = {k: v for k, v in json.loads(beside.read_text(encoding="utf-8")).items() if not k.startswith("_")}
    else:
        config = _diffusers_config(state)
    adapter = T2IAdapter(**config)
    adapter.load_state_dict(state, strict=True)
    return adapter


def hint_tensor(image: Any, width: int, height: int) -> torch.Tensor:
    """A PIL control image as an adapter's input: (1, 3, height, width) in 0..1 (a plain resize; the
    extension's resize modes prepare the image before this)."""
    import numpy as np
    import torch

    rgb = image.convert("RGB").resize((width, height))
    return torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


@dataclass
class T2IRun:
    """One T2I-Adapter unit of a job: the loaded adapter and its features, per pass."""

    adapter: T2IAdapter
    weight: float
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: ControlMode = ControlMode.BALANCED
    _features: dict[tuple[int, tuple[int, ...]], list[torch.Tensor]] = field(default_factory=dict)

    def features(self, pass_index: int, hint: torch.Tensor) -> list[torch.Tensor]:
        """The adapter's features for this pass's hint (computed once per pass and hint size)."""
        import torch

        key = (pass_index, tuple(hint.shape))
        if key not in self._features:
            self._features.clear()  # the previous pass's are not needed again
            param = next(self.adapter.parameters())
            x = _fit_hint(hint, self.adapter).to(device=param.device, dtype=param.dtype)
            with torch.no_grad():
                self._features[key] = list(self.adapter(x))
        return self._features[key]


def _fit_hint(hint: torch.Tensor, adapter: T2IAdapter) -> torch.Tensor:
    """Grey for 1-channel adapters (sketch, canny); padded to the pixel-unshuffle size (SDXL: 16)."""
    import torch.nn.functional as F

    if adapter.config.in_channels == 1 and hint.shape[1] == 3:
        hint = hint.mean(dim=1, keepdim=True)
    factor = adapter.config.downscale_factor
    pad_h, pad_w = -hint.shape[-2] % factor, -hint.shape[-1] % factor
    return F.pad(hint, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else hint


def start_t2i(start: JobStart, path: Path, weight: float, guidance_start: float = 0.0, guidance_end: float = 1.0,
              control_mode: int = 0) -> T2IRun:
    """JOB_START: load the T2I-Adapter at ``path`` for this job's model (ValueError naming both
    families when it is for another), on the job's device and dtype."""
    check_family(f"The T2I-Adapter {Path(path).stem}", adapter_family(path), model_family(start.model.family),
                 sd15_on_sd2=True)
    adapter = load_t2i_adapter(path).to(device=start.model.device, dtype=start.model.dtype).eval()
    return T2IRun(adapter, float(weight), float(guidance_start), float(guidance_end), ControlMode(int(control_mode)))


def t2i_model_call(call: ModelCall, run: T2IRun, hint: torch.Tensor) -> None:
    """MODEL_CALL: add the unit's features (times its weight) for every row of this call. ``hint``:
    this pass's control image, (1 or ``call.batch``, 3, height, width) in 0..1."""
    if run.weight == 0 or not guidance_active(call.step, call.total, run.guidance_start, run.guidance_end):
        return
    features = run.features(call.pass_index, hint)
    rows = call.x.shape[0]
    cond = call.cond_rows.view(-1, 1, 1, 1)
    scaled: list[torch.Tensor] = []
    for i, feature in enumerate(features):
        scale = run.weight
        if run.control_mode is ControlMode.PROMPT:
            scale *= _SOFT_BASE ** float(len(features) - 1 - i)
        f = (feature * scale).repeat(rows // feature.shape[0], 1, 1, 1)
        if run.control_mode is ControlMode.CONTROL:  # guidance alone carries the control
            f = f * cond.to(device=f.device, dtype=f.dtype)
        scaled.append(f)
    call.changes.add_intrablock(scaled)
