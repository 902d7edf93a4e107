"""LoRAs on the flow families (FLUX.1, SD 3.5, Z-Image): the formats users have, exact unapply, refusals.

Each family's tiny model takes a kohya-ss LoRA in the original checkpoint's names (fused q/k/v,
FLUX.1's ``linear1``, swapped final modulation) and an ai-toolkit/diffusers one in diffusers' names.
A probe layer must compute ``W + weight * alpha / rank * up @ down`` by hand (for a fused layer,
the probe's rows of ``up``); the whole transformer must compute what its original-layout
checkpoint, edited by the same LoRA and converted by the family's own converter, computes; and with
no LoRA the weights and a generated image are bit for bit the fresh model's. FLUX.2 klein gets the
probe and exact-unapply checks on its pipeline alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from modules.devtools import tiny_flux, tiny_sd3, tiny_zimage
from modules.devtools.tiny_lora import LoraStyle, write_lora_file
from modules.devtools.tiny_model import TinyArch
from modules.engine.devices import DeviceInfo
from modules.engine.families import flux_keys
from modules.engine.generate import ImageTask, run_task
from modules.engine.loader import LoadedModel, load_model
from modules.engine.lora import LoraUse, apply_loras
from modules.engine.sampling.loop import NoisePlan
from modules.errors import AddonLoadError
from modules.samplers import ScheduleType, resolve_sampler

CPU = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test")
RANK, ALPHA = 4, 2.0  # what tiny kohya LoRAs are written with


@dataclass(frozen=True)
class Family:
    arch: TinyArch
    write: Callable[..., Path]
    # (kohya layer, its probe's diffusers path, which third of the fused up weight the probe takes)
    fused_probe: tuple[str, str, int]
    plain_probe: str  # a layer the ai-toolkit file names as diffusers does


FAMILIES = {
    "flux": Family(TinyArch.FLUX_DEV, tiny_flux.write_tiny,
                   ("lora_unet_double_blocks_0_img_attn_qkv", "transformer_blocks.0.attn.to_k", 1),
                   "single_transformer_blocks.0.proj_mlp"),
    "sd3": Family(TinyArch.SD35, tiny_sd3.write_tiny,
                  ("lora_unet_joint_blocks_0_context_block_attn_qkv", "transformer_blocks.0.attn.add_v_proj", 2),
                  "transformer_blocks.0.attn.to_q"),
    "zimage": Family(TinyArch.ZIMAGE, tiny_zimage.write_tiny,
                     ("lora_unet_layers_0_attention_qkv", "layers.0.attention.to_k", 1),
                     "layers.1.feed_forward.w2"),
}


@dataclass
class Rig:
    model: LoadedModel
    loras: dict[str, Path]
    base_state: dict[str, torch.Tensor]
    base_image: np.ndarray
    family: Family

    @property
    def pipe(self):
        return self.model.pipeline

    @property
    def transformer(self) -> torch.nn.Module:
        return self.model.denoiser_network


def _task() -> ImageTask:
    return ImageTask(prompt="a red house", negative_prompt="", sampler=resolve_sampler("Euler")[0],  # type: ignore[index]
                     schedule=ScheduleType.SIMPLE, steps=2, cfg_scale=1.0, width=64, height=64, clip_skip=1,
                     noise=NoisePlan(seeds=(5,)))


class _Quiet:
    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def _image(model: LoadedModel) -> np.ndarray:
    images = run_task(model, _task(), _Quiet())
    assert images is not None
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Rig:
    family = FAMILIES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    model = load_model(family.write(family.arch, root / f"tiny-{request.param}.safetensors", seed=1), CPU, root / "c")
    loras = {style.value: write_lora_file(model.pipeline, root / f"{request.param}-{style.value}.safetensors",
                                          seed=2, style=style)
             for style in (LoraStyle.KOHYA, LoraStyle.PEFT, LoraStyle.COMFY)}
    return Rig(model, loras, _state(model.denoiser_network), _image(model), family)


@pytest.fixture(autouse=True)
def no_lora_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "rig" in request.fixturenames:
        apply_loras(request.getfixturevalue("rig").pipe, [])


def use(path: Path, weight: float = 1.0) -> LoraUse:
    return LoraUse(name=path.stem, path=path, unet_weight=weight, te_weight=weight)


def _layer_output(rig: Rig, layer: str, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return rig.transformer.get_submodule(layer)(x)


def _by_hand(rig: Rig, layer: str, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    base_w, base_b = rig.base_state[f"{layer}.weight"], rig.base_state.get(f"{layer}.bias")
    return torch.nn.functional.linear(x, base_w + delta, base_b)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_kohya_fused_qkv_gives_the_probe_its_rows_of_the_delta(rig: Rig, weight: float) -> None:
    file_layer, probe, third = rig.family.fused_probe
    tensors = load_file(str(rig.loras["kohya"]))
    up, down = tensors[f"{file_layer}.lora_up.weight"], tensors[f"{file_layer}.lora_down.weight"]
    rows = up.shape[0] // 3
    assert float(tensors[f"{file_layer}.alpha"]) == ALPHA and down.shape[0] == RANK
    delta = weight * (ALPHA / RANK) * up[third * rows:(third + 1) * rows] @ down
    x = torch.randn(3, down.shape[1], generator=torch.Generator().manual_seed(0))
    apply_loras(rig.pipe, [use(rig.loras["kohya"], weight)])
    got = _layer_output(rig, probe, x)
    torch.testing.assert_close(got, _by_hand(rig, probe, x, delta), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, _by_hand(rig, probe, x, torch.zeros_like(delta)), atol=1e-3)


@pytest.mark.parametrize("style", ["peft", "comfy"])
@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_ai_toolkit_layer_changes_by_weight_times_up_down(rig: Rig, style: str, weight: float) -> None:
    probe = rig.family.plain_probe
    prefix = "transformer." if style == "peft" else "diffusion_model."
    tensors = load_file(str(rig.loras[style]))
    up, down = tensors[f"{prefix}{probe}.lora_B.weight"], tensors[f"{prefix}{probe}.lora_A.weight"]
    x = torch.randn(3, down.shape[1], generator=torch.Generator().manual_seed(1))
    apply_loras(rig.pipe, [use(rig.loras[style], weight)])
    torch.testing.assert_close(_layer_output(rig, probe, x), _by_hand(rig, probe, x, weight * up @ down),
                               rtol=1e-5, atol=1e-5)


def _original_layout(rig: Rig) -> tuple[Callable, Callable]:
    """(diffusers -> original, original -> diffusers) transformer state converters of the family."""
    transformer = rig.transformer
    if rig.family.arch is TinyArch.FLUX_DEV:
        dims = tiny_flux.tiny_dims(rig.model.arch)
        return (lambda s: flux_keys.to_bfl(s, dims)), (lambda s: flux_keys.to_diffusers(s, dims))
    if rig.family.arch is TinyArch.SD35:
        from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
        return ((lambda s: tiny_sd3.transformer_to_sai(s, transformer.config)),
                (lambda s: convert_sd3_transformer_checkpoint_to_diffusers(dict(s))))
    from diffusers.loaders.single_file_utils import convert_z_image_transformer_checkpoint_to_diffusers
    return tiny_zimage.transformer_to_original, lambda s: convert_z_image_transformer_checkpoint_to_diffusers(dict(s))


def test_kohya_lora_equals_editing_the_original_checkpoint(rig: Rig) -> None:
    """Every layer, fused and swapped ones included: the LoRA applied by Atelier computes what the
    original-layout weights plus ``scale * up @ down`` compute after the family's own conversion."""
    to_original, to_diffusers = _original_layout(rig)
    original = to_original(rig.base_state)
    tensors = load_file(str(rig.loras["kohya"]))
    for key in [k for k in tensors if k.startswith("lora_unet_") and k.endswith(".lora_down.weight")]:
        layer = key.removesuffix(".lora_down.weight")
        name = next(n for n in original if n.endswith(".weight") and
                    "lora_unet_" + n.removesuffix(".weight").replace(".", "_") == layer)
        down, up = tensors[key], tensors[f"{layer}.lora_up.weight"]
        delta = (ALPHA / RANK) * up.flatten(1) @ down.flatten(1)
        original[name] = original[name] + delta.reshape(original[name].shape[0], *down.shape[1:])
    edited = type(rig.transformer).from_config(rig.transformer.config).eval()
    edited.load_state_dict(to_diffusers(original))
    probe_inputs = _probe_inputs(rig)
    apply_loras(rig.pipe, [use(rig.loras["kohya"])])
    with torch.inference_mode():
        ours, theirs = _sample(rig.transformer(**probe_inputs)), _sample(edited(**probe_inputs))
        plain = type(rig.transformer).from_config(rig.transformer.config).eval()
        plain.load_state_dict(rig.base_state)
        base = _sample(plain(**probe_inputs))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(ours, base, atol=1e-3)


