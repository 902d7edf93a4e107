"""Control-LoRA files (Stability AI's layout) as ControlNet models on the tiny models: listed like
the others, built on the job's own UNet, run as a ControlNet, refused for another family."""

from __future__ import annotations

import base64
import hashlib
import io
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.infotext import parse_infotext
from modules.params import GenerationRequest
from tests.conftest import TinyModels, make_services

EXTENSION = Path(__file__).resolve().parents[2] / "extensions" / "controlnet"
BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64,
                         sampler="Euler", checkpoint="tiny-sd15.safetensors", seed=5, save_images=False)
SDXL = replace(BASE, checkpoint="tiny-sdxl.safetensors")


@pytest.fixture(scope="module")
def cl() -> Iterator[Any]:
    """The extension's Control-LoRA and model modules, importable by their bare names as when it is loaded."""
    sys.path.insert(0, str(EXTENSION))
    import cn_control_lora
    import cn_models
    yield type("Modules", (), {"lora": cn_control_lora, "models": cn_models})
    sys.path.remove(str(EXTENSION))


@pytest.fixture(scope="module")
def services(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from diffusers import UNet2DConditionModel

    from modules.devtools.tiny_controlnet import build_tiny_control_lora, write_state
    from modules.devtools.tiny_model import TinyArch, build_tiny_pipeline

    folder = tmp_path_factory.mktemp("cl-data") / "models" / "ControlNet"
    for arch, name in ((TinyArch.SD15, "tiny-cl-sd15"), (TinyArch.SDXL, "tiny-cl-sdxl")):
        write_state(build_tiny_control_lora(build_tiny_pipeline(arch).unet)[0], folder / f"{name}.safetensors")
    # an SD 1.x Control-LoRA for a wider UNet than the tiny checkpoint's: same family, other shapes
    sd15 = build_tiny_pipeline(TinyArch.SD15).unet.config
    wider = UNet2DConditionModel.from_config({**sd15, "block_out_channels": (64, 64)})
    write_state(build_tiny_control_lora(wider)[0], folder / "tiny-cl-wide.safetensors")
    from modules.devtools.tiny_lora import write_tiny_lora

    # the same file under another name: built anew (the cache is by file) while the job has a LoRA
    (folder / "tiny-cl-copy.safetensors").write_bytes((folder / "tiny-cl-sd15.safetensors").read_bytes())
    write_tiny_lora(tiny_models.sd15_file, folder.parent / "Lora" / "cubestyle.safetensors", seed=3, conv=True)
    svc = make_services(folder.parents[1], tiny_models.folder)
    yield svc
    svc.close()


def control_image(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def unit(**values: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "none", "model": "tiny-cl-sd15", "image": control_image(0), **values}


def run(services: Any, *units: dict[str, Any], request: GenerationRequest = BASE) -> Any:
    params = {f"unit_{i}": u for i, u in enumerate(units)}
    return services.generation.generate(replace(request, extension_params={"controlnet": params} if units else {}))


def pixels(result: Any) -> np.ndarray:
    with Image.open(io.BytesIO(result.images[0].png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def refusal(excinfo: pytest.ExceptionInfo[ValidationError]) -> str:
    return " ".join(f"{e.field}: {e.message}" for e in excinfo.value.errors)


def test_a_control_lora_unit_changes_the_pixels_and_weight_zero_does_not(services: Any) -> None:
    plain = pixels(run(services))
    assert np.array_equal(pixels(run(services, unit(weight=0))), plain)
    controlled = run(services, unit())
    assert np.abs(pixels(controlled) - plain).mean() > 1
    assert parse_infotext(controlled.images[0].infotext).params["ControlNet 0"].startswith(
        "Module: none, Model: tiny-cl-sd15 [")
    assert np.array_equal(pixels(run(services, unit())), pixels(controlled))  # the cached net gives the same
    sdxl_plain = pixels(run(services, request=SDXL))
    assert np.abs(pixels(run(services, unit(model="tiny-cl-sdxl"), request=SDXL)) - sdxl_plain).mean() > 1


def test_a_control_lora_is_built_from_the_checkpoint_under_a_prompt_lora(services: Any) -> None:
    with_lora = replace(BASE, prompt="a red cube <lora:cubestyle:1>")
    plain = pixels(run(services, request=with_lora))
    assert not np.array_equal(plain, pixels(run(services)))  # the LoRA is in use
    built_under_lora = pixels(run(services, unit(model="tiny-cl-copy"), request=with_lora))
    assert np.abs(built_under_lora - plain).mean() > 1
    # the ControlNet takes the checkpoint's own weights: a prompt's LoRA, attached to the UNet, is left out
    assert np.array_equal(built_under_lora, pixels(run(services, unit(), request=with_lora)))


def test_a_control_lora_for_another_family_is_refused_naming_both(services: Any) -> None:
    for model, request in (("tiny-cl-sdxl", BASE), ("tiny-cl-sd15", SDXL)):
        with pytest.raises(ValidationError) as excinfo:
            run(services, unit(model=model), request=request)
        assert f"{model} [" in refusal(excinfo) and "SDXL" in refusal(excinfo) and "SD 1.x" in refusal(excinfo)


def test_a_control_lora_for_another_unet_of_the_family_is_refused_naming_it(services: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        run(services, unit(model="tiny-cl-wide"))
    assert "cannot load tiny-cl-wide [" in refusal(excinfo) and "Control-LoRA" in refusal(excinfo)


def test_control_loras_are_listed_with_their_hash(services: Any, cl: Any) -> None:
    titles = [m.title for m in cl.models.find_models(services.extensions.host("controlnet"))]
    folder = services.paths.models_dir / "ControlNet"
    for name in ("tiny-cl-sd15", "tiny-cl-sdxl"):
        digest = hashlib.sha256((folder / f"{name}.safetensors").read_bytes()).hexdigest()
        assert f"{name} [{digest[:8]}]" in titles
    assert cl.lora.is_control_lora(folder / "tiny-cl-sd15.safetensors")


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters:RuntimeWarning")
def test_the_built_controlnet_is_the_one_the_file_stands_for(cl: Any, arch: str, tmp_path: Path) -> None:
    """On the tiny UNet (one layer per level): exactly the ControlNet the file was made from. On the
    real layout (two layers per level), where diffusers' own loader applies: the same outputs as it."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from modules.devtools.tiny_controlnet import TINY_EMBEDDING_CHANNELS, build_tiny_control_lora, write_state
    from modules.devtools.tiny_model import TinyArch, build_tiny_pipeline

    unet = build_tiny_pipeline(TinyArch(arch)).unet
    state, expected = build_tiny_control_lora(unet)
    built = cl.lora.build(write_state(state, tmp_path / "tiny.safetensors"), unet)
    assert cl.lora.family_of({k: tuple(v.shape) for k, v in state.items()}) == {"sd15": "sd1", "sdxl": "sdxl"}[arch]
    for key, value in expected.state_dict().items():
        assert torch.equal(built.state_dict()[key], value), key

    two = UNet2DConditionModel.from_config({**unet.config, "layers_per_block": 2})
    state, _ = build_tiny_control_lora(two, trained_biases=False)  # diffusers keeps the UNet's biases there
    ours = cl.lora.build(write_state(state, tmp_path / "two.safetensors"), two)
    theirs = ControlNetModel.from_unet(two, conditioning_embedding_out_channels=TINY_EMBEDDING_CHANNELS)
    theirs.load_lora_adapter(dict(state), prefix=None)
    generator = torch.Generator().manual_seed(0)
    x, hint = torch.randn(2, 4, 8, 8, generator=generator), torch.rand(2, 3, 64, 64, generator=generator)
    tokens = torch.randn(2, 7, two.config.cross_attention_dim, generator=generator)
    added = {"text_embeds": torch.randn(2, 32, generator=generator),
             "time_ids": torch.randn(2, 6, generator=generator)}
    extra = added if arch == "sdxl" else None
    with torch.no_grad():
        outputs = [net(x, torch.tensor([500, 500]), encoder_hidden_states=tokens, controlnet_cond=hint,
                       added_cond_kwargs=extra, return_dict=False) for net in (ours, theirs)]
    for a, b in zip([*outputs[0][0], outputs[0][1]], [*outputs[1][0], outputs[1][1]], strict=True):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_real_sized_control_lora_names_land_on_the_published_controlnet(cl: Any, family: str) -> None:
    """Every LDM name of a real-sized ControlNet (lllyasviel/sd-controlnet-canny's and
    diffusers/controlnet-canny-sdxl-1.0's configs, built on the meta device) maps to its own
    diffusers parameter, and the hint block reads back as published."""
    import json

    import torch
    from diffusers import ControlNetModel

    from modules.devtools.tiny_controlnet import LDM_PREFIX, controlnet_to_ldm

    config = json.loads((EXTENSION / "configs" / f"{family}.json").read_text())
    with torch.device("meta"):
        net = ControlNetModel.from_config(config)
    wanted = net.state_dict()
    ldm = {key.removeprefix(LDM_PREFIX): value for key, value in controlnet_to_ldm(wanted, net.config).items()}
    hint, channels, hint_channels = cl.lora._hint_layout(ldm)
    assert channels == tuple(config["conditioning_embedding_out_channels"]) and hint_channels == 3
    names = cl.lora._module_names(net.config, hint)
    mapped = {f"{cl.lora._rename(module, names)}.{param}" for module, _, param in (k.rpartition(".") for k in ldm)}
    assert mapped == set(wanted)
