"""The txt2img flow as a person does it, in headless Chromium."""

from __future__ import annotations

import re

import pytest

from modules.infotext import parse_infotext
from modules.services.images import read_infotext

pytestmark = pytest.mark.browser


def set_number(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_type_a_prompt_generate_and_see_the_image_and_its_parameters(page, server) -> None:
    page.locator("#txt2img_prompt textarea").fill("a lighthouse at dusk")
    page.locator("#txt2img_neg_prompt textarea").fill("fog")
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 6)
    set_number(page, "txt2img_batch_size", 2)
    page.locator("#txt2img_seed input").fill("4242")
    page.locator("#txt2img_prompt textarea").press("Control+Enter")  # A1111's shortcut for Generate

    info = page.locator("#html_info_txt2img textarea")
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed:')")
    text = info.input_value()
    parsed = parse_infotext(text)
    assert parsed.prompt == "a lighthouse at dusk" and parsed.negative_prompt == "fog"
    assert parsed.params["Steps"] == "6" and parsed.params["Size"] == "64x64"
    assert parsed.params["Model"] == "tiny-sd15"
    images = page.locator("#txt2img_gallery img")
    images.first.wait_for()
    assert images.count() >= 2  # the grid and the two images (thumbnails)

    saved = sorted((server.data_dir / "outputs" / "txt2img-images").rglob("*.png"))
    assert [p.name.split("-", 1)[1] for p in saved[-2:]] == ["4242.png", "4243.png"]
    assert read_infotext(saved[-1]).endswith(text.split("\n")[-1].replace("4242", "4243"))
    page.screenshot(path=str(server.data_dir / "txt2img.png"))

    # Reuse seed after selecting the second image puts its seed back into the box.
    page.locator("#txt2img_gallery button.thumbnail-item, #txt2img_gallery .thumbnail-item").nth(2).click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: 4243')")
    page.locator("#txt2img_reuse_seed").click()
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '4243'")
    page.locator("#txt2img_random_seed").click()
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '-1'")


def test_invalid_seed_shows_an_error_naming_the_field(page) -> None:
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    page.locator("#txt2img_seed input").fill("99999999999")
    page.locator("#txt2img_generate").click()
    toast = page.get_by_text(re.compile(r"Seed: must be"))
    toast.first.wait_for()


def test_checkpoint_dropdown_lists_models_with_hash(page) -> None:
    page.wait_for_function("() => document.querySelector('#setting_sd_model_checkpoint input').value !== ''")
    value = page.locator("#setting_sd_model_checkpoint input").input_value()
    assert re.fullmatch(r"tiny-sd15\.safetensors \[[0-9a-f]{10}\]", value), value


def test_variation_seed_controls_reach_the_infotext(page) -> None:
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 4)
    page.locator("#txt2img_seed input").fill("10")
    page.locator("#txt2img_subseed_show").get_by_text("Variation seed").first.click()
    subseed = page.locator("#txt2img_subseed input")
    subseed.wait_for(state="visible")
    for _ in range(5):  # the accordion's boxes may still be mounting: typed again until the box keeps it
        subseed.fill("7")
        subseed.press("Enter")
        page.wait_for_timeout(300)
        if subseed.input_value() == "7":
            break
    set_number(page, "txt2img_subseed_strength", 0.5)
    page.wait_for_function("() => document.querySelector('#txt2img_subseed_strength input[type=number]').value == '0.5'")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: 10')",
                           timeout=120_000)
    info = page.locator("#html_info_txt2img textarea").input_value()
    assert "Variation seed: 7, Variation seed strength: 0.5" in info, info


def test_token_counter_follows_the_prompt(page) -> None:
    page.locator("#txt2img_prompt textarea").fill("a photo of a cat")
    page.wait_for_function("() => document.querySelector('#txt2img_token_counter').innerText.includes('5/75')")
    page.locator("#txt2img_prompt textarea").fill(" ".join(["word"] * 80))
    page.wait_for_function("() => document.querySelector('#txt2img_token_counter').innerText.includes('80/150')")


def test_pasted_settings_without_a_control_go_to_override_settings_and_reach_the_image(page, server) -> None:
    box = page.locator("#txt2img_override_settings")
    assert not box.is_visible()  # hidden while empty, as in A1111
    page.locator("#txt2img_prompt textarea").fill(
        "a cube\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Eta: 0.5")
    page.locator("#txt2img_paste").click()
    entry = box.locator(".token", has_text="Eta: 0.5")
    entry.wait_for()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a cube'")

    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: 5')",
                           timeout=120_000)
    params = parse_infotext(page.locator("#html_info_txt2img textarea").input_value()).params
    assert params["Eta"] == "0.5" and params["Sampler"] == "Euler a", params
    newest = max((server.data_dir / "outputs" / "txt2img-images").rglob("*.png"), key=lambda p: p.stat().st_mtime)
    assert parse_infotext(read_infotext(newest)).params["Eta"] == "0.5"

    # Removing the entry leaves the server's eta (A1111's default 1, which it does not write).
    entry.locator(".token-remove").click()
    page.wait_for_function("() => !document.querySelector('#txt2img_override_settings .token')")
    box.wait_for(state="hidden")
    page.locator("#txt2img_seed input").fill("6")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: 6')",
                           timeout=120_000)
    params = parse_infotext(page.locator("#html_info_txt2img textarea").input_value()).params
    assert "Eta" not in params and params["Sampler"] == "Euler a", params
