"""GGUF and fp8 transformer files: read, refused when broken or unsupported, loaded close to the float model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel
from safetensors.torch import save_file

from modules.devtools.tiny_gguf import flux_bfl_state_dict, flux_bfl_to_diffusers, write_gguf, write_raw_gguf
from modules.engine.checkpoint_files import CHECKPOINT_SUFFIXES, read_safetensors_index
from modules.engine.devices import DeviceInfo
from modules.engine.quantized import (
    apply_fp8_storage,
    has_fp8_weights,
    is_gguf,
    load_gguf_transformer,
    read_gguf_index,
)
from modules.errors import ModelLoadError

CONFIG = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
              num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
              axes_dims_rope=(4, 6, 6))
HIDDEN = 32


def _convert(checkpoint: dict) -> dict:
    return flux_bfl_to_diffusers(checkpoint, HIDDEN)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, FluxTransformer2DModel]:
    folder = tmp_path_factory.mktemp("gguf")
    FluxTransformer2DModel(**CONFIG).save_config(folder / "config")
    bfl = flux_bfl_state_dict(CONFIG, seed=1)
    reference = FluxTransformer2DModel(**CONFIG)
    reference.load_state_dict(_convert(dict(bfl)), strict=True)
    return folder, bfl, reference.eval()


def _run(model: FluxTransformer2DModel) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return model(hidden_states=torch.randn(1, 16, 64, generator=gen),
                     encoder_hidden_states=torch.randn(1, 8, 32, generator=gen),
                     pooled_projections=torch.randn(1, 32, generator=gen), timestep=torch.tensor([0.5]),
                     img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(8, 3), guidance=torch.tensor([3.5]),
                     return_dict=False)[0].float()


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_gguf_is_listed_as_a_checkpoint():
    assert ".gguf" in CHECKPOINT_SUFFIXES
    assert is_gguf(Path("flux1-dev-Q8_0.GGUF")) and not is_gguf(Path("model.safetensors"))


def test_index_reads_torch_shapes_and_quant_types_like_community_files(tiny, tmp_path):
    _, bfl, _ = tiny
    index = read_gguf_index(write_gguf(bfl, tmp_path / "flux-Q8_0.gguf", "Q8_0"))
    assert index.shapes["double_blocks.0.img_attn.qkv.weight"] == (3 * HIDDEN, HIDDEN)  # torch order
    assert index.dtypes["double_blocks.0.img_attn.qkv.weight"] == "Q8_0"
    assert index.dtypes["double_blocks.0.img_attn.qkv.bias"] == "F32"  # biases stay float
    assert index.dtypes["single_blocks.0.norm.query_norm.scale"] == "F32"
    assert index.metadata["general.architecture"] == "flux"


@pytest.mark.parametrize(("quant", "tolerance"), [("Q8_0", 0.02), ("Q4_0", 0.25)])
def test_quantized_transformer_matches_the_float_model(tiny, tmp_path, quant, tolerance):
    folder, bfl, reference = tiny
    path = write_gguf(bfl, tmp_path / f"flux-{quant}.gguf", quant)
    model = load_gguf_transformer(FluxTransformer2DModel, path, folder / "config", torch.float32, convert=_convert)
    # The weights stay quantized in memory: the point of a GGUF file.
    assert type(model.transformer_blocks[0].attn.to_q.weight).__name__ == "GGUFParameter"
    expected, got = _run(reference), _run(model)
    assert got.shape == expected.shape
    assert _relative_error(got, expected) < tolerance


def test_q8_is_closer_than_q4(tiny, tmp_path):
    folder, bfl, reference = tiny
    expected = _run(reference)
    errors = {}
    for quant in ("Q8_0", "Q4_0"):
        path = write_gguf(bfl, tmp_path / f"f-{quant}.gguf", quant)
        model = load_gguf_transformer(FluxTransformer2DModel, path, folder / "config", torch.float32, convert=_convert)
        errors[quant] = _relative_error(_run(model), expected)
    assert 0 < errors["Q8_0"] < errors["Q4_0"]


def test_unsupported_quant_type_is_refused_naming_type_and_file(tiny, tmp_path):
    folder, _, _ = tiny
    path = write_raw_gguf(tmp_path / "odd-Q8_1.gguf", "img_in.weight", (32, 64), "Q8_1")
    with pytest.raises(ModelLoadError) as caught:
        load_gguf_transformer(FluxTransformer2DModel, path, folder / "config", torch.float32)
    assert "Q8_1" in str(caught.value) and "odd-Q8_1.gguf" in str(caught.value)


@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_or_foreign_gguf_is_refused_naming_the_file(tiny, tmp_path, keep):
    _, bfl, _ = tiny
    whole = write_gguf(bfl, tmp_path / "whole.gguf", "Q8_0").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(ModelLoadError, match="cut.gguf"):
        read_gguf_index(cut)
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match="foreign.gguf"):
        read_gguf_index(foreign)


@pytest.fixture(scope="module")
def fp8_folder(tiny, tmp_path_factory) -> Path:
    _, _, reference = tiny
    folder = tmp_path_factory.mktemp("fp8")
    reference.save_config(folder)
    weights = {k: (v.to(torch.float8_e4m3fn) if v.ndim == 2 else v.to(torch.bfloat16)).contiguous()
               for k, v in reference.state_dict().items()}
    save_file(weights, folder / "diffusion_pytorch_model.safetensors")
    return folder


def test_fp8_weights_are_seen_and_upcast_on_load(fp8_folder, tiny):
    _, _, reference = tiny
    index = read_safetensors_index(fp8_folder / "diffusion_pytorch_model.safetensors")
    assert has_fp8_weights(index)
    assert index.dtypes["transformer_blocks.0.attn.to_q.weight"] == "F8_E4M3"
    model = FluxTransformer2DModel.from_pretrained(fp8_folder, torch_dtype=torch.float32, local_files_only=True)
    weight = model.transformer_blocks[0].attn.to_q.weight
    assert weight.dtype == torch.float32  # diffusers casts on copy: usable on devices without fp8 math
    original = reference.transformer_blocks[0].attn.to_q.weight
    assert torch.equal(weight, original.to(torch.float8_e4m3fn).float())
    assert _relative_error(_run(model), _run(reference)) < 0.1


def test_fp8_storage_only_where_the_device_has_fp8(fp8_folder, monkeypatch):
    cpu = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test")
    model = FluxTransformer2DModel.from_pretrained(fp8_folder, torch_dtype=torch.float32, local_files_only=True)
    assert apply_fp8_storage(model, cpu) is False
    assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.float32
    expected = _run(model)
    monkeypatch.setattr("modules.engine.quantized.device_has_fp8", lambda device: True)
    assert apply_fp8_storage(model, cpu) is True
    assert model.transformer_blocks[0].attn.to_q.weight.dtype == torch.float8_e4m3fn  # half the memory
    # The weights were fp8 already (only biases lose bits now), so the outputs stay close.
    assert _relative_error(_run(model), expected) < 0.02
