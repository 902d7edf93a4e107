"""ControlNet's accordion in txt2img, driven in headless Chromium: enable a unit, upload an image,
pick canny and a tiny model, preview the edge map, generate, and find the unit in the infotext.
The shared server (tests/ui/conftest.py) has the tiny ControlNet in its data dir's models/ControlNet."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.server_process import Server

pytestmark = pytest.mark.browser

UNIT = "txt2img_ext_controlnet_unit0"  # elem_id prefix: <tab>_ext_<extension name>_unit<index>


def model_title(server: Server) -> str:
    path = server.data_dir / "models" / "ControlNet" / "tiny-canny.safetensors"
    return f"tiny-canny [{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}]"


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(f"() => document.querySelector('#{elem_id} input').value === {option!r}")


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def shapes(path: Path) -> Path:
    image = Image.new("RGB", (64, 64), "black")
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 40, 50), fill="white")
    draw.ellipse((30, 5, 60, 35), fill="gray")
    image.save(path)
    return path


def shown_image(page, selector: str) -> np.ndarray:
    """The pixels of the image the page shows at ``selector``."""
    src = page.locator(selector).first.get_attribute("src")
    data = base64.b64decode(src.split(",", 1)[1]) if src.startswith("data:") else page.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def test_canny_unit_preview_and_generate(page, server: Server, tmp_path: Path) -> None:
    page.locator("#txt2img_ext_controlnet_panel .label-wrap").first.click()  # the accordion starts closed
    page.get_by_role("tab", name="ControlNet Unit 0").click()
    page.locator(f"#{UNIT}_enable input[type=checkbox]").check()
    with page.expect_file_chooser() as chooser:
        page.locator(f"#{UNIT}_image").get_by_text("Drop Image Here", exact=False).first.click()
    chooser.value.set_files(str(shapes(tmp_path / "shapes.png")))
    page.locator(f"#{UNIT}_image img").first.wait_for()
    choose(page, f"{UNIT}_module", "canny")
    page.wait_for_function(  # the sliders follow the module
        f"() => (document.querySelector('#{UNIT}_threshold_a') || {{innerText: ''}}).innerText.includes('Canny Low')")
    choose(page, f"{UNIT}_model", model_title(server))

    page.locator(f"#{UNIT}_preview").click()
    preview = f"#{UNIT}_preview_image img"
    page.locator(preview).first.wait_for()
    edges = shown_image(page, preview)
    assert edges.max() == 255 and edges.min() == 0 and (edges == 255).mean() < 0.5  # white edges on black

    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 3)
    page.locator("#txt2img_seed input").fill("41")
    page.locator("#txt2img_prompt textarea").fill("a house")
    page.locator("#txt2img_generate").click()
    page.wait_for_function(
        "() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: 41')")
    infotext = page.locator("#html_info_txt2img textarea").input_value()
    assert f'ControlNet 0: "Module: canny, Model: {model_title(server)}' in infotext
