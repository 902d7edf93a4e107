"""LoRA on a loaded pipeline: the formats real files come in, weights, caching, exact unloading, refusals.

Every check feeds the UNet and the text encoders the same fixed inputs and compares what they compute,
so a LoRA that is silently skipped, half-applied or left behind shows up as a number that moved.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modules.devtools.tiny_lora import LoraStyle, write_tiny_lora
from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.loader import LoadedModel, load_model
from modules.engine.lora import LoraUse, apply_loras, read_lora_metadata
from modules.errors import AddonLoadError

CPU = choose_device(DevicePolicy(use_cpu=True))
Outputs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Rig:
    """A loaded tiny model, fixed inputs for its parts, and what the fresh checkpoint computes on them."""

    model: LoadedModel
    inputs: dict[str, object]
    base: Outputs

    @property
    def pipe(self):
        return self.model.pipeline

    def outputs(self) -> Outputs:
        pipe, x = self.pipe, self.inputs
        out: Outputs = {}
        with torch.inference_mode():
            out["unet"] = pipe.unet(x["latent"], 500, encoder_hidden_states=x["context"],
                                    added_cond_kwargs=x.get("added")).sample
            out["text_encoder"] = pipe.text_encoder(x["ids"])[0]
            if getattr(pipe, "text_encoder_2", None) is not None:
                out["text_encoder_2"] = pipe.text_encoder_2(x["ids"])[0]
        return out


def make_rig(path: Path, cache: Path) -> Rig:
    model = load_model(path, CPU, cache)
    gen = torch.Generator().manual_seed(1234)
    sdxl = model.arch.is_sdxl
    context_width = model.pipeline.unet.config.cross_attention_dim
    inputs: dict[str, object] = {
        "latent": torch.randn(1, 4, 8, 8, generator=gen),
        "context": torch.randn(1, 77, context_width, generator=gen),
        "ids": torch.randint(0, 49406, (1, 77), generator=gen),
    }
    if sdxl:
        inputs["added"] = {"text_embeds": torch.randn(1, 32, generator=gen),
                           "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])}
    rig = Rig(model=model, inputs=inputs, base={})
    rig.base.update(rig.outputs())
    return rig


def use(path: Path, weight: float = 1.0, te: float | None = None, name: str | None = None) -> LoraUse:
    return LoraUse(name=name or path.stem, path=path, unet_weight=weight, te_weight=weight if te is None else te)


def adapter_layers(pipe) -> list[str]:
    return [f"{part}.{name}" for part in ("unet", "text_encoder", "text_encoder_2")
            if (model := getattr(pipe, part, None)) is not None
            for name, module in model.named_modules()
            if "lora" in f"{name}.{type(module).__name__}".lower() or type(module).__module__.startswith("peft")]


def assert_equal(a: Outputs, b: Outputs) -> None:
    assert a.keys() == b.keys()
    for part in a:
        assert torch.equal(a[part], b[part]), part


def assert_all_differ(a: Outputs, b: Outputs) -> None:
    for part in a:
        assert not torch.allclose(a[part], b[part], atol=1e-4), part


def assert_close(a: Outputs, b: Outputs) -> None:
    for part in a:
        torch.testing.assert_close(a[part], b[part], rtol=1e-5, atol=1e-5, msg=part)


@dataclass(frozen=True)
class Files:
    kohya: Path
    kohya_b: Path  # another seed
    ldm: Path
    peft: Path
    locon: Path
    locon_ldm: Path
    sdxl: Path
    sdxl_ldm: Path


@pytest.fixture(scope="module")
def files(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Files:
    folder = tmp_path_factory.mktemp("loras")
    sd15, sdxl = tiny_models.sd15_file, tiny_models.sdxl_file
    return Files(
        kohya=write_tiny_lora(sd15, folder / "kohya.safetensors", seed=0),
        kohya_b=write_tiny_lora(sd15, folder / "kohya-b.safetensors", seed=1),
        ldm=write_tiny_lora(sd15, folder / "ldm.safetensors", seed=0, style=LoraStyle.KOHYA_LDM),
        peft=write_tiny_lora(sd15, folder / "peft.safetensors", seed=0, style=LoraStyle.PEFT),
        locon=write_tiny_lora(sd15, folder / "locon.safetensors", seed=2, conv=True),
        locon_ldm=write_tiny_lora(sd15, folder / "locon-ldm.safetensors", seed=2, conv=True,
                                  style=LoraStyle.KOHYA_LDM),
        sdxl=write_tiny_lora(sdxl, folder / "xl.safetensors", seed=0),
        sdxl_ldm=write_tiny_lora(sdxl, folder / "xl-ldm.safetensors", seed=0, style=LoraStyle.KOHYA_LDM),
    )


@pytest.fixture(scope="module")
def sd15(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Rig:
    return make_rig(tiny_models.sd15_file, tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def sdxl(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Rig:
    return make_rig(tiny_models.sdxl_file, tmp_path_factory.mktemp("configs"))


@pytest.fixture(autouse=True)
def no_lora_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts from, and leaves, pipelines with no LoRA."""
    yield
    for name in ("sd15", "sdxl"):
        if name in request.fixturenames:
            rig = request.getfixturevalue(name)
            apply_loras(rig.pipe, [])
            assert adapter_layers(rig.pipe) == []


