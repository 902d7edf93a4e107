"""img2img and inpainting as a person uses them: upload, paint a mask, generate, send between tabs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.services.images import read_infotext

pytestmark = pytest.mark.browser


def set_number(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def newest_png(server, folder: str) -> Path:
    return sorted((server.data_dir / "outputs" / folder).rglob("*.png"), key=lambda p: p.stat().st_mtime)[-1]


def test_brush_stroke_in_the_inpaint_tab_changes_only_what_lies_under_it(page, server, tmp_path) -> None:
    source = tmp_path / "source.png"
    Image.new("RGB", (64, 64), (200, 50, 50)).save(source)
    page.get_by_role("tab", name="Inpaint").first.click()
    with page.expect_file_chooser() as chooser:
        page.locator("#img2maskimg").get_by_text("Upload an image").click()
    chooser.value.set_files(str(source))
    page.locator("#img2maskimg button[aria-label='Brush']").first.click()
    box = page.locator("#img2maskimg canvas").first.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    # The 64 px image is shown centred at several times its size: a stroke 100 px left of the
    # centre runs down the image's left part, far from its right third.
    page.mouse.move(cx - 100, cy - 110)
    page.mouse.down()
    for step in range(1, 12):
        page.mouse.move(cx - 100, cy - 110 + step * 20)
    page.mouse.up()
    # The editor composites the stroke into its mask layer asynchronously; on a loaded machine a
    # click straight after could send the form before the mask is part of it.
    page.wait_for_timeout(1000)
    for elem_id, value in (("inpaint_width", 64), ("inpaint_height", 64), ("inpaint_steps", 4),
                           ("img2img_mask_blur", 1), ("inpaint_denoising_strength", 1)):
        set_number(page, elem_id, value)
    page.locator("#inpaint_prompt textarea").fill("a blue patch")
    page.locator("#inpaint_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_inpaint textarea').value.includes('Mask blur: 1')")
    result = np.asarray(Image.open(newest_png(server, "img2img-images")).convert("RGB")).astype(int)
    original = np.asarray(Image.open(source).convert("RGB")).astype(int)
    changed = np.abs(result - original).max(axis=2) > 0
    assert changed.any(), "nothing was repainted"
    columns = np.nonzero(changed.any(axis=0))[0]
    assert columns.max() < 40, f"pixels changed away from the stroke (columns {columns.min()}-{columns.max()})"
    assert not changed[:, 44:].any()


def test_send_to_img2img_fills_the_image_and_the_prompt(page, server) -> None:
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 4)):
        set_number(page, elem_id, value)
    page.locator("#txt2img_prompt textarea").fill("a castle on a hill")
    page.locator("#txt2img_seed input").fill("77")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: 77')")
    page.locator("#txt2img_send_to_img2img").click()
    page.locator("#img2img_image img").wait_for()
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea').value === 'a castle on a hill'")
    assert page.locator("#img2img_seed input").input_value() == "77"
    assert page.locator("#img2img_width input[type=number]").input_value() == "64"
    # And the image really is the input of the next img2img job.
    set_number(page, "img2img_denoising_strength", 0)
    page.locator("#img2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_img2img textarea').value.includes('Denoising')")
    made = newest_png(server, "img2img-images")
    assert "Denoising strength: 0," in read_infotext(made)
