"""Picking a FLUX.1 dev checkpoint in the browser: Forge's Distilled CFG Scale and Shift appear, the
form takes the family's defaults, and Generate makes an image whose parameters carry them. The shared
server (tests/ui/conftest.py) has a tiny FLUX.1 dev in its data dir; the test goes back to SD 1.5."""

from __future__ import annotations

import re

import pytest

from modules.infotext import parse_infotext

pytestmark = pytest.mark.browser


def set_number(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_pick_flux_see_distilled_cfg_appear_and_generate(page) -> None:
    distilled = page.locator("#txt2img_distilled_cfg_scale")
    page.wait_for_function("() => document.querySelector('#setting_sd_model_checkpoint input').value !== ''")
    assert not distilled.is_visible()  # SD 1.5 is loaded: no distilled guidance to set

    page.locator("#setting_sd_model_checkpoint input").click()
    page.get_by_role("option", name=re.compile(r"^tiny-flux-dev\.safetensors")).click()
    distilled.wait_for(state="visible")
    page.locator("#txt2img_shift").wait_for(state="visible")
    # Forge's FLUX preset: CFG 1 (no negative pass), the distilled guidance at 3.5, Euler / Simple.
    page.wait_for_function("() => document.querySelector('#txt2img_cfg_scale input').value === '1'")
    assert page.locator("#txt2img_distilled_cfg_scale input[type=number]").input_value() == "3.5"

    page.locator("#txt2img_distilled_cfg_scale input[type=number]").fill("5")
    page.locator("#txt2img_distilled_cfg_scale input[type=number]").press("Enter")
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_prompt textarea").fill("a lighthouse")
    page.locator("#txt2img_generate").click()

    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed:')")
    params = parse_infotext(page.locator("#html_info_txt2img textarea").input_value()).params
    assert params["Model"] == "tiny-flux-dev" and params["Distilled CFG Scale"] == "5"
    assert params["CFG scale"] == "1" and params["Size"] == "64x64"
    page.locator("#txt2img_gallery img").first.wait_for()

    # Back to SD 1.5: the control hides again, and its value goes back to one SD accepts.
    page.locator("#setting_sd_model_checkpoint input").click()
    page.get_by_role("option", name=re.compile(r"^tiny-sd15\.safetensors")).click()
    distilled.wait_for(state="hidden")