def test_weight_one_changes_unet_and_text_encoder_and_weight_zero_is_the_base(sd15: Rig, files: Files) -> None:
    apply_loras(sd15.pipe, [use(files.kohya, 1.0)])
    assert_all_differ(sd15.outputs(), sd15.base)
    apply_loras(sd15.pipe, [use(files.kohya, 0.0)])
    assert_equal(sd15.outputs(), sd15.base)


def test_no_lora_computes_exactly_the_fresh_checkpoint_without_adapter_layers(sd15: Rig, files: Files) -> None:
    apply_loras(sd15.pipe, [use(files.kohya), use(files.kohya_b, 0.5)])
    assert adapter_layers(sd15.pipe)
    apply_loras(sd15.pipe, [])
    assert adapter_layers(sd15.pipe) == []
    assert_equal(sd15.outputs(), sd15.base)
    apply_loras(sd15.pipe, [])  # nothing to remove is fine too
    assert_equal(sd15.outputs(), sd15.base)


def test_two_loras_combine_and_weights_change_without_reloading(sd15: Rig, files: Files) -> None:
    apply_loras(sd15.pipe, [use(files.kohya)])
    only_a = sd15.outputs()
    apply_loras(sd15.pipe, [use(files.kohya_b)])
    only_b = sd15.outputs()
    apply_loras(sd15.pipe, [use(files.kohya), use(files.kohya_b)])
    both = sd15.outputs()
    assert_all_differ(both, only_a)
    assert_all_differ(both, only_b)
    apply_loras(sd15.pipe, [use(files.kohya, 0.5), use(files.kohya_b)])
    assert_all_differ(sd15.outputs(), both)
    apply_loras(sd15.pipe, [use(files.kohya), use(files.kohya_b)])
    assert_equal(sd15.outputs(), both)
    apply_loras(sd15.pipe, [use(files.kohya)])  # b is dropped; a is what remains
    assert_equal(sd15.outputs(), only_a)


def test_text_encoder_and_unet_weights_are_separate(sd15: Rig, files: Files) -> None:
    apply_loras(sd15.pipe, [use(files.kohya, 1.0, te=0.0)])
    out = sd15.outputs()
    assert torch.equal(out["text_encoder"], sd15.base["text_encoder"])
    assert not torch.allclose(out["unet"], sd15.base["unet"], atol=1e-4)


def test_the_same_lora_named_twice_adds_its_weights(sd15: Rig, files: Files) -> None:
    apply_loras(sd15.pipe, [use(files.kohya, 1.0)])
    once = sd15.outputs()
    apply_loras(sd15.pipe, [use(files.kohya, 0.25), use(files.kohya, 0.75)])
    assert_close(sd15.outputs(), once)


