"""T2I-Adapter and IP-Adapter units of the ControlNet extension on the tiny UNets.

The adapter functions are called the way the extension's JOB_START and MODEL_CALL handlers call
them, with hand-built contexts, and the UNet is called as the denoiser calls it with what they
added; the end-to-end tests at the bottom go through ``generate`` with ``alwayson_scripts``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from modules.devtools.tiny_adapters import (
    IpVariant,
    build_tiny_t2i_adapter,
    write_tiny_clip_vision,
    write_tiny_ip_adapter,
    write_tiny_t2i_adapter,
)
from modules.devtools.tiny_model import TinyArch, build_tiny_pipeline
from modules.extension_api import JobInfo, JobStart, ModelCall, ModelCallChanges, ModelPatches, ModelView
from modules.params import GenerationRequest

EXTENSION_DIR = Path(__file__).resolve().parents[2] / "extensions" / "controlnet"
SIZE = 64


@pytest.fixture(scope="module")
def cn(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The extension's adapter modules, imported by bare name as the extension folder allows."""
    sys.path.insert(0, str(EXTENSION_DIR))
    try:
        import cn_adapters
        import cn_adapters_ip

        yield type("Adapters", (), {"t2i": cn_adapters, "ip": cn_adapters_ip})
    finally:
        sys.path.remove(str(EXTENSION_DIR))


@pytest.fixture(scope="module")
def unets() -> dict[str, Any]:
    return {arch: build_tiny_pipeline(TinyArch(arch)).unet.eval() for arch in ("sd15", "sdxl")}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, unets: dict[str, Any]) -> Path:
    """A models folder as users lay it out: adapters in ControlNet/, the image encoder in clip_vision/."""
    root = tmp_path_factory.mktemp("models")
    cn_dir = root / "ControlNet"
    write_tiny_t2i_adapter(unets["sd15"], cn_dir / "t2iadapter_tiny_sd14v1.pth", seed=3)
    write_tiny_t2i_adapter(unets["sd15"], cn_dir / "t2i-adapter-tiny-sd15")
    write_tiny_t2i_adapter(unets["sdxl"], cn_dir / "t2i-adapter-tiny-sdxl.safetensors")
    write_tiny_ip_adapter(unets["sd15"], cn_dir / "ip-adapter_tiny_sd15.safetensors", seed=4)
    write_tiny_ip_adapter(unets["sd15"], cn_dir / "ip-adapter-plus_tiny_sd15.bin", IpVariant.PLUS, seed=5)
    write_tiny_ip_adapter(unets["sdxl"], cn_dir / "ip-adapter-plus_tiny_sdxl.safetensors", IpVariant.PLUS)
    write_tiny_clip_vision(root / "clip_vision" / "clip_tiny.safetensors", seed=6)
    return root


@dataclass(frozen=True)
class FakeHost:
    models: Path

    def model_dirs(self, kind: str) -> tuple[Path, ...]:
        return (self.models / kind,)


def job() -> JobInfo:
    return JobInfo(id="job-1", user=None, request=GenerationRequest(width=SIZE, height=SIZE))


def job_start(unet: Any, family: str, models: Path) -> JobStart:
    model = ModelView(family=family, architecture=family, unet=unet, pipeline=None, device=torch.device("cpu"),
                      dtype=torch.float32)
    return JobStart(job=job(), params={}, host=FakeHost(models), model=model, patches=ModelPatches(), state={})


