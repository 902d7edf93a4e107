"""Gallery and PNG Info as a person uses them: find an image, read it, send it, make it again."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser


def set_number(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def generate(page, prompt: str, seed: int) -> None:
    page.get_by_role("tab", name="txt2img").first.click()
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 5)):
        set_number(page, elem_id, value)
    page.locator("#txt2img_prompt textarea").fill(prompt)
    page.locator("#txt2img_seed input").fill(str(seed))
    page.locator("#txt2img_generate").click()
    page.wait_for_function(f"() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: {seed}')")


def test_gallery_select_and_send_to_txt2img(page, server) -> None:
    generate(page, "an orange lantern", 515)
    page.get_by_role("tab", name="Gallery").click()
    page.locator("#gallery_search input, #gallery_search textarea").first.fill("orange lantern")
    page.locator("#gallery_search input, #gallery_search textarea").first.press("Enter")
    page.wait_for_function("() => document.querySelector('#gallery_page_info').innerText.includes('1 image')")
    page.locator("#gallery_images .thumbnail-item").first.click()
    page.wait_for_function("() => document.querySelector('#gallery_info textarea').value.includes('Seed: 515')")
    page.locator("#gallery_full img").wait_for()
    page.locator("#gallery_send_to_txt2img").click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'an orange lantern'")
    assert page.locator("#txt2img_seed input").input_value() == "515"


def test_png_info_shows_parameters_and_reproduces_the_image(page, server) -> None:
    generate(page, "a paper boat, rain", 2024)
    made = sorted((server.data_dir / "outputs" / "txt2img-images").rglob("*-2024.png"))[-1]
    page.get_by_role("tab", name="PNG Info").click()
    with page.expect_file_chooser() as chooser:
        page.locator("#pnginfo_image").get_by_text("Drop Image Here", exact=False).first.click()
    chooser.value.set_files(str(made))
    page.wait_for_function("() => document.querySelector('#pnginfo_generation_info textarea').value.includes('Seed: 2024')")
    assert "a paper boat, rain" in page.locator("#pnginfo_table").inner_text()
    page.locator("#pnginfo_send_to_txt2img").click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a paper boat, rain'")
    page.locator("#txt2img_generate").click()
    deadline = time.monotonic() + 60
    while len(remade := sorted((server.data_dir / "outputs" / "txt2img-images").rglob("*-2024.png"))) < 2:
        assert time.monotonic() < deadline, "the second image never came"
        page.wait_for_timeout(200)  # files appear whole (written, then renamed into place)
    with Image.open(remade[-1]) as a, Image.open(made) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
