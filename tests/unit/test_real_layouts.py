"""Real-size files as users have them: recognised, and their dimensions read right.

No real weights can be fetched in tests, so each family's transformer is built at its real size
from the shipped config on torch's meta device (shapes, no memory), turned into the layout the
published files use (BFL / Stability / Z-Image original names, bare and under ComfyUI's
``model.diffusion_model.``) and indexed by name and shape as a safetensors header would give it.
diffusers' own single-file detection and converters, written against the real files, vouch for the
layout; the published parameter counts vouch for the shipped configs. Text encoders are written as
header-only sparse safetensors files (real offsets and sizes, no data on disk) in a text encoder
folder, as ComfyUI publishes them (clip_l, clip_g, t5xxl, qwen_3_4b).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    Flux2Transformer2DModel,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    ZImageTransformer2DModel,
)
from diffusers.loaders import single_file_utils as sfu
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, Qwen3Config, Qwen3Model, T5Config, T5EncoderModel

from modules.devtools import tiny_flux, tiny_flux2, tiny_sd3, tiny_zimage
from modules.devtools.ldm_keys import VAE_PREFIX, vae_to_ldm
from modules.engine.checkpoint_files import TensorIndex, read_safetensors_index
from modules.engine.config_folders import SHIPPED_CONFIGS
from modules.engine.devices import DeviceInfo
from modules.engine.families import flux, flux2, flux2_files, flux_keys, registry, sd3_layout, sd3_parts, zimage_files
from modules.engine.families.base import ComponentDirs, FileLoad
from modules.engine.model_detect import ModelArch
from modules.errors import MissingComponentError

COMFY = "model.diffusion_model."
Shapes = dict[str, tuple[int, ...]]


def _shipped(rel: str) -> dict[str, Any]:
    return json.loads((SHIPPED_CONFIGS / rel).read_text(encoding="utf-8"))


def _index(shapes: Mapping[str, tuple[int, ...]], prefix: str = "", dtype: str = "BF16") -> TensorIndex:
    return TensorIndex(shapes={prefix + k: v for k, v in shapes.items()}, dtypes={prefix + k: dtype for k in shapes})


def _shapes(state: Mapping[str, torch.Tensor]) -> Shapes:
    return {k: tuple(v.shape) for k, v in state.items()}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- the transformers --------------------------------------------------------------------------------------

def _flux_infer(index: TensorIndex) -> dict[str, Any]:
    dims = flux_keys.infer_dims(index)
    assert dims is not None
    return dims.config()


def _sd3_infer(index: TensorIndex) -> dict[str, Any]:
    prefix = sd3_layout.transformer_prefix(index)
    assert prefix is not None
    arch = sd3_layout.detect(index)
    # the OTHER model's shipped config as the base: every value compared must come from the shapes
    other = ModelArch.SD35_MEDIUM if arch is ModelArch.SD35_LARGE else ModelArch.SD35_LARGE
    return sd3_layout.transformer_config(index, other, prefix)


def _flux2_infer(index: TensorIndex) -> dict[str, Any]:
    layout = flux2_files.transformer_layout(index)
    assert layout is not None
    return flux2_files.transformer_config(index, layout)


def _zimage_infer(index: TensorIndex) -> dict[str, Any]:
    prefix = zimage_files.transformer_prefix(index)
    assert prefix is not None
    return zimage_files.transformer_config(zimage_files.diffusers_shapes(index, prefix))


@dataclass(frozen=True)
class RealModel:
    folder: str  # the shipped config folder (model_configs/<folder>)
    arch: ModelArch
    model_class: type
    to_original: Callable[[Any], dict[str, torch.Tensor]]  # diffusers model -> the published file's tensors
    from_original: Callable[..., dict[str, torch.Tensor]]  # diffusers' own single-file converter
    diffusers_type: str  # what diffusers' infer_diffusers_model_type calls such a file
    billions: tuple[float, float]  # the published size, as the file's tensors count it
    infer: Callable[[TensorIndex], dict[str, Any]]  # the family's shape inference
    derived: tuple[str, ...]  # the config values the shapes must give back


_FLUX_KEYS = ("in_channels", "out_channels", "num_layers", "num_single_layers", "attention_head_dim",
              "num_attention_heads", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds",
              "axes_dims_rope")


def _flux(folder: str, arch: ModelArch, kind: str) -> RealModel:
    return RealModel(folder, arch, FluxTransformer2DModel,
                     lambda m: tiny_flux.transformer_bfl(SimpleNamespace(transformer=m)),
                     sfu.convert_flux_transformer_checkpoint_to_diffusers, kind, (11.8, 12.0), _flux_infer, _FLUX_KEYS)


_SD3_KEYS = ("num_layers", "in_channels", "patch_size", "attention_head_dim", "num_attention_heads",
             "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim", "out_channels",
             "pos_embed_max_size", "dual_attention_layers", "qk_norm")


def _sd3(folder: str, arch: ModelArch, kind: str, billions: tuple[float, float]) -> RealModel:
    # the published sizes count pos_embed, a buffer in diffusers but a tensor in Stability's files
    return RealModel(folder, arch, SD3Transformer2DModel, lambda m: tiny_sd3.transformer_to_sai(m.state_dict(), m.config),
                     sfu.convert_sd3_transformer_checkpoint_to_diffusers, kind, billions, _sd3_infer, _SD3_KEYS)


MODELS = (
    _sd3("sd35", ModelArch.SD35_LARGE, "sd35_large", (8.0, 8.2)),  # "8.1B"
    _sd3("sd35_medium", ModelArch.SD35_MEDIUM, "sd35_medium", (2.4, 2.6)),  # "2.5B"
    _flux("flux_dev", ModelArch.FLUX_DEV, "flux-dev"),  # "12B": 11.9B
    _flux("flux_schnell", ModelArch.FLUX_SCHNELL, "flux-schnell"),
    _flux("flux_fill", ModelArch.FLUX_FILL, "flux-fill"),
    # diffusers names every FLUX.2 transformer file "flux-2-dev" (one marker key for the family)
    RealModel("flux2_klein", ModelArch.FLUX2_KLEIN, Flux2Transformer2DModel,
              lambda m: tiny_flux2.transformer_to_bfl(m.state_dict()),
              sfu.convert_flux2_transformer_checkpoint_to_diffusers, "flux-2-dev", (3.8, 4.0), _flux2_infer,
              ("in_channels", "out_channels", "joint_attention_dim", "timestep_guidance_channels",
               "attention_head_dim", "num_attention_heads", "mlp_ratio", "num_layers", "num_single_layers",
               "axes_dims_rope", "guidance_embeds")),
    RealModel("zimage", ModelArch.ZIMAGE, ZImageTransformer2DModel,
              lambda m: tiny_zimage.transformer_to_original(m.state_dict()),
              sfu.convert_z_image_transformer_checkpoint_to_diffusers, "z-image-turbo", (6.1, 6.3), _zimage_infer,
              ("dim", "in_channels", "n_layers", "n_refiner_layers", "n_heads", "n_kv_heads", "cap_feat_dim",
               "qk_norm", "axes_dims")),
)


def _meta_model(case: RealModel) -> torch.nn.Module:
    with torch.device("meta"):  # real size, no memory
        return case.model_class.from_config(_shipped(f"{case.folder}/transformer/config.json"))


@dataclass(frozen=True)
class Built:
    case: RealModel
    config: Mapping[str, Any]  # the built model's full config (defaults filled in)
    model_shapes: Shapes  # diffusers' names
    original: dict[str, torch.Tensor]  # the published layout, meta tensors


@pytest.fixture(scope="module", params=MODELS, ids=[m.folder for m in MODELS])
def real(request: pytest.FixtureRequest) -> Built:
    case: RealModel = request.param
    model = _meta_model(case)
    return Built(case, dict(model.config), _shapes(model.state_dict()), case.to_original(model))


def test_the_layout_is_the_one_diffusers_reads_from_real_files(real: Built) -> None:
    """diffusers' detection and converter were written against the published files: both must take ours."""
    for prefix in ("", COMFY):
        checkpoint = {prefix + k: v for k, v in real.original.items()}
        assert sfu.infer_diffusers_model_type(checkpoint) == real.case.diffusers_type
    assert _shapes(real.case.from_original(dict(real.original))) == real.model_shapes


