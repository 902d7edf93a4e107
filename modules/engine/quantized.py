"""Quantized transformer weights: GGUF files and fp8 safetensors.

* GGUF (city96's / ComfyUI-GGUF's transformer files): :func:`read_gguf_index` reads names, shapes
  (in torch order) and quant types without loading the data, refusing a truncated or foreign file
  with a :class:`ModelLoadError` naming it; :func:`load_gguf_transformer` loads through diffusers'
  ``GGUFQuantizationConfig`` and ``from_single_file`` (weights stay quantized, each linear
  dequantizes on the fly to the compute dtype), after refusing quant types diffusers cannot
  dequantize.
* fp8 (``F8_E4M3`` / ``F8_E5M2`` safetensors): diffusers' loader casts every tensor to the
  requested ``torch_dtype`` on copy (``load_model_dict_into_meta``), so an fp8 file loads upcast
  everywhere. On a CUDA device with fp8 support, :func:`apply_fp8_storage` keeps the weights in fp8
  and upcasts per layer for the forward (diffusers' ``enable_layerwise_casting``), halving memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from modules.engine.checkpoint_files import GGUF_SUFFIXES, TensorIndex
from modules.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from modules.engine.devices import DeviceInfo

log = logging.getLogger(__name__)

Convert = Callable[[dict], dict]  # a checkpoint's original tensor names -> the diffusers model's

FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
# Types stored as plain floats in a GGUF file (diffusers keeps them as ordinary tensors).
_FLOAT_TYPES = ("F32", "F16", "BF16")
# Compute capability from which CUDA has fp8 tensor support (Ada Lovelace / Hopper).
_FP8_MIN_CAPABILITY = (8, 9)


def is_gguf(path: Path) -> bool:
    """True when ``path`` is named like a GGUF file (the content is checked by :func:`read_gguf_index`)."""
    return path.suffix.lower() in GGUF_SUFFIXES


def _open_reader(path: Path):  # -> gguf.GGUFReader
    try:
        from gguf import GGUFReader
    except ImportError as exc:  # a dependency in requirements.txt; say so rather than crash
        raise ModelLoadError(str(path), "GGUF files need the `gguf` package (pip install gguf)") from exc
    if not path.is_file() or path.stat().st_size == 0:
        raise ModelLoadError(str(path), "the file is empty or missing")
    try:
        return GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OSError, TypeError, OverflowError) as exc:
        # GGUFReader reports a bad magic, a short header or tensors past the end of the data this way.
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(str(path), f"not a readable GGUF file (truncated or foreign): {detail}") from exc


def read_gguf_index(path: Path) -> TensorIndex:
    """Names, torch-order shapes and quant type names ("Q8_0", "F16", ...) of a GGUF file's tensors."""
    reader = _open_reader(path)
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    size = path.stat().st_size
    for tensor in reader.tensors:
        # GGML lists dimensions innermost first; torch outermost first.
        shapes[tensor.name] = tuple(int(d) for d in reversed(tensor.shape.tolist()))
        dtypes[tensor.name] = tensor.tensor_type.name
        if int(tensor.data_offset) + int(tensor.n_bytes) > size:
            raise ModelLoadError(str(path), f"the file is truncated: tensor {tensor.name!r} runs past its end")
    if not shapes:
        raise ModelLoadError(str(path), "the GGUF file holds no tensors")
    metadata = {}
    arch_field = reader.fields.get("general.architecture")
    if arch_field is not None and arch_field.data:
        metadata["general.architecture"] = bytes(arch_field.parts[arch_field.data[0]]).decode("utf-8", "replace")
    return TensorIndex(shapes=shapes, dtypes=dtypes, metadata=metadata)


def supported_gguf_types() -> frozenset[str]:
    """Quant type names diffusers can dequantize (plus the plain float types)."""
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    return frozenset({t.name for t in SUPPORTED_GGUF_QUANT_TYPES} | set(_FLOAT_TYPES))


def check_gguf_types(path: Path, index: TensorIndex) -> None:
    """Refuse a GGUF file using a quant type diffusers cannot dequantize, naming the type and the file."""
    supported = supported_gguf_types()
    unsupported = sorted({t for t in index.dtypes.values() if t not in supported})
    if unsupported:
        raise ModelLoadError(str(path), f"GGUF quant type {', '.join(unsupported)} is not supported "
                                        f"(supported: {', '.join(sorted(supported))})")