@pytest.mark.parametrize("style", ["ldm", "peft"])
def test_ldm_names_and_peft_files_act_like_kohya_diffusers_names(sd15: Rig, files: Files, style: str) -> None:
    apply_loras(sd15.pipe, [use(files.kohya)])
    reference = sd15.outputs()
    apply_loras(sd15.pipe, [use(getattr(files, style))])
    assert_close(sd15.outputs(), reference)


def test_locon_conv_layers_under_ldm_names_act_like_diffusers_names(sd15: Rig, files: Files) -> None:
    apply_loras(sd15.pipe, [use(files.locon)])
    locon = sd15.outputs()
    assert_all_differ(locon, sd15.base)
    apply_loras(sd15.pipe, [use(files.locon_ldm)])
    assert_close(sd15.outputs(), locon)


@pytest.mark.parametrize("style", ["kohya", "peft"])
def test_same_result_as_diffusers_own_loader(sd15: Rig, files: Files, style: str) -> None:
    path = getattr(files, style)
    apply_loras(sd15.pipe, [use(path)])
    ours = sd15.outputs()
    apply_loras(sd15.pipe, [])
    sd15.pipe.load_lora_weights(str(path), adapter_name="reference")
    try:
        theirs = sd15.outputs()
    finally:
        sd15.pipe.unload_lora_weights()
    assert_close(ours, theirs)


def test_sdxl_kohya_lora_changes_unet_and_both_text_encoders(sdxl: Rig, files: Files) -> None:
    apply_loras(sdxl.pipe, [use(files.sdxl)])
    out = sdxl.outputs()
    assert set(out) == {"unet", "text_encoder", "text_encoder_2"}
    assert_all_differ(out, sdxl.base)
    apply_loras(sdxl.pipe, [use(files.sdxl_ldm)])  # LDM block names, as kohya writes SDXL LoRAs
    assert_close(sdxl.outputs(), out)
    apply_loras(sdxl.pipe, [])
    assert_equal(sdxl.outputs(), sdxl.base)


def test_file_changed_on_disk_is_read_again(sd15: Rig, files: Files, tmp_path: Path) -> None:
    path = tmp_path / "changing.safetensors"
    path.write_bytes(files.kohya.read_bytes())
    apply_loras(sd15.pipe, [use(path, name="changing")])
    first = sd15.outputs()
    path.write_bytes(files.kohya_b.read_bytes())  # same size, different weights and mtime
    apply_loras(sd15.pipe, [use(path, name="changing")])
    second = sd15.outputs()
    apply_loras(sd15.pipe, [use(files.kohya_b)])
    assert_equal(second, sd15.outputs())
    assert_all_differ(second, first)


def test_weights_only_pickle_lora_works(sd15: Rig, files: Files, tmp_path: Path) -> None:
    path = tmp_path / "pickled.pt"
    torch.save(load_file(str(files.kohya)), path)
    apply_loras(sd15.pipe, [use(files.kohya)])
    reference = sd15.outputs()
    apply_loras(sd15.pipe, [use(path)])
    assert_equal(sd15.outputs(), reference)


