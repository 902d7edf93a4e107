"""A remote model as a person uses it: pick openai/dall-e-3 from the checkpoint list, see what it
supports (and the sampler controls go), generate, read the image's parameters, find it in the Gallery.

The shared server's OpenAI provider is the offline fake (tests/ui/conftest.py); the checkpoint goes
back to the local one at the end, whatever happened, since other files share the server.
"""

from __future__ import annotations

import re

import pytest

from modules.infotext import parse_infotext

pytestmark = pytest.mark.browser


def pick(page, pattern: str) -> None:
    page.locator("#setting_sd_model_checkpoint input").click()
    page.get_by_role("option", name=re.compile(pattern)).click()


def test_pick_dall_e_3_generate_and_find_the_image_in_the_gallery(page, image_apis) -> None:
    page.wait_for_function("() => document.querySelector('#setting_sd_model_checkpoint input').value !== ''")
    try:
        pick(page, r"^openai\/dall-e-3$")
        page.locator("#txt2img_quality").wait_for(state="visible")
        page.locator("#txt2img_steps").wait_for(state="hidden")
        assert not page.locator("#txt2img_sampling").is_visible() and not page.locator("#txt2img_seed").is_visible()
        assert not page.locator("#txt2img_neg_prompt").is_visible()  # DALL-E 3 takes no negative prompt
        assert page.locator("#txt2img_width input[type=number]").input_value() == "1024"
        estimate = page.locator("#txt2img_memory_estimate")
        page.wait_for_function("() => document.querySelector('#txt2img_memory_estimate').innerText.includes('$0.04')")
        assert "1792x1024" in estimate.inner_text()

        page.locator("#txt2img_prompt textarea").fill("a glass lighthouse at dawn")
        page.locator("#txt2img_generate").click()
        page.wait_for_function(
            "() => document.querySelector('#html_info_txt2img textarea').value.includes('Revised prompt')")
        params = parse_infotext(page.locator("#html_info_txt2img textarea").input_value()).params
        assert params["Model"] == "openai/dall-e-3" and params["Size"] == "1024x1024"
        assert params["Quality"] == "standard" and "Steps" not in params
        page.locator("#txt2img_gallery img").first.wait_for()
        assert image_apis.calls[-1]["prompt"] == "a glass lighthouse at dawn"

        page.get_by_role("tab", name="Gallery").click()
        search = page.locator("#gallery_search input, #gallery_search textarea").first
        search.fill("glass lighthouse")
        search.press("Enter")
        page.wait_for_function("() => document.querySelector('#gallery_page_info').innerText.includes('1 image')")
        page.locator("#gallery_images .thumbnail-item").first.click()
        page.wait_for_function(
            "() => document.querySelector('#gallery_info textarea').value.includes('Model: openai/dall-e-3')")
    finally:
        page.get_by_role("tab", name="txt2img").first.click()
        pick(page, r"^tiny-sd15\.safetensors")
        page.locator("#txt2img_steps").wait_for(state="visible")
    assert not page.locator("#txt2img_quality").is_visible()