def model_call(unet: Any, step: int = 0, total: int = 4, cond_rows: tuple[bool, ...] = (True, False)) -> ModelCall:
    """One call with a prompt row and a negative row, fixed inputs (seeded)."""
    rows = len(cond_rows)
    gen = torch.Generator().manual_seed(11)
    width = int(unet.config.cross_attention_dim)
    added = None
    if unet.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(rows, 32, generator=gen),
                 "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]] * rows, dtype=torch.float32)}
    return ModelCall(job=job(), params={}, state={}, step=step, total=total, pass_index=0, width=SIZE, height=SIZE,
                     x=torch.randn(rows, 4, SIZE // 8, SIZE // 8, generator=gen), sigma=torch.ones(rows),
                     timestep=torch.full((rows,), 500.0), tokens=torch.randn(rows, 77, width, generator=gen),
                     added=added, cond_rows=torch.tensor(cond_rows), batch=1, unet=unet, changes=ModelCallChanges())


@torch.no_grad()
def run_unet(call: ModelCall) -> torch.Tensor:
    """The UNet call the denoiser makes with what MODEL_CALL handlers added."""
    changes = call.changes
    kwargs: dict[str, Any] = {}
    if changes.intrablock is not None:
        kwargs["down_intrablock_additional_residuals"] = list(changes.intrablock)
    conditions = {**(call.added or {}), **changes.conditions}
    return call.unet(call.x, call.timestep, encoder_hidden_states=call.tokens,
                     added_cond_kwargs=conditions or None, **kwargs).sample


def hint() -> torch.Tensor:
    image = Image.new("RGB", (SIZE, SIZE))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    return torch.from_numpy(__import__("numpy").asarray(image, dtype="float32") / 255).permute(2, 0, 1)[None]


# --- detection and loading -------------------------------------------------------------------

def test_adapter_files_are_told_apart_from_controlnets(cn: Any, models_dir: Path, tiny_models: Any) -> None:
    folder = models_dir / "ControlNet"
    kinds = {p.name: cn.t2i.detect_kind(p) for p in sorted(folder.iterdir())}
    assert kinds == {"ip-adapter-plus_tiny_sd15.bin": "ip_adapter", "ip-adapter-plus_tiny_sdxl.safetensors": "ip_adapter",
                     "ip-adapter_tiny_sd15.safetensors": "ip_adapter", "t2i-adapter-tiny-sd15": "t2i_adapter",
                     "t2i-adapter-tiny-sdxl.safetensors": "t2i_adapter", "t2iadapter_tiny_sd14v1.pth": "t2i_adapter"}
    assert cn.t2i.detect_kind(tiny_models.sd15_file) is None  # not an adapter: a checkpoint (or a ControlNet)
    assert cn.t2i.detect_kind(tiny_models.sd15_dir) is None
    families = {p.name: cn.t2i.adapter_family(p) for p in folder.iterdir() if p.name.startswith("t2i")}
    assert families == {"t2iadapter_tiny_sd14v1.pth": "sd15", "t2i-adapter-tiny-sd15": "sd15",
                        "t2i-adapter-tiny-sdxl.safetensors": "sdxl"}


def test_tencentarc_layout_loads_as_the_same_adapter(cn: Any, models_dir: Path, unets: dict[str, Any]) -> None:
    built = build_tiny_t2i_adapter(unets["sd15"], seed=3)
    loaded = cn.t2i.load_t2i_adapter(models_dir / "ControlNet" / "t2iadapter_tiny_sd14v1.pth")
    with torch.no_grad():
        for want, got in zip(built(hint()), loaded(hint()), strict=True):
            assert torch.equal(want, got)


# --- T2I-Adapter ---------------------------------------------------------------------------------

def t2i_output(cn: Any, unet: Any, family: str, models: Path, name: str, weight: float, step: int = 0,
               start: float = 0.0, end: float = 1.0) -> torch.Tensor:
    run = cn.t2i.start_t2i(job_start(unet, family, models), models / "ControlNet" / name, weight, start, end)
    call = model_call(unet, step=step)
    cn.t2i.t2i_model_call(call, run, hint())
    return run_unet(call)


@pytest.mark.parametrize(("arch", "name"), [("sd15", "t2iadapter_tiny_sd14v1.pth"), ("sd15", "t2i-adapter-tiny-sd15"),
                                            ("sdxl", "t2i-adapter-tiny-sdxl.safetensors")])
def test_t2i_adapter_changes_the_prediction_and_weight_zero_does_not(cn: Any, models_dir: Path, unets: dict[str, Any],
                                                                    arch: str, name: str) -> None:
    unet = unets[arch]
    plain = run_unet(model_call(unet))
    assert not torch.allclose(t2i_output(cn, unet, arch, models_dir, name, 1.0), plain, atol=1e-4)
    assert torch.equal(t2i_output(cn, unet, arch, models_dir, name, 0.0), plain)


def test_t2i_adapter_acts_only_inside_its_guidance_window(cn: Any, models_dir: Path, unets: dict[str, Any]) -> None:
    unet, name = unets["sd15"], "t2i-adapter-tiny-sd15"
    plain = run_unet(model_call(unet, step=3))
    assert torch.equal(t2i_output(cn, unet, "sd15", models_dir, name, 1.0, step=3, end=0.5), plain)
    assert torch.equal(t2i_output(cn, unet, "sd15", models_dir, name, 1.0, step=0, end=0.0), run_unet(model_call(unet)))
    assert not torch.allclose(t2i_output(cn, unet, "sd15", models_dir, name, 1.0, step=3, start=0.5), plain, atol=1e-4)


def test_t2i_adapter_for_another_family_is_refused(cn: Any, models_dir: Path, unets: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"SDXL.*SD 1\.x"):
        cn.t2i.start_t2i(job_start(unets["sd15"], "sd15", models_dir),
                         models_dir / "ControlNet" / "t2i-adapter-tiny-sdxl.safetensors", 1.0)


# --- IP-Adapter ----------------------------------------------------------------------------------

def face() -> Image.Image:
    image = Image.new("RGB", (48, 40), (30, 90, 200))
    image.paste((250, 200, 40), (10, 8, 30, 30))
    return image


def ip_unit(cn: Any, models: Path, name: str, weight: float = 1.0, **kwargs: Any) -> Any:
    return cn.ip.IpUnit(path=models / "ControlNet" / name, image=face(), weight=weight, **kwargs)


@pytest.mark.parametrize(("arch", "name"), [("sd15", "ip-adapter_tiny_sd15.safetensors"),
                                            ("sd15", "ip-adapter-plus_tiny_sd15.bin"),
                                            ("sdxl", "ip-adapter-plus_tiny_sdxl.safetensors")])
def test_ip_adapter_changes_the_prediction_and_its_undo_restores_the_unet(cn: Any, models_dir: Path,
                                                                          unets: dict[str, Any], arch: str,
                                                                          name: str) -> None:
    unet = unets[arch]
    before = run_unet(model_call(unet))
    processors = dict(unet.attn_processors)
    start = job_start(unet, arch, models_dir)
    run = cn.ip.start_ip(start, [ip_unit(cn, models_dir, name)])
    call = model_call(unet)
    cn.ip.ip_model_call(call, run)
    embeds = call.changes.conditions["image_embeds"]
    assert len(embeds) == 1 and embeds[0].shape[:2] == (2, 1)
    assert not torch.equal(embeds[0][0], embeds[0][1])  # the negative row gets the unconditional embedding
    assert not torch.allclose(run_unet(call), before, atol=1e-4)
    assert start.patches.undo_all() == []
    assert unet.encoder_hid_proj is None and unet.config.encoder_hid_dim_type is None
    assert all(unet.attn_processors[k] is v for k, v in processors.items())
    assert torch.equal(run_unet(model_call(unet)), before)  # the next job without IP-Adapter: as before


def test_ip_adapter_scale_follows_weight_and_guidance(cn: Any, models_dir: Path, unets: dict[str, Any]) -> None:
    unet = unets["sd15"]
    start = job_start(unet, "sd15", models_dir)
    run = cn.ip.start_ip(start, [ip_unit(cn, models_dir, "ip-adapter_tiny_sd15.safetensors", 0.5, guidance_end=0.5)])
    try:
        outputs = {}
        for step in (0, 3):
            call = model_call(unet, step=step)
            cn.ip.ip_model_call(call, run)
            assert {tuple(p.scale) for p in run.processors} == {(0.5,) if step == 0 else (0.0,)}
            outputs[step] = run_unet(call)
    finally:
        start.patches.undo_all()
    assert torch.equal(outputs[3], run_unet(model_call(unet, step=3)))  # scale 0: exactly no effect
    assert cn.ip.start_ip(job_start(unet, "sd15", models_dir),
                          [ip_unit(cn, models_dir, "ip-adapter_tiny_sd15.safetensors", 0.0)]) is None


def test_two_ip_adapters_combine(cn: Any, models_dir: Path, unets: dict[str, Any]) -> None:
    unet = unets["sd15"]
    start = job_start(unet, "sd15", models_dir)
    units = [ip_unit(cn, models_dir, "ip-adapter_tiny_sd15.safetensors"),
             ip_unit(cn, models_dir, "ip-adapter-plus_tiny_sd15.bin", 0.7)]
    run = cn.ip.start_ip(start, units)
    try:
        call = model_call(unet)
        cn.ip.ip_model_call(call, run)
        assert len(call.changes.conditions["image_embeds"]) == 2
        assert {tuple(p.scale) for p in run.processors} == {(1.0, 0.7)}
        both = run_unet(call)
    finally:
        start.patches.undo_all()
    single = job_start(unet, "sd15", models_dir)
    run = cn.ip.start_ip(single, units[:1])
    try:
        call = model_call(unet)
        cn.ip.ip_model_call(call, run)
        assert not torch.allclose(run_unet(call), both, atol=1e-4)
    finally:
        single.patches.undo_all()


def test_ip_adapter_refusals_name_the_problem(cn: Any, models_dir: Path, unets: dict[str, Any],
                                              tmp_path: Path) -> None:
    unet = unets["sd15"]
    processors = dict(unet.attn_processors)
    with pytest.raises(ValueError, match="cross-attention width"):  # a (tiny) SDXL adapter on an SD1 model
        cn.ip.start_ip(job_start(unet, "sd15", models_dir),
                       [ip_unit(cn, models_dir, "ip-adapter-plus_tiny_sdxl.safetensors")])
    (tmp_path / "ControlNet").symlink_to(models_dir / "ControlNet")
    with pytest.raises(ValueError, match="CLIP image encoder.*clip_vision"):  # no encoder installed
        cn.ip.start_ip(job_start(unet, "sd15", tmp_path), [ip_unit(cn, tmp_path, "ip-adapter_tiny_sd15.safetensors")])
    assert all(unet.attn_processors[k] is v for k, v in processors.items())


# --- end to end: units in a generation request ------------------------------------------------

BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=3, width=SIZE, height=SIZE,
                         sampler="Euler", checkpoint="tiny-sd15.safetensors", seed=5, save_images=False)


