"""LoRA files without a model: metadata, format recognition, and LDM layer names on real-size UNets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from modules.devtools.ldm_keys import UNET_PREFIX, unet_to_ldm
from modules.engine.lora_files import parse_factors, read_lora_metadata
from modules.engine.lora_layers import ldm_block_pairs, ldm_name
from modules.errors import AddonLoadError

CONFIGS = Path(__file__).resolve().parents[2] / "modules" / "engine" / "model_configs"


@pytest.mark.parametrize("arch", ["sd15", "sd15_inpaint", "sd2_v", "sdxl", "sdxl_refiner"])
def test_ldm_names_agree_with_the_checkpoint_writer_on_real_configs(arch: str) -> None:
    config = json.loads((CONFIGS / arch / "unet" / "config.json").read_text(encoding="utf-8"))
    with torch.device("meta"):  # real sizes, no memory
        unet = UNet2DConditionModel.from_config(config)
    pairs = ldm_block_pairs(unet.config)
    layers = {name: m for name, m in unet.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    expected = unet_to_ldm({f"{name}.weight": m.weight for name, m in layers.items()}, unet.config)
    ours = {f"{UNET_PREFIX}{ldm_name(name, pairs)}.weight" for name in layers}
    assert ours == set(expected)


def _kohya(*suffixes: str) -> dict[str, torch.Tensor]:
    return {f"lora_unet_mid_block_attentions_0_proj_in.{s}": torch.ones(2, 2) for s in suffixes}


@pytest.mark.parametrize("tensors, reason", [
    (_kohya("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), "LoHa"),
    (_kohya("lokr_w1", "lokr_w2_a", "lokr_w2_b"), "LoKr"),
    (_kohya("oft_blocks"), "OFT"),
    (_kohya("a1.weight", "a2.weight", "b1.weight", "b2.weight"), "GLoRA"),
    (_kohya("diff", "diff_b"), "full"),
    (_kohya("lora_down.weight", "lora_up.weight", "lora_mid.weight"), "CP decomposition"),
    (_kohya("lora_down.weight", "lora_up.weight", "dora_scale"), "DoRA"),
    ({"unet.mid_block.attentions.0.proj_in.lora_magnitude_vector": torch.ones(2)}, "DoRA"),
    ({"model.diffusion_model.out.2.weight": torch.ones(2)}, "checkpoint"),
    ({"emb_params": torch.ones(2, 2)}, "embedding"),
    ({"base_model.model.conv_in.lora_A.weight": torch.ones(2, 2)}, "names Atelier does not know"),
    ({"foo": torch.ones(2)}, "no LoRA weights"),
    (_kohya("lora_down.weight"), "lacks its lora_down or lora_up"),
])
def test_formats_atelier_cannot_apply_are_named(tensors: dict[str, torch.Tensor], reason: str) -> None:
    with pytest.raises(AddonLoadError, match=reason):
        parse_factors(Path("x.safetensors"), tensors, {})


def test_kohya_alpha_becomes_a_scale_and_peft_alpha_comes_from_the_metadata() -> None:
    kohya = _kohya("lora_down.weight", "lora_up.weight")
    kohya["lora_unet_mid_block_attentions_0_proj_in.alpha"] = torch.tensor(1.0)
    [factor] = parse_factors(Path("k.safetensors"), kohya, {})
    assert factor.component == "unet" and factor.scale == 0.5  # alpha 1 over rank 2
    peft = {"unet.conv_in.lora_A.weight": torch.ones(4, 2), "unet.conv_in.lora_B.weight": torch.ones(2, 4),
            "unet.conv_out.lora_A.weight": torch.ones(4, 2), "unet.conv_out.lora_B.weight": torch.ones(2, 4)}
    meta = {"lora_adapter_metadata": json.dumps({"unet.lora_alpha": 8, "unet.alpha_pattern": {"conv_out": 2}})}
    scales = {f.key: f.scale for f in parse_factors(Path("p.safetensors"), peft, meta)}
    assert scales == {"unet.conv_in": 2.0, "unet.conv_out": 0.5}
    assert {f.scale for f in parse_factors(Path("p.safetensors"), peft, {})} == {None}


def test_read_lora_metadata(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(path), metadata={"ss_network_dim": "8"})
    assert read_lora_metadata(path) == {"ss_network_dim": "8"}
    plain = tmp_path / "b.safetensors"
    save_file({"lora_unet_x.alpha": torch.tensor(1.0)}, str(plain))
    assert read_lora_metadata(plain) == {}
    assert read_lora_metadata(tmp_path / "c.pt") == {}  # other file types carry none, existing or not
    (tmp_path / "d.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(AddonLoadError, match="not valid JSON"):
        read_lora_metadata(tmp_path / "d.safetensors")
