"""fp8 files as users have them: plain fp8 weights are upcast as they load, and ComfyUI's "scaled fp8"
files (each weight in fp8 beside its ``scale_weight``) load as the weights times their scales."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from modules.devtools import tiny_flux
from modules.devtools.tiny_model import TinyArch
from modules.engine.families.base import ComponentDirs
from modules.engine.loader import load_model
from modules.engine.quantized import apply_weight_scales
from tests.family_run import CPU

_FP8_MAX = 448.0  # float8_e4m3fn's largest value


def _scaled_fp8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as ComfyUI writes scaled fp8: 2-D weights in fp8 with a per-layer scale, and the marker."""
    out: dict[str, torch.Tensor] = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
    for key, value in state.items():
        if key.endswith(".weight") and value.ndim == 2 and "embed" not in key and "shared" not in key:
            scale = value.abs().max().float() / _FP8_MAX
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key[: -len(".weight")] + ".scale_weight"] = scale.reshape(())
        else:
            out[key] = value.contiguous()
    return out


def test_apply_weight_scales_multiplies_and_drops_the_format_tensors() -> None:
    weight = torch.tensor([[224.0, -448.0]], dtype=torch.float8_e4m3fn)
    state = {"scaled_fp8": torch.zeros(0), "l.weight": weight, "l.scale_weight": torch.tensor(0.5),
             "l.scale_input": torch.tensor(1.0), "l.bias": torch.ones(1)}
    out = apply_weight_scales(state)
    assert set(out) == {"l.weight", "l.bias"}
    assert torch.equal(out["l.weight"], torch.tensor([[112.0, -224.0]]))
    plain = {"l.weight": torch.ones(1, 2)}
    assert apply_weight_scales(plain) is plain  # no scaled-fp8 tensors: untouched


def test_a_scaled_fp8_t5_loads_as_its_weights_times_their_scales(tmp_path: Path) -> None:
    parts = tiny_flux.write_tiny_parts(TinyArch.FLUX_DEV, tmp_path / "parts", seed=4)
    encoders = tmp_path / "text_encoder"
    encoders.mkdir()
    original = load_file(str(parts["t5xxl"]))
    save_file(_scaled_fp8(original), str(encoders / "t5xxl_fp8_e4m3fn_scaled.safetensors"))
    Path(parts["clip_l"]).rename(encoders / "clip_l.safetensors")
    components = ComponentDirs(text_encoders=(encoders,), vaes=(tmp_path / "parts",), tokenizers=tmp_path / "parts")
    model = load_model(parts["transformer"], CPU, tmp_path / "cache", components=components)
    loaded = model.pipeline.text_encoder_2.state_dict()
    key = next(k for k in original if k.endswith(".weight") and original[k].ndim == 2 and "SelfAttention.q" in k)
    reference = original[key].float()
    error = (loaded[key].float() - reference).abs().max() / reference.abs().max()
    assert error < 0.07, (key, float(error))  # fp8's rounding, not a missing scale (that would be ~1/scale off)