def load_gguf_transformer(model_class: type, path: Path, config_folder: Path, compute_dtype: torch.dtype,
                          subfolder: str | None = None, convert: Convert | None = None):
    """Load a GGUF transformer file as ``model_class`` (e.g. ``FluxTransformer2DModel``), its config from
    ``config_folder`` (the model's own folder with ``config.json``, or a pipeline folder: then
    ``subfolder``, default ``transformer``). Followed: diffusers ``FromOriginalModelMixin.from_single_file``
    with ``GGUFQuantizationConfig``, which converts BFL/ComfyUI key names to diffusers' itself;
    ``convert`` (original names -> diffusers', on the still-quantized tensors) replaces that
    conversion where it does not fit (diffusers' FLUX.1 one assumes the full-size model's widths)."""
    from diffusers import GGUFQuantizationConfig

    check_gguf_types(path, read_gguf_index(path))
    if subfolder is None and not (config_folder / "config.json").is_file():
        subfolder = "transformer"
    try:
        source: str | dict = str(path)
        if convert is not None:
            from diffusers.models.model_loading_utils import load_gguf_checkpoint

            source = convert(load_gguf_checkpoint(str(path)))
        model = model_class.from_single_file(
            source, config=str(config_folder), subfolder=subfolder, local_files_only=True,
            quantization_config=GGUFQuantizationConfig(compute_dtype=compute_dtype), torch_dtype=compute_dtype)
    except (ValueError, RuntimeError, KeyError, OSError, TypeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(str(path), f"the GGUF transformer does not load: {detail}") from exc
    model.eval()
    return model


def has_fp8_weights(index: TensorIndex) -> bool:
    """True when any tensor of a safetensors file is stored as fp8."""
    return any(dtype in FP8_DTYPES for dtype in index.dtypes.values())


def fp8_weights(index: TensorIndex, prefix: str = "") -> Mapping[str, str]:
    """The fp8 tensors (name -> dtype name) under ``prefix``."""
    return {k: v for k, v in index.dtypes.items() if v in FP8_DTYPES and k.startswith(prefix)}


def device_has_fp8(device: DeviceInfo) -> bool:
    """fp8 storage pays off only where the device has fp8 support (CUDA compute capability >= 8.9)."""
    import torch

    if device.device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.device.index if device.device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)) >= _FP8_MIN_CAPABILITY


def apply_fp8_storage(model: torch.nn.Module, device: DeviceInfo, storage_dtype: torch.dtype | None = None) -> bool:
    """Keep ``model``'s weights stored in fp8 and upcast each layer to the compute dtype for its
    forward, where the device supports fp8; elsewhere leave it (already upcast by the loader).
    Returns whether fp8 storage is on. Followed: diffusers ``ModelMixin.enable_layerwise_casting``."""
    import torch

    if not device_has_fp8(device) or not hasattr(model, "enable_layerwise_casting"):
        return False
    storage = storage_dtype or torch.float8_e4m3fn
    model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=device.dtype)
    log.info("%s keeps its weights in %s (computes in %s)", type(model).__name__, storage, device.dtype)
    return True


_SCALE_SUFFIX = ".scale_weight"
_SCALED_FP8_EXTRAS = ("scaled_fp8", ".scaled_fp8", ".scale_input")


def apply_weight_scales(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's "scaled fp8" files (``t5xxl_fp8_e4m3fn_scaled``, ``*_fp8_scaled`` checkpoints) keep each
    linear weight in fp8 beside a per-layer ``<layer>.scale_weight``, and mark the format with a
    ``scaled_fp8`` tensor: the real weight is the upcast weight times its scale (ComfyUI's
    ``scaled_fp8_ops``). ``state`` with the scales applied (in float32, then the weight's own float dtype;
    fp8 weights come back in float32) and the format's extra tensors removed; a state without them is
    returned unchanged."""
    import torch

    scales = {key[: -len(_SCALE_SUFFIX)]: value for key, value in state.items() if key.endswith(_SCALE_SUFFIX)}
    extras = [key for key in state if key == "scaled_fp8" or key.endswith(_SCALED_FP8_EXTRAS[1:])]
    if not scales and not extras:
        return state
    out = {key: value for key, value in state.items() if not key.endswith(_SCALE_SUFFIX) and key not in extras}
    for layer, scale in scales.items():
        weight = out.get(layer + ".weight")
        if weight is None:
            continue
        target = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float32
        out[layer + ".weight"] = (weight.to(torch.float32) * scale.to(torch.float32)).to(target)
    return out