def test_the_shipped_config_has_the_published_size(real: Built) -> None:
    billions = sum(t.numel() for t in real.original.values()) / 1e9
    low, high = real.case.billions
    assert low <= billions <= high, f"{real.case.folder}: {billions:.3f}B parameters"


@pytest.mark.parametrize("prefix", ["", COMFY], ids=["bare", "comfy"])
def test_real_file_is_recognised(real: Built, prefix: str) -> None:
    family, arch = registry.detect_file(_index(_shapes(real.original), prefix))
    assert arch is real.case.arch  # dev / schnell / Fill and Large / Medium told apart
    assert registry.family_for(arch) is family


@pytest.mark.parametrize("prefix", ["", COMFY], ids=["bare", "comfy"])
def test_dimensions_are_read_back(real: Built, prefix: str) -> None:
    inferred = real.case.infer(_index(_shapes(real.original), prefix))
    expected = {k: _plain(real.config[k]) for k in real.case.derived}
    if "out_channels" in expected:  # None in a config means "as in_channels"
        expected["out_channels"] = expected["out_channels"] or expected["in_channels"]
    assert {k: _plain(inferred[k]) for k in real.case.derived} == expected


# -- the text encoders and VAE files in models/text_encoder and models/VAE ----------------------------------

_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1}