def _truncated(src: Path, out: Path) -> None:
    out.write_bytes(src.read_bytes()[: src.stat().st_size // 2])


def _not_a_lora(src: Path, out: Path) -> None:
    save_file({"foo.weight": torch.randn(4, 4), "bar.bias": torch.randn(4)}, str(out))


def _loha(src: Path, out: Path) -> None:
    tensors = {k.replace("lora_down.weight", "hada_w1_a").replace("lora_up.weight", "hada_w1_b"): v
               for k, v in load_file(str(src)).items()}
    save_file(tensors, str(out))


def _shapes_differ(src: Path, out: Path) -> None:
    tensors = load_file(str(src))
    key = next(k for k in tensors if k.endswith("attn2_to_k.lora_down.weight"))
    tensors[key] = torch.randn(tensors[key].shape[0], 48)  # a cross-attention width SD1 does not have
    save_file(tensors, str(out))


@pytest.mark.parametrize("make, reason", [
    (_truncated, "truncated"),
    (_not_a_lora, "no LoRA weights"),
    (_loha, "LoHa"),
    (_shapes_differ, "does not fit the loaded model"),
    ("sdxl", "second \\(SDXL\\) text encoder"),
], ids=["truncated", "not-a-lora", "loha", "shape-mismatch", "sdxl-on-sd1"])
def test_unusable_files_are_refused_and_change_nothing(sd15: Rig, files: Files, tmp_path: Path, make,
                                                       reason: str) -> None:
    if make == "sdxl":
        bad = files.sdxl
    else:
        bad = tmp_path / "bad.safetensors"
        make(files.kohya, bad)
    with pytest.raises(AddonLoadError, match=reason) as err:
        apply_loras(sd15.pipe, [use(bad)])
    assert err.value.kind == "LoRA" and err.value.path == str(bad)
    assert adapter_layers(sd15.pipe) == []
    assert_equal(sd15.outputs(), sd15.base)
    # With a LoRA active, a failing call leaves that LoRA active at its weight.
    apply_loras(sd15.pipe, [use(files.kohya, 0.5)])
    before = sd15.outputs()
    with pytest.raises(AddonLoadError):
        apply_loras(sd15.pipe, [use(files.kohya, 1.0), use(bad)])
    assert_equal(sd15.outputs(), before)


def test_a_failure_while_attaching_rolls_back(sd15: Rig, files: Files, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure inside diffusers")

    apply_loras(sd15.pipe, [use(files.kohya, 0.5)])
    before, adapters = sd15.outputs(), sd15.pipe.get_list_adapters()
    monkeypatch.setattr(sd15.pipe, "load_lora_into_text_encoder", broken)  # the UNet part attaches first
    with pytest.raises(AddonLoadError, match="could not be attached: simulated"):
        apply_loras(sd15.pipe, [use(files.kohya), use(files.kohya_b)])
    assert sd15.pipe.get_list_adapters() == adapters
    assert_equal(sd15.outputs(), before)
    apply_loras(sd15.pipe, [])
    with pytest.raises(AddonLoadError):
        apply_loras(sd15.pipe, [use(files.kohya_b)])
    assert adapter_layers(sd15.pipe) == []
    assert_equal(sd15.outputs(), sd15.base)


def test_adapters_take_the_models_dtype(tiny_models, files: Files, tmp_path: Path) -> None:
    model = load_model(tiny_models.sd15_file, CPU, tmp_path / "configs")
    pipe = model.pipeline.to(dtype=torch.bfloat16)
    apply_loras(pipe, [use(files.kohya)])
    dtypes = {p.dtype for part in (pipe.unet, pipe.text_encoder) for n, p in part.named_parameters() if "lora_" in n}
    assert dtypes == {torch.bfloat16}
    apply_loras(pipe, [])
    assert adapter_layers(pipe) == []


def test_read_lora_metadata(files: Files, tmp_path: Path) -> None:
    meta = read_lora_metadata(files.kohya)
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "sd_v1"
    assert read_lora_metadata(files.sdxl)["ss_base_model_version"] == "sdxl_base_v1-0"
    pickled = tmp_path / "x.pt"
    torch.save({"a": torch.zeros(1)}, pickled)
    assert read_lora_metadata(pickled) == {}
    broken = tmp_path / "broken.safetensors"
    _truncated(files.kohya, broken)
    with pytest.raises(AddonLoadError, match="truncated"):
        read_lora_metadata(broken)


def test_tiny_loras_are_deterministic(tiny_models, files: Files, tmp_path: Path) -> None:
    again = write_tiny_lora(tiny_models.sd15_file, tmp_path / "again.safetensors", seed=0)
    assert again.read_bytes() == files.kohya.read_bytes()
    assert files.kohya_b.read_bytes() != files.kohya.read_bytes()