def _sample(output: tuple) -> torch.Tensor:
    first = output[0]
    return torch.stack(first) if isinstance(first, list) else first  # Z-Image returns one tensor per image


def _probe_inputs(rig: Rig) -> dict[str, object]:
    gen = torch.Generator().manual_seed(3)
    config = rig.transformer.config
    if rig.family.arch is TinyArch.FLUX_DEV:
        return {"hidden_states": torch.randn(1, 16, config.in_channels, generator=gen),
                "encoder_hidden_states": torch.randn(1, 5, config.joint_attention_dim, generator=gen),
                "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=gen),
                "timestep": torch.tensor([0.5]), "guidance": torch.tensor([3.5]),
                "img_ids": torch.zeros(16, 3), "txt_ids": torch.zeros(5, 3), "return_dict": False}
    if rig.family.arch is TinyArch.SD35:
        return {"hidden_states": torch.randn(1, config.in_channels, 8, 8, generator=gen),
                "encoder_hidden_states": torch.randn(1, 5, config.joint_attention_dim, generator=gen),
                "pooled_projections": torch.randn(1, config.pooled_projection_dim, generator=gen),
                "timestep": torch.tensor([500.0]), "return_dict": False}
    return {"x": [torch.randn(config.in_channels, 1, 8, 8, generator=gen)],
            "t": torch.tensor([0.5]), "cap_feats": [torch.randn(8, config.cap_feat_dim, generator=gen)],
            "return_dict": False}