def _write_sparse(path: Path, shapes: Mapping[str, tuple[int, ...]], dtype: str = "BF16") -> Path:
    """A safetensors file with the real header and size whose data is a hole: nothing on disk."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape) * _BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def _qwen3_8b() -> dict[str, Any]:
    """Qwen3-8B (FLUX.2 klein 9B's encoder): only the sizes differ from the shipped Qwen3-4B."""
    return {**_shipped("zimage/text_encoder/config.json"), "hidden_size": 4096, "intermediate_size": 12288,
            "tie_word_embeddings": False}


@dataclass(frozen=True)
class Encoders:
    # ComfyUI's clip_l.safetensors and Stability's bundles: text_model.* with no text_projection (SD3
    # pools CLIP-L unprojected; diffusers gives it an identity projection); clip_g has its projection
    clip_l: Shapes
    clip_g: Shapes
    t5xxl: Shapes  # shared.weight once, the tied encoder.embed_tokens left out
    qwen_4b: Shapes  # qwen_3_4b.safetensors: model.* (the head is tied, not stored)
    qwen_8b: Shapes
    flux_vae: Shapes  # ae.safetensors: LDM names


@pytest.fixture(scope="module")
def encoders() -> Encoders:
    with torch.device("meta"):
        clip_l = CLIPTextModelWithProjection(CLIPTextConfig(**_shipped("sd35/text_encoder/config.json")))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**_shipped("sd35/text_encoder_2/config.json")))
        t5 = T5EncoderModel(T5Config(**_shipped("flux_dev/text_encoder_2/config.json")))
        qwen_4b = Qwen3Model(Qwen3Config(**_shipped("zimage/text_encoder/config.json")))
        qwen_8b = Qwen3Model(Qwen3Config(**_qwen3_8b()))
        vae_config = _shipped("flux_dev/vae/config.json")
        vae = AutoencoderKL.from_config(vae_config)

    def clip(model: torch.nn.Module, projection: bool) -> Shapes:
        return {f"text_model.{k.removeprefix('text_model.')}" if not k.startswith("text_projection") else k: s
                for k, s in _shapes(model.state_dict()).items()
                if not k.endswith("position_ids") and (projection or not k.startswith("text_projection"))}

    t5_shapes = {k: s for k, s in _shapes(t5.state_dict()).items() if k != "encoder.embed_tokens.weight"}
    q8 = {f"model.{k}": s for k, s in _shapes(qwen_8b.state_dict()).items()}
    q8["lm_head.weight"] = q8["model.embed_tokens.weight"]
    ldm = {k.removeprefix(VAE_PREFIX): s for k, s in _shapes(vae_to_ldm(vae.state_dict(), vae_config)).items()}
    return Encoders(clip(clip_l, projection=False), clip(clip_g, projection=True), t5_shapes, {f"model.{k}": s for k, s in
                                                           _shapes(qwen_4b.state_dict()).items()}, q8, ldm)