@pytest.fixture(scope="module")
def services(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory, unets: dict[str, Any]) -> Iterator[Any]:
    from tests.conftest import make_services

    data = tmp_path_factory.mktemp("adapters-data")
    models = data / "models"
    write_tiny_t2i_adapter(unets["sd15"], models / "ControlNet" / "t2iadapter_tiny_sd14v1.pth", seed=3)
    write_tiny_t2i_adapter(unets["sdxl"], models / "ControlNet" / "t2i-adapter-tiny-sdxl.safetensors")
    write_tiny_ip_adapter(unets["sd15"], models / "ControlNet" / "ip-adapter_tiny_sd15.safetensors", seed=4)
    write_tiny_clip_vision(models / "clip_vision" / "clip_tiny.safetensors", seed=6)
    svc = make_services(data, tiny_models.folder)
    yield svc
    svc.close()


def b64_png(image: Image.Image) -> str:
    import base64
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def generate(services: Any, *units: dict[str, Any]) -> Any:
    from dataclasses import replace

    params = {f"unit_{i}": {"enabled": True, "module": "none", **u} for i, u in enumerate(units)}
    return services.generation.generate(replace(BASE, extension_params={"controlnet": params} if units else {}))


def pixels(result: Any) -> Any:
    import io

    import numpy as np

    with Image.open(io.BytesIO(result.images[0].png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_t2i_adapter_unit_changes_the_image_and_weight_zero_does_not(services: Any) -> None:
    import numpy as np

    control = b64_png(Image.fromarray((hint()[0].permute(1, 2, 0).numpy() * 255).astype("uint8")))
    plain = pixels(generate(services))
    adapter = {"model": "t2iadapter_tiny_sd14v1", "image": control}
    assert np.abs(pixels(generate(services, adapter)) - plain).mean() > 1
    assert np.array_equal(pixels(generate(services, {**adapter, "weight": 0})), plain)
    assert np.array_equal(pixels(generate(services, {**adapter, "guidance_end": 0})), plain)


def test_ip_adapter_unit_changes_the_image_and_the_next_job_is_as_before(services: Any) -> None:
    import numpy as np

    before = pixels(generate(services))
    result = generate(services, {"model": "ip-adapter_tiny_sd15", "image": b64_png(face())})
    assert "ip-adapter_tiny_sd15 [" in result.images[0].infotext
    assert np.abs(pixels(result) - before).mean() > 1
    assert np.array_equal(pixels(generate(services)), before)  # the UNet was given back as it was


def test_adapter_for_another_family_is_refused_naming_both(services: Any) -> None:
    from modules.errors import ValidationError

    with pytest.raises(ValidationError) as excinfo:
        generate(services, {"model": "t2i-adapter-tiny-sdxl", "image": b64_png(face())})
    text = " ".join(f"{e.field}: {e.message}" for e in excinfo.value.errors)
    assert "unit_0" in text and "SDXL" in text and "SD 1.x" in text