def test_unapply_restores_weights_and_image_bit_for_bit(rig: Rig) -> None:
    apply_loras(rig.pipe, [use(rig.loras["kohya"]), use(rig.loras["peft"], 0.5)])
    with_loras = _image(rig.model)
    assert not np.array_equal(with_loras, rig.base_image)
    apply_loras(rig.pipe, [])
    after = _state(rig.transformer)
    assert after.keys() == rig.base_state.keys()
    assert all(torch.equal(after[k], rig.base_state[k]) for k in after)
    assert np.array_equal(_image(rig.model), rig.base_image)


def test_weight_zero_is_the_base_and_half_differs_from_one(rig: Rig) -> None:
    apply_loras(rig.pipe, [use(rig.loras["kohya"], 0.0)])
    assert np.array_equal(_image(rig.model), rig.base_image)
    apply_loras(rig.pipe, [use(rig.loras["kohya"], 0.5)])
    half = _image(rig.model)
    apply_loras(rig.pipe, [use(rig.loras["kohya"], 1.0)])
    assert not np.array_equal(half, _image(rig.model))


def test_a_lora_for_another_family_is_refused_naming_the_file(rig: Rig, tmp_path: Path) -> None:
    """Every other family's kohya file (FLUX.1 on SD 3.5, ...) is refused; the model keeps working, unchanged."""
    others = [name for name, family in FAMILIES.items() if family is not rig.family]
    for other in others:
        pipe = {"flux": lambda: tiny_flux.build_tiny_flux_pipeline(TinyArch.FLUX_DEV),
                "sd3": lambda: tiny_sd3.build_tiny_sd3_pipeline(TinyArch.SD35),
                "zimage": lambda: tiny_zimage.build_tiny_pipeline(TinyArch.ZIMAGE)}[other]()
        for style in (LoraStyle.KOHYA, LoraStyle.PEFT):
            bad = write_lora_file(pipe, tmp_path / f"for-{other}-{style.value}.safetensors", style=style)
            with pytest.raises(AddonLoadError) as err:
                apply_loras(rig.pipe, [use(bad)])
            assert err.value.path == str(bad) and err.value.kind == "LoRA", (other, style)
            if style is LoraStyle.KOHYA:
                assert {"flux": "FLUX.1", "sd3": "SD 3.5", "zimage": "Z-Image"}[other] in str(err.value)
    assert all(torch.equal(v, rig.base_state[k]) for k, v in _state(rig.transformer).items())
    assert np.array_equal(_image(rig.model), rig.base_image)