def test_encoder_sizes_are_the_published_ones(encoders: Encoders) -> None:
    def billions(shapes: Shapes) -> float:
        return sum(math.prod(s) for s in shapes.values()) / 1e9
    assert 0.12 < billions(encoders.clip_l) < 0.13  # CLIP ViT-L/14 text tower, 123M
    assert 0.69 < billions(encoders.clip_g) < 0.70  # OpenCLIP bigG text tower, 695M
    assert 4.7 < billions(encoders.t5xxl) < 4.8  # T5-v1.1-XXL encoder, 4.76B
    assert 4.0 < billions(encoders.qwen_4b) < 4.05  # Qwen3-4B, 4.02B


def test_encoder_configs_are_read_from_shapes(encoders: Encoders) -> None:
    """Each family's encoder config inference gives back the real encoders' sizes."""
    for shapes, rel in ((encoders.clip_l, "sd35/text_encoder"), (encoders.clip_g, "sd35/text_encoder_2")):
        real = _shipped(f"{rel}/config.json")
        got = sd3_layout.clip_config(_index(shapes), "", {})  # no base: every value from the shapes
        keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings", "projection_dim")
        assert {k: got[k] for k in keys} == {k: real[k] for k in keys}
    real = _shipped("sd35/text_encoder_3/config.json")
    got = sd3_layout.t5_config(_index(encoders.t5xxl), "", {})
    keys = ("d_model", "d_kv", "num_heads", "d_ff", "num_layers", "vocab_size", "relative_attention_num_buckets",
            "feed_forward_proj")
    assert {k: got[k] for k in keys} == {k: real[k] for k in keys}
    qwen_keys = ("vocab_size", "hidden_size", "head_dim", "num_attention_heads", "num_key_value_heads",
                 "intermediate_size", "num_hidden_layers")
    for shapes, real in ((encoders.qwen_4b, _shipped("flux2_klein/text_encoder/config.json")),
                         (encoders.qwen_8b, _qwen3_8b())):
        klein = flux2_files.text_encoder_config(_index(shapes), "")
        zimage = zimage_files.qwen3_config({k.removeprefix("model."): s for k, s in shapes.items()}).to_dict()
        assert {k: klein[k] for k in qwen_keys} == {k: real[k] for k in qwen_keys}
        assert {k: zimage[k] for k in qwen_keys} == {k: real[k] for k in qwen_keys}


def _folder(root: Path, name: str, files: Mapping[str, tuple[Shapes, str]]) -> Path:
    folder = root / name
    folder.mkdir()
    for file_name, (shapes, dtype) in files.items():
        _write_sparse(folder / file_name, shapes, dtype)
    return folder


def _load(path: Path, index: TensorIndex, arch: ModelArch, text_encoders: Path, vaes: Path | None = None) -> FileLoad:
    device = DeviceInfo(device=torch.device("cpu"), dtype=torch.bfloat16, reason="test")
    return FileLoad(path, index, arch, device, path.parent / "configs",
                    ComponentDirs(text_encoders=(text_encoders,), vaes=(vaes,) if vaes else ()))


def _transformer_index(folder: str) -> TensorIndex:
    case = next(m for m in MODELS if m.folder == folder)
    return _index(_shapes(case.to_original(_meta_model(case))))


