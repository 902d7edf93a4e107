"""Hires fix, the LoRA browser, the VAE choice and pasting hires parameters, in headless Chromium."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PIL import Image

from modules.infotext import parse_infotext
from tests.server_process import Server, start_server, stop_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from modules.devtools.tiny_lora import write_tiny_lora
    from modules.devtools.tiny_vae import write_tiny_vae

    data = tmp_path_factory.mktemp("ui-addons")
    (data / "models" / "Lora").mkdir(parents=True)
    (data / "models" / "VAE").mkdir(parents=True)
    write_tiny_lora(tiny_models.sd15_file, data / "models" / "Lora" / "tinystyle.safetensors", seed=3)
    write_tiny_lora(tiny_models.sd15_file, data / "models" / "Lora" / "another.safetensors", seed=4)
    write_tiny_vae(tiny_models.sd15_file, data / "models" / "VAE" / "other-vae.safetensors", seed=9)
    proc, srv = start_server(data, tiny_models.folder, "--ckpt", "tiny-sd15.safetensors")
    yield srv
    stop_server(proc)


def set_number(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def small_job(page, steps: int = 3) -> None:
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", steps)
    page.locator("#txt2img_seed input").fill("5")


def wait_for_infotext(page, needle: str) -> str:
    page.wait_for_function(
        f"() => document.querySelector('#html_info_txt2img textarea').value.includes({needle!r})")
    return page.locator("#html_info_txt2img textarea").input_value()


def test_lora_browser_search_and_click_puts_the_tag_in_the_prompt(page, server) -> None:
    small_job(page)
    page.locator("#txt2img_prompt textarea").fill("a cube")
    page.locator("#txt2img_extra_networks").get_by_text("Extra networks").first.click()
    page.locator("#txt2img_extra_search input, #txt2img_extra_search textarea").fill("tiny")
    cards = page.locator("#txt2img_lora_cards")
    cards.get_by_text("tinystyle").first.wait_for()
    page.wait_for_function("() => !document.querySelector('#txt2img_lora_cards').innerText.includes('another')")
    cards.get_by_text("tinystyle").first.click()
    # The tag names the LoRA by its alias (the ss_output_name it was trained under), as A1111's card does.
    page.wait_for_function(
        "() => document.querySelector('#txt2img_prompt textarea').value === 'a cube, <lora:tiny-kohya-3:1>'")
    page.locator("#txt2img_generate").click()
    text = wait_for_infotext(page, "Lora hashes")
    assert parse_infotext(text).params["Lora hashes"].startswith("tiny-kohya-3: ")
    # A second click takes the tag out again.
    cards.get_by_text("tinystyle").first.click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a cube'")


def test_hires_fix_makes_the_larger_image_and_paste_restores_it(page, server) -> None:
    small_job(page)
    page.locator("#txt2img_prompt textarea").fill("a tower")
    page.locator("#txt2img_hr").get_by_text("Hires. fix").first.click()
    page.locator("#txt2img_enable_hr input").check()
    set_number(page, "txt2img_hr_scale", 2)
    set_number(page, "txt2img_hires_steps", 2)
    page.locator("#txt2img_generate").click()
    text = wait_for_infotext(page, "Hires upscale")
    params = parse_infotext(text).params
    assert (params["Size"], params["Hires upscale"], params["Hires steps"]) == ("64x64", "2", "2")
    newest = max((server.data_dir / "outputs" / "txt2img-images").rglob("*.png"), key=lambda p: p.stat().st_mtime)
    with Image.open(newest) as image:
        assert image.size == (128, 128)
    # Switch hires off, then paste the parameters back: hires comes back on with its values.
    page.locator("#txt2img_enable_hr input").uncheck()
    set_number(page, "txt2img_hires_steps", 0)
    page.locator("#txt2img_prompt textarea").fill(text)
    page.locator("#txt2img_paste").click()
    page.wait_for_function("() => document.querySelector('#txt2img_enable_hr input').checked")
    page.wait_for_function("() => document.querySelector('#txt2img_hires_steps input[type=number]').value === '2'")


def test_vae_choice_is_used_and_kept(page, server) -> None:
    vae = page.locator("#setting_sd_vae input")
    vae.click()
    page.get_by_role("option", name="other-vae.safetensors").click()
    page.wait_for_function("() => document.querySelector('#setting_sd_vae input').value === 'other-vae.safetensors'")
    small_job(page)
    page.locator("#txt2img_prompt textarea").fill("a boat")
    page.locator("#txt2img_generate").click()
    text = wait_for_infotext(page, "VAE:")
    assert parse_infotext(text).params["VAE"] == "other-vae.safetensors"
    assert "sd_vae: other-vae.safetensors" in (server.data_dir / "config.yaml").read_text()
