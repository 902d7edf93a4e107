"""ControlNet units on the tiny models through the generation service: weight, guidance window,
several units, control modes, infotext, refusals, img2img, inpainting and hires fix."""

from __future__ import annotations

import base64
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
from modules.params import GenerationRequest, HiresFix
from tests.conftest import TinyModels, make_services

EXTENSION = Path(__file__).resolve().parents[2] / "extensions" / "controlnet"
BASE = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=3, width=64, height=64,
                         sampler="Euler", checkpoint="tiny-sd15.safetensors", seed=5, save_images=False)


@pytest.fixture(scope="module")
def cn() -> Iterator[Any]:
    """The extension's helper modules, importable by their bare names as when it is loaded."""
    sys.path.insert(0, str(EXTENSION))
    import cn_hint
    import cn_infotext
    import cn_models
    import cn_units
    yield type("Modules", (), {"infotext": cn_infotext, "units": cn_units, "hint": cn_hint, "models": cn_models})
    sys.path.remove(str(EXTENSION))


@pytest.fixture(scope="module")
def services(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from modules.devtools.tiny_controlnet import TinyArch, build_for_arch, write_tiny_controlnet

    data = tmp_path_factory.mktemp("cn-data")
    folder = data / "models" / "ControlNet"
    write_tiny_controlnet(build_for_arch(TinyArch.SD15, seed=0), folder / "tiny-cn-sd15.safetensors")
    write_tiny_controlnet(build_for_arch(TinyArch.SD15, seed=1), folder / "tiny-cn-sd15-b")
    write_tiny_controlnet(build_for_arch(TinyArch.SDXL, seed=0), folder / "tiny-cn-sdxl.safetensors")
    svc = make_services(data, tiny_models.folder)
    yield svc
    svc.close()


def control_image(seed: int) -> str:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def unit(**values: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "none", "model": "tiny-cn-sd15", "image": control_image(0), **values}


def run(services: Any, *units: dict[str, Any] | None, request: GenerationRequest = BASE) -> Any:
    params = {f"unit_{i}": u for i, u in enumerate(units)}
    return services.generation.generate(replace(request, extension_params={"controlnet": params} if units else {}))


def pixels(result: Any, index: int = 0) -> np.ndarray:
    with Image.open(io.BytesIO(result.images[index].png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def refusal(excinfo: pytest.ExceptionInfo[ValidationError]) -> str:
    return " ".join(f"{e.field}: {e.message}" for e in excinfo.value.errors)


def test_weight_zero_guidance_end_zero_and_disabled_units_leave_the_pixels_alone(services: Any) -> None:
    plain = pixels(run(services))
    for quiet in (unit(weight=0), unit(guidance_end=0), unit(enabled=False)):
        assert np.array_equal(pixels(run(services, quiet)), plain), quiet
    assert np.abs(pixels(run(services, unit())) - plain).mean() > 1


def test_two_units_combine(services: Any) -> None:
    first = unit()
    second = unit(model="tiny-cn-sd15-b", image=control_image(1))
    one, two, both = (pixels(run(services, *units)) for units in ([first], [second], [first, second]))
    assert not np.array_equal(both, one) and not np.array_equal(both, two)


def test_the_control_modes_differ(services: Any) -> None:
    images = [pixels(run(services, unit(control_mode=mode))) for mode in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not np.array_equal(images[a], images[b]), (a, b)
    named = pixels(run(services, unit(control_mode="ControlNet is more important")))
    assert np.array_equal(named, images[2])


def test_infotext_has_the_unit_and_reads_back(services: Any, cn: Any) -> None:
    sent = unit(weight=0.5, guidance_end=0.8, resize_mode="Just Resize", processor_res=256, control_mode=1)
    result = run(services, unit(enabled=False), sent)
    fields = parse_infotext(result.images[0].infotext).params
    text = fields["ControlNet 0"]  # numbered among the enabled units, as the A1111 extension does
    assert text.startswith("Module: none, Model: tiny-cn-sd15 [")
    assert "Weight: 0.5, Resize Mode: Just Resize, Processor Res: 256" in text
    assert "Guidance Start: 0.0, Guidance End: 0.8, Pixel Perfect: False, Control Mode: My prompt is more important" \
        in text
    read = cn.infotext.read_fields(fields)
    assert set(read) == {"unit_0"}
    back = read["unit_0"]
    expected = cn.units.parse_unit(sent)
    for key in ("module", "weight", "resize_mode", "processor_res", "guidance_start", "guidance_end",
                "pixel_perfect", "control_mode", "enabled"):
        assert back[key] == expected[key], key
    assert back["model"].startswith("tiny-cn-sd15 [") and back["image"] is None
    # the restored unit generates the same image once its image is given again
    assert np.array_equal(pixels(run(services, {**back, "image": sent["image"]})), pixels(result))


def test_a_controlnet_for_another_family_is_refused_naming_both(services: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        run(services, unit(model="tiny-cn-sdxl"))
    assert "SDXL" in refusal(excinfo) and "SD 1.x" in refusal(excinfo)


def test_sdxl_controlnet_on_the_sdxl_checkpoint(services: Any) -> None:
    request = replace(BASE, checkpoint="tiny-sdxl.safetensors")
    plain = pixels(run(services, request=request))
    assert not np.array_equal(pixels(run(services, unit(model="tiny-cn-sdxl"), request=request)), plain)


def test_unknown_model_and_module_list_the_available_ones(services: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        run(services, unit(model="nope"))
    assert "nope" in refusal(excinfo) and "tiny-cn-sd15 [" in refusal(excinfo) and "tiny-cn-sd15-b [" in refusal(excinfo)
    with pytest.raises(ValidationError) as excinfo:
        run(services, unit(module="no-such-module"))
    assert "no-such-module" in refusal(excinfo) and "none" in refusal(excinfo)


def test_bad_units_are_refused_with_the_key(services: Any) -> None:
    cases = {"weight": unit(weight=3), "resize_mode": unit(resize_mode="Stretch"), "wat": unit(wat=1),
             "image": unit(image="not an image"), "guidance_start": unit(guidance_start=0.9, guidance_end=0.1)}
    for key, bad in cases.items():
        with pytest.raises(ValidationError) as excinfo:
            run(services, bad)
        assert key in refusal(excinfo), refusal(excinfo)
    with pytest.raises(ValidationError) as excinfo:
        run(services, unit(image=None))  # txt2img has no image of its own to use
    assert "image" in refusal(excinfo)


def test_img2img_inpaint_and_hires_fix_take_a_unit(services: Any) -> None:
    init = base64.b64decode(control_image(7))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    img2img = replace(BASE, init_image=init, denoising_strength=0.9)
    inpaint = replace(img2img, mask=buffer.getvalue())
    hires = replace(BASE, hires=HiresFix(scale=2.0, upscaler="Latent", steps=2, denoising_strength=0.7))
    for request, units in ((img2img, unit(image=None)), (inpaint, unit()), (hires, unit())):
        plain, controlled = pixels(run(services, request=request)), pixels(run(services, units, request=request))
        assert plain.shape == controlled.shape and not np.array_equal(plain, controlled)
    # hires fix: a unit for the low-res pass only differs from one in both passes
    both = pixels(run(services, unit(), request=hires))
    low = pixels(run(services, unit(hr_option="Low res only"), request=hires))
    assert not np.array_equal(both, low)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_real_sized_single_files_read_as_the_published_configs(cn: Any, family: str) -> None:
    """lllyasviel-layout keys of a real-sized ControlNet (built on the meta device: no memory) give
    back the published diffusers config (lllyasviel/sd-controlnet-canny, diffusers/controlnet-canny-sdxl-1.0)."""
    import json

    import torch
    from diffusers import ControlNetModel

    from modules.devtools.tiny_controlnet import controlnet_to_ldm

    config = json.loads((EXTENSION / "configs" / f"{family}.json").read_text())
    with torch.device("meta"):
        net = ControlNetModel.from_config(config)
    inferred, found = cn.models.infer_config(cn.models._to_diffusers(controlnet_to_ldm(net.state_dict(), net.config)))
    assert found == {"sd15": "sd1", "sdxl": "sdxl"}[family]
    for key, value in inferred.items():
        want = config[key]
        if key == "transformer_layers_per_block" and isinstance(want, int):
            want = [want] * len(config["block_out_channels"])
        assert (list(value) if isinstance(value, (list, tuple)) else value) == want, key


def test_units_take_a1111_forms(cn: Any) -> None:
    parse = cn.units.parse_unit
    unit = parse({"input_image": "aGk=", "lowvram": True, "resize_mode": "Inner Fit (Scale to Fit)",
                  "control_mode": 2, "hr_option": "low res only", "save_detected_map": False})
    assert unit["image"] == "aGk=" and unit["low_vram"] is True and unit["resize_mode"] == "Crop and Resize"
    assert unit["control_mode"] == "ControlNet is more important" and unit["hr_option"] == "Low res only"
    assert parse({"image": {"image": "aGk=", "mask": "bWFzaw=="}})["mask"] == "bWFzaw=="
    assert parse({"guessmode": True})["control_mode"] == "ControlNet is more important"
    assert parse({"resize_mode": 2})["resize_mode"] == "Resize and Fill"
    for bad, key in (({"weight": -0.1}, "weight"), ({"control_mode": 3}, "control_mode"),
                     ({"processor_res": 10}, "processor_res"), ({"ipadapter_input": ["x"]}, "ipadapter_input"),
                     ({"image": "x", "input_image": "y"}, "input_image")):
        with pytest.raises(ValueError, match=key):
            parse(bad)


def test_resize_modes_and_pixel_perfect_follow_a1111(cn: Any) -> None:
    hint, units = cn.hint, cn.units
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 50, 100))  # blue left quarter
    crop = hint.fit(wide, 64, 64, units.ResizeMode.CROP_AND_RESIZE)
    fill = hint.fit(wide, 64, 64, units.ResizeMode.RESIZE_AND_FILL)
    stretch = hint.fit(wide, 64, 64, units.ResizeMode.JUST_RESIZE)
    assert crop.shape == fill.shape == stretch.shape == (64, 64, 3)
    assert crop[32, 2].tolist() == [255, 0, 0]  # the blue quarter is cropped away
    assert stretch[32, 2].tolist() == [0, 0, 255]
    assert fill[2, 32].tolist() == [255, 0, 0] and fill[32, 2].tolist() == [0, 0, 255]  # border median fills
    assert hint.pixel_perfect_resolution((200, 100), (64, 64), units.ResizeMode.CROP_AND_RESIZE) == 64
    assert hint.pixel_perfect_resolution((200, 100), (64, 64), units.ResizeMode.RESIZE_AND_FILL) == 32


def test_low_vram_gives_the_same_image(services: Any) -> None:
    assert np.array_equal(pixels(run(services, unit(low_vram=True))), pixels(run(services, unit())))


def test_canny_with_unset_sliders_writes_the_defaults_used(services: Any) -> None:
    result = run(services, unit(module="canny", processor_res=-1, threshold_a=-1, threshold_b=-1, pixel_perfect=False))
    text = parse_infotext(result.images[0].infotext).params["ControlNet 0"]
    assert "Module: canny" in text and "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0" in text
    perfect = run(services, unit(module="canny", pixel_perfect=True))  # 64 px image for a 64 px job
    assert "Processor Res: 64," in parse_infotext(perfect.images[0].infotext).params["ControlNet 0"]


def test_a_broken_or_unsafe_model_file_is_refused_naming_it(services: Any, tmp_path: Path) -> None:
    import pickle

    folder = services.paths.models_dir / "ControlNet"
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    (folder / "unsafe.pth").write_bytes(pickle.dumps({"x": print}))  # needs code to load: weights_only refuses it
    try:
        for name in ("unsafe", "broken"):
            with pytest.raises(ValidationError) as excinfo:
                run(services, unit(model=name))
            assert f"cannot load {name} [" in refusal(excinfo)
    finally:
        (folder / "broken.safetensors").unlink()
        (folder / "unsafe.pth").unlink()


def test_an_inpaint_unit_marks_the_pixels_to_repaint_as_minus_one(cn: Any) -> None:
    """The inpaint ControlNet's input (as diffusers' and A1111's inpaint conditioning): the image in
    0..1, and -1 where the mask says repaint; other preprocessors never see the mask."""
    import cn_run

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # the left half is repainted
    image = Image.new("RGB", (64, 64), (255, 255, 255))
    units = {"image": "x", "mask": "y", "resize_mode": cn.units.ResizeMode.JUST_RESIZE.value}
    decoded = {"x": image, "y": mask}
    original = cn_run.decode_image
    cn_run.decode_image = lambda text, _key: decoded[text]
    try:
        got, got_mask, _mode = cn_run._control_image({**units, "module": "inpaint_only"}, BASE, "unit_0")
        plain, no_mask, _mode = cn_run._control_image({**units, "module": "canny"}, BASE, "unit_0")
    finally:
        cn_run.decode_image = original
    assert no_mask is None and got_mask is not None
    prepared = cn_run.PreparedUnit(0, {}, None, None, got, cn.units.ResizeMode.JUST_RESIZE, False, -1, mask=got_mask)
    hint = prepared.hint(32, 32, "cpu", None)
    assert hint.shape == (1, 3, 32, 32)
    assert (hint[..., :16] == -1).all() and (hint[..., 16:] == 1).all()