def test_flux_takes_clip_l_and_t5xxl_and_refuses_clip_g(tmp_path: Path, encoders: Encoders) -> None:
    index = _transformer_index("flux_dev")
    dims = flux_keys.infer_dims(index)
    assert dims is not None
    vaes = _folder(tmp_path, "VAE", {"ae.safetensors": (encoders.flux_vae, "BF16")})
    full = _folder(tmp_path, "full", {"clip_g.safetensors": (encoders.clip_g, "F16"),
                                      "clip_l.safetensors": (encoders.clip_l, "F16"),
                                      "t5xxl_fp8_e4m3fn.safetensors": (encoders.t5xxl, "F8_E4M3")})
    clip, t5, vae = flux._locate(_load(tmp_path / "flux1-dev.safetensors", index, ModelArch.FLUX_DEV, full, vaes), dims)
    assert (clip.path.name, t5.path.name, vae.path.name) == ("clip_l.safetensors", "t5xxl_fp8_e4m3fn.safetensors",
                                                             "ae.safetensors")
    no_l = _folder(tmp_path, "no_l", {"clip_g.safetensors": (encoders.clip_g, "F16"),
                                      "t5xxl_fp16.safetensors": (encoders.t5xxl, "F16")})
    with pytest.raises(MissingComponentError) as caught:
        flux._locate(_load(tmp_path / "flux1-dev.safetensors", index, ModelArch.FLUX_DEV, no_l, vaes), dims)
    assert "clip_l" in caught.value.file_hint  # SD 3.5's CLIP-G is not FLUX's CLIP-L


def test_sd35_takes_its_three_encoders_and_refuses_a_missing_clip_g(tmp_path: Path, encoders: Encoders) -> None:
    for folder, arch in (("sd35", ModelArch.SD35_LARGE), ("sd35_medium", ModelArch.SD35_MEDIUM)):
        index = _transformer_index(folder)
        config = sd3_layout.transformer_config(index, arch, "")
        both = _folder(tmp_path, f"{folder}-all", {"clip_g.safetensors": (encoders.clip_g, "F16"),
                                                   "clip_l.safetensors": (encoders.clip_l, "F16"),
                                                   "t5xxl_fp16.safetensors": (encoders.t5xxl, "F16")})
        load = _load(tmp_path / f"{folder}.safetensors", index, arch, both)
        clip_l, clip_g, t5 = sd3_parts.find_text_encoders(load, config)
        assert t5 is not None
        assert (clip_l.path.name, clip_g.path.name, t5.path.name) == (
            "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors")
        only_l = _folder(tmp_path, f"{folder}-only-l", {"clip_l.safetensors": (encoders.clip_l, "F16"),
                                                        "t5xxl_fp16.safetensors": (encoders.t5xxl, "F16")})
        with pytest.raises(MissingComponentError) as caught:
            sd3_parts.find_text_encoders(_load(tmp_path / f"{folder}.safetensors", index, arch, only_l), config)
        assert "clip_g" in caught.value.file_hint


def test_qwen3_4b_fits_klein_4b_and_zimage_and_qwen3_8b_does_not(tmp_path: Path, encoders: Encoders) -> None:
    both = _folder(tmp_path, "both", {"qwen_3_8b.safetensors": (encoders.qwen_8b, "BF16"),
                                      "qwen_3_4b.safetensors": (encoders.qwen_4b, "BF16")})
    only_8b = _folder(tmp_path, "only_8b", {"qwen_3_8b.safetensors": (encoders.qwen_8b, "BF16")})
    klein = _transformer_index("flux2_klein")
    joint = flux2_files.transformer_config(klein, flux2_files.TransformerLayout("", False))["joint_attention_dim"]
    path = tmp_path / "flux-2-klein-4b.safetensors"
    assert flux2._external_text_encoder(_load(path, klein, ModelArch.FLUX2_KLEIN, both), joint)[0].name == \
        "qwen_3_4b.safetensors"
    with pytest.raises(MissingComponentError):
        flux2._external_text_encoder(_load(path, klein, ModelArch.FLUX2_KLEIN, only_8b), joint)
    width = _zimage_infer(_transformer_index("zimage"))["cap_feat_dim"]
    found, prefix = zimage_files.find_text_encoder(path, ComponentDirs(text_encoders=(both,)), width)
    assert (found.name, prefix) == ("qwen_3_4b.safetensors", "model.")
    with pytest.raises(MissingComponentError):
        zimage_files.find_text_encoder(path, ComponentDirs(text_encoders=(only_8b,)), width)


