"""The Extras tab as a person uses it: upload an image, upscale it, see it, find it saved; send a
txt2img result there and on to img2img."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules.devtools.tiny_upscaler import write_tiny_upscaler

pytestmark = pytest.mark.browser


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input').value === {option!r}")


def saved_extras(server) -> list[Path]:
    folder = server.data_dir / "outputs" / "extras-images"
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def wait_for_new_file(server, before: int) -> Path:
    deadline = time.monotonic() + 60
    while len(files := saved_extras(server)) <= before:
        assert time.monotonic() < deadline, "the Extras result was never saved"
        time.sleep(0.2)
    return files[-1]


def test_upload_upscale_with_a_model_shown_and_saved(page, server, tmp_path: Path) -> None:
    # A model dropped in while the server runs appears after Refresh.
    write_tiny_upscaler(server.data_dir / "models" / "ESRGAN" / "tiny-2x.pth", 2, seed=7)
    source = tmp_path / "photo.png"
    info = PngInfo()
    info.add_text("parameters", "a red kite\nSteps: 3, Sampler: Euler, Seed: 77, Size: 48x32")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(source, pnginfo=info)

    page.get_by_role("tab", name="Extras").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#extras_image").get_by_text("Drop Image Here", exact=False).first.click()
    chooser.value.set_files(str(source))
    page.locator("#extras_image img").first.wait_for()
    page.locator("#extras_refresh_upscalers").click()
    choose(page, "extras_upscaler_1", "tiny-2x")
    before = len(saved_extras(server))
    page.locator("#extras_generate").click()
    saved = wait_for_new_file(server, before)
    page.wait_for_function("() => document.querySelector('#html_info_extras').innerText"
                           ".includes('Postprocess upscaler: tiny-2x')")
    page.locator("#extras_gallery img").first.wait_for()
    with Image.open(saved) as image:
        assert image.size == (96, 64)
        assert image.info["parameters"].startswith("a red kite")  # the source's parameters kept
        assert image.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: tiny-2x"


def fill_number(page, elem_id: str, value: int) -> None:
    """Type ``value`` into a number box that may still be mounting (a tab just opened): typed again
    until the box keeps it."""
    box = page.locator(f"#{elem_id} input[type=number]")
    box.wait_for(state="visible")
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        page.wait_for_timeout(300)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"{elem_id} does not keep {value}")


def test_send_a_txt2img_result_to_extras_then_on_to_img2img(page, server) -> None:
    page.get_by_role("tab", name="txt2img").first.click()
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 3)):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.locator("#txt2img_prompt textarea").fill("a lighthouse at dusk")
    page.locator("#txt2img_seed input").fill("4242")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: 4242')")
    page.locator("#txt2img_send_to_extras").click()
    page.locator("#extras_image img").first.wait_for()
    choose(page, "extras_upscaler_1", "Lanczos")
    page.get_by_role("tab", name="Scale to").click()
    for elem_id, value in (("extras_upscaling_resize_w", 96), ("extras_upscaling_resize_h", 80)):
        fill_number(page, elem_id, value)
    before = len(saved_extras(server))
    page.locator("#extras_generate").click()
    saved = wait_for_new_file(server, before)
    with Image.open(saved) as image:
        assert image.size == (96, 80)  # scaled to cover 96x80, cropped to it
        assert "Seed: 4242" in image.info["parameters"]
        assert "Postprocess crop to: 96x80" in image.info["postprocessing"]
    page.locator("#extras_gallery img").first.wait_for()
    page.locator("#extras_send_to_img2img").click()
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value === 'a lighthouse at dusk'")
    page.locator("#img2img_init_image img, #img2img_image img").first.wait_for()


def test_batch_from_files_saves_each_under_its_own_name(page, server, tmp_path: Path) -> None:
    files = []
    for i, size in enumerate(((24, 16), (16, 16))):
        path = tmp_path / f"shot{i}.png"
        Image.new("RGB", size, ("red", "blue")[i]).save(path)
        files.append(str(path))
    page.get_by_role("tab", name="Extras").click()
    page.get_by_role("tab", name="Batch Process").click()
    page.locator("#extras_image_batch input[type=file]").set_input_files(files)
    page.wait_for_function("() => document.querySelectorAll('#extras_image_batch .file-preview tr, "
                           "#extras_image_batch tbody tr').length >= 2")
    choose(page, "extras_upscaler_1", "Nearest")
    before = len(saved_extras(server))
    page.locator("#extras_generate").click()
    deadline = time.monotonic() + 60
    while len(saved_extras(server)) < before + 2:
        assert time.monotonic() < deadline, "the batch was not saved"
        time.sleep(0.2)
    made = saved_extras(server)[-2:]
    assert [p.name[6:] for p in made] == ["shot0.png", "shot1.png"]
    assert [Image.open(p).size for p in made] == [(48, 32), (32, 32)]
    page.wait_for_function("() => document.querySelectorAll('#extras_gallery img').length >= 2")