def test_services_apply_a_flux_lora_from_the_prompt(tmp_path: Path) -> None:
    from modules.infotext import parse_infotext
    from modules.params import GenerationRequest
    from tests.conftest import make_services

    ckpt, loras = tmp_path / "Stable-diffusion", tmp_path / "data" / "models" / "Lora"
    loras.mkdir(parents=True)
    tiny_flux.write_tiny(TinyArch.FLUX_DEV, ckpt / "tiny-flux.safetensors", seed=1)
    write_lora_file(tiny_flux.build_tiny_flux_pipeline(TinyArch.FLUX_DEV, seed=1), loras / "flux-style.safetensors",
                    seed=4, style=LoraStyle.KOHYA)
    request = GenerationRequest(prompt="a red house", steps=2, width=64, height=64, seed=9, sampler="Euler",
                                checkpoint="tiny-flux.safetensors", save_images=False)
    services = make_services(tmp_path / "data", ckpt)
    try:
        def pixels(req: GenerationRequest) -> tuple[object, np.ndarray]:
            result = services.generation.generate(req)
            with Image.open(io.BytesIO(result.images[0].png)) as image:
                return result, np.asarray(image.convert("RGB"))

        _, plain = pixels(request)
        result, styled = pixels(replace(request, prompt="a red house <lora:flux-style:0.8>"))
        _, after = pixels(request)
    finally:
        services.close()
    assert not np.array_equal(plain, styled) and np.array_equal(plain, after)
    parsed = parse_infotext(result.images[0].infotext)
    assert parsed.prompt.endswith("<lora:flux-style:0.8>")
    assert parsed.params["Lora hashes"].startswith("flux-style: ")


def test_flux2_klein_takes_kohya_and_ai_toolkit_loras_and_unapplies_exactly(tmp_path: Path) -> None:
    from modules.devtools import tiny_flux2

    pipe = tiny_flux2.build_tiny_pipeline(TinyArch.FLUX2_KLEIN, seed=1)
    base = _state(pipe.transformer)
    kohya = write_lora_file(pipe, tmp_path / "klein-kohya.safetensors", seed=2, style=LoraStyle.KOHYA)
    peft = write_lora_file(pipe, tmp_path / "klein-peft.safetensors", seed=3, style=LoraStyle.PEFT)
    tensors = load_file(str(kohya))
    up = tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    down = tensors["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    rows = up.shape[0] // 3
    x = torch.randn(3, down.shape[1], generator=torch.Generator().manual_seed(4))
    probe = "transformer_blocks.0.attn.to_v"
    apply_loras(pipe, [use(kohya, 0.5), use(peft, 1.0)])
    peft_tensors = load_file(str(peft))
    delta = (0.5 * (ALPHA / RANK) * up[2 * rows:] @ down
             + peft_tensors[f"transformer.{probe}.lora_B.weight"] @ peft_tensors[f"transformer.{probe}.lora_A.weight"])
    with torch.inference_mode():
        got = pipe.transformer.get_submodule(probe)(x)
    expected = torch.nn.functional.linear(x, base[f"{probe}.weight"] + delta, base.get(f"{probe}.bias"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    apply_loras(pipe, [])
    after = _state(pipe.transformer)
    assert after.keys() == base.keys() and all(torch.equal(after[k], base[k]) for k in base)