def test_all_in_one_files_use_their_bundled_parts(tmp_path: Path, encoders: Encoders) -> None:
    """ComfyUI's all-in-one checkpoints: the transformer under ``model.diffusion_model.``, the encoders
    under ``text_encoders.<name>.transformer.``, the VAE under ``vae.`` / ``first_stage_model.``."""
    empty = _folder(tmp_path, "empty", {})

    def bundle(folder: str, parts: Mapping[str, Shapes]) -> TensorIndex:
        shapes = {COMFY + k: s for k, s in _transformer_index(folder).shapes.items()}
        shapes.update({prefix + k: s for prefix, part in parts.items() for k, s in part.items()})
        return _index(shapes)

    index = bundle("flux_dev", {"text_encoders.clip_l.transformer.": encoders.clip_l,
                                "text_encoders.t5xxl.transformer.": encoders.t5xxl, "vae.": encoders.flux_vae})
    assert registry.detect_file(index)[1] is ModelArch.FLUX_DEV
    dims = flux_keys.infer_dims(index)
    assert dims is not None
    path = tmp_path / "flux1-dev-fp8.safetensors"
    found = flux._locate(_load(path, index, ModelArch.FLUX_DEV, empty), dims)
    assert [(f.path, f.prefix) for f in found] == [(path, "text_encoders.clip_l.transformer.text_model."),
                                                   (path, "text_encoders.t5xxl.transformer."), (path, "vae.")]
    index = bundle("sd35_medium", {sd3_layout.CLIP_L: encoders.clip_l, sd3_layout.CLIP_G: encoders.clip_g,
                                   sd3_layout.T5XXL: encoders.t5xxl, "first_stage_model.": encoders.flux_vae})
    assert registry.detect_file(index)[1] is ModelArch.SD35_MEDIUM
    path = tmp_path / "sd3.5_medium_incl_clips_t5xxlfp8scaled.safetensors"
    load = _load(path, index, ModelArch.SD35_MEDIUM, empty)
    parts = sd3_parts.find_text_encoders(load, sd3_layout.transformer_config(index, ModelArch.SD35_MEDIUM, COMFY))
    assert [(p.path, p.prefix) for p in parts if p is not None] == [
        (path, sd3_layout.CLIP_L), (path, sd3_layout.CLIP_G), (path, sd3_layout.T5XXL)]
    assert sd3_parts.find_vae(load).prefix == "first_stage_model."


def test_sd35_loads_a_clip_l_without_projection(tmp_path: Path) -> None:
    """The real CLIP-L files have no text_projection: SD 3.5 pools CLIP-L through an identity, as diffusers."""
    config = CLIPTextConfig(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, projection_dim=32)
    torch.manual_seed(0)
    reference = CLIPTextModelWithProjection(config).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("text_projection")}
    path = tmp_path / "clip_l.safetensors"
    save_file({f"text_model.{k.removeprefix('text_model.')}": v.contiguous() for k, v in state.items()}, str(path))
    index = read_safetensors_index(path)
    part = sd3_parts.Part(path, index, "")
    model = sd3_parts.load_clip(part, sd3_layout.clip_config(index, "", config.to_dict()), torch.float32)
    out = model(torch.tensor([[1, 5, 7, 2]]))
    assert torch.equal(out.text_embeds, model.text_model(torch.tensor([[1, 5, 7, 2]])).pooler_output)
