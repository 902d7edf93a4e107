"""The Extras service as the tab drives it: saved results, batch from a folder (inside the allowed
folders only), interrupts, the tile settings, and a model upscale run tiled and untiled."""

from __future__ import annotations

import io
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules.devtools.tiny_upscaler import write_tiny_upscaler
from modules.errors import ValidationError
from modules.params import GenerationRequest
from modules.params import ResizeMode as FitResize
from modules.services.extras_request import ExtrasImage, ExtrasRequest, ResizeMode, output_size
from modules.services.image_prep import fit_image
from modules.services.image_upscale import enlarging_resize
from modules.ui import png_info


def _png(size: tuple[int, int], seed: int = 0, parameters: str | None = None) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    info = PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_results_are_saved_numbered_with_safe_names_and_their_texts(services) -> None:
    request = ExtrasRequest(images=(ExtrasImage(_png((16, 16), parameters="a fox\nSteps: 2, Seed: 9")),
                                    ExtrasImage(_png((16, 8), seed=1), name="../../evil name?.png")),
                            upscaler_1="Nearest", upscaling_resize=2, save=True)
    result = services.extras.run(request)
    folder = services.paths.outputs_dir / "extras-images"
    assert [p.parent for p in result.paths] == [folder, folder]  # nothing escapes the folder
    assert [p.name[5:] for p in result.paths] == [".png", "-evil name_.png"]
    with Image.open(result.paths[0]) as image:
        assert image.size == (32, 32)
        assert image.info["parameters"] == "a fox\nSteps: 2, Seed: 9"
        assert image.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Nearest"
    text, table = png_info.read(str(result.paths[0]))  # PNG Info shows both texts
    assert text.startswith("a fox") and "Postprocessing: Postprocess upscale by: 2" in table
    again = services.extras.run(request)
    assert int(again.paths[0].name[:5]) == int(result.paths[1].name[:5]) + 1  # running numbers go on


def test_batch_from_a_folder_reads_only_inside_the_allowed_folders(services, tmp_path: Path) -> None:
    inputs = services.paths.inputs_dir / "holiday"
    inputs.mkdir(parents=True)
    for i in range(3):
        (inputs / f"p{i}.png").write_bytes(_png((8, 8), seed=i))
    (inputs / "notes.txt").write_text("not an image")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "private.png").write_bytes(_png((8, 8)))
    os.symlink(outside / "private.png", inputs / "link.png")  # a link out of the folder is skipped
    request = ExtrasRequest(images=(), upscaler_1="Lanczos", upscaling_resize=2, save=True)
    result = services.extras.run_folder(request, "holiday")
    assert [o.name for o in result.outputs] == ["p0.png", "p1.png", "p2.png"]
    assert all(Image.open(p).size == (16, 16) for p in result.paths)
    for hostile in (str(outside), "../../..", "holiday/../../../secret", "/etc", ""):
        with pytest.raises(ValidationError, match="input_dir"):
            services.extras.run_folder(request, hostile)


def test_an_interrupt_keeps_the_images_already_done(services) -> None:
    images = tuple(ExtrasImage(_png((64, 64), seed=i)) for i in range(48))
    request = ExtrasRequest(images=images, upscaler_1="Lanczos", upscaling_resize=8)
    job = services.extras.submit(request)
    deadline = time.monotonic() + 30
    while services.queue.snapshot(job).batch_index < 1 and not job.future.done():
        assert time.monotonic() < deadline
        time.sleep(0.005)
    services.queue.interrupt()
    result = services.extras.finish(request, job)
    assert result.interrupted and 1 <= len(result.outputs) < len(images)


def test_output_size_follows_a1111s_rounding() -> None:
    by = ExtrasRequest(images=(), upscaler_1="Lanczos", upscaling_resize=1.5)
    assert output_size(by, 45, 30) == (64, 40)  # 67.5 -> 64, 45 -> 40
    to = ExtrasRequest(images=(), upscaler_1="Lanczos", resize_mode=ResizeMode.SCALE_TO, upscaling_resize_w=100,
                       upscaling_resize_h=50, upscaling_crop=False)
    assert output_size(to, 40, 40) == (96, 96)  # factor max(2.5, 1.25) -> 100 -> 96
    assert output_size(ExtrasRequest(images=()), 40, 40) == (40, 40)  # no upscaler: unchanged


def test_tile_settings_are_a1111_options_and_reach_the_upscaler(services) -> None:
    options = services.server_options
    assert options.snapshot()["ESRGAN_tile"] == 192 and options.snapshot()["ESRGAN_tile_overlap"] == 8
    with pytest.raises(ValidationError, match="ESRGAN_tile"):
        options.apply({"ESRGAN_tile": 9999})
    options.apply({"ESRGAN_tile": 32, "ESRGAN_tile_overlap": 4})
    try:
        assert services.upscalers.tiles().tile == 32 and services.upscalers.tiles().overlap == 4
    finally:
        options.apply({"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8})


def test_a_4x_model_upscale_tiled_and_untiled_agree_away_from_seams(services) -> None:
    write_tiny_upscaler(services.paths.models_dir / "ESRGAN" / "x4.pth", 4, seed=2)
    source = _png((64, 48), seed=7)
    request = ExtrasRequest(images=(ExtrasImage(source),), upscaler_1="x4", upscaling_resize=4)
    services.server_options.apply({"ESRGAN_tile": 0})
    try:
        whole = np.asarray(services.extras.run(request).images()[0].convert("RGB")).astype(int)
    finally:
        services.server_options.apply({"ESRGAN_tile": 192})
    services.server_options.apply({"ESRGAN_tile": 32, "ESRGAN_tile_overlap": 8})
    try:
        tiled = np.asarray(services.extras.run(request).images()[0].convert("RGB")).astype(int)
    finally:
        services.server_options.apply({"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8})
    assert whole.shape == tiled.shape == (192, 256, 3)
    assert np.abs(whole - tiled).max() <= 1  # 8-bit rounding of the blend


def test_img2img_enlarges_its_init_image_with_the_chosen_upscaler(services) -> None:
    small = Image.open(io.BytesIO(_png((16, 16), seed=8))).convert("RGB")
    nearest = enlarging_resize("Nearest", services.upscalers)
    # A1111: Nearest by the covering factor (2), already the size asked: Lanczos has nothing to do.
    assert np.array_equal(np.asarray(fit_image(small, 32, 32, FitResize.JUST_RESIZE, nearest)),
                          np.asarray(small.resize((32, 32), Image.Resampling.NEAREST)))
    base = GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=3, init_image=_png((32, 32), seed=9),
                             denoising_strength=0.3, sampler="Euler")
    plain = services.generation.generate(replace(base, img2img_upscaler="None"))
    upscaled = services.generation.generate(replace(base, img2img_upscaler="Nearest"))
    assert plain.images[0].png != upscaled.images[0].png
    with pytest.raises(ValidationError, match="upscaler_for_img2img.*8x-nothing"):
        services.generation.generate(replace(base, img2img_upscaler="8x-nothing"))
