"""The Settings tab and the quicksettings bar as a person uses them, checked against GET /sdapi/v1/options."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.ui import icons
from tests.server_process import Server, start_server, stop_server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The UI's server with the API on, to read the options back as a client would."""
    proc, srv = start_server(tmp_path_factory.mktemp("settings-data"), tiny_models.folder, "--api",
                             "--ckpt", "tiny-sd15.safetensors")
    yield srv
    stop_server(proc)


def options(server: Server) -> dict:
    with urllib.request.urlopen(server.url + "/sdapi/v1/options", timeout=10) as reply:
        return json.load(reply)


def open_settings(page) -> None:
    page.get_by_role("tab", name="Settings", exact=True).click()
    page.locator("#settings_submit").wait_for()


def test_search_change_apply_and_the_value_stays_after_a_reload(page, server) -> None:
    open_settings(page)
    search = page.locator("#settings_search input, #settings_search textarea").first
    search.fill("no such setting here")
    page.locator("#settings_nothing_found").get_by_text("Nothing found").wait_for()
    search.fill("SEND SEED")
    page.locator("#settings_row_ESRGAN_tile").wait_for(state="hidden")
    row = page.locator("#settings_row_send_seed")
    row.wait_for()
    page.wait_for_function("() => document.querySelector('#settings_send_seed input')?.checked === true")
    assert "default: True" in row.inner_text()
    assert page.locator("#settings_nothing_found").is_hidden()

    page.locator("#settings_send_seed input[type=checkbox]").uncheck()
    page.locator("#settings_submit").click()
    page.locator("#settings_result").get_by_text("1 setting changed").wait_for()
    assert options(server)["send_seed"] is False
    assert "send_seed: false" in (server.data_dir / "config.yaml").read_text()

    page.reload()
    page.wait_for_selector("#txt2img_generate")
    open_settings(page)
    page.locator("#settings_search input, #settings_search textarea").first.fill("send seed")
    page.wait_for_function("() => document.querySelector('#settings_send_seed input')?.checked === false")


def test_an_out_of_range_number_shows_its_range_and_nothing_is_saved(page, server) -> None:
    before = options(server)
    open_settings(page)
    for section in ("upscaling", "user_interface"):  # sections start closed
        page.locator(f"#settings_section_{section} .label-wrap").first.click()
    page.wait_for_function("() => document.querySelector('#settings_ESRGAN_tile_overlap input')?.value === '8'")
    assert "allowed: 0 to 48" in page.locator("#settings_row_ESRGAN_tile_overlap").inner_text()
    page.locator("#settings_send_size input[type=checkbox]").uncheck()  # a valid change sent with it
    page.locator("#settings_ESRGAN_tile_overlap input").fill("99")
    page.locator("#settings_submit").click()
    error = page.locator("#settings_error_ESRGAN_tile_overlap")
    error.get_by_text("0 to 48").wait_for()
    assert "99" in error.inner_text()
    assert "ESRGAN_tile_overlap" in page.locator("#settings_result").inner_text()
    after = options(server)
    assert (after["ESRGAN_tile_overlap"], after["send_size"]) == (8, True) == (before["ESRGAN_tile_overlap"],
                                                                                before["send_size"])
    assert page.locator("#settings_ESRGAN_tile_overlap input").input_value() == "99"  # kept for fixing, not clamped


def test_quicksettings_clip_skip_applies_at_once(page, server) -> None:
    box = page.locator("#setting_CLIP_stop_at_last_layers input")
    box.wait_for()
    page.wait_for_function("() => document.querySelector('#setting_CLIP_stop_at_last_layers input').value === '1'")
    assert page.locator("#setting_emphasis").is_hidden()  # not in quicksettings_list
    box.fill("2")
    box.press("Enter")
    deadline = time.monotonic() + 20
    while options(server)["CLIP_stop_at_last_layers"] != 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert options(server)["CLIP_stop_at_last_layers"] == 2


def test_glyph_buttons_have_tooltips_and_gradios_settings_panel_is_gone(page, server) -> None:
    refresh = page.locator("#refresh_sd_model_checkpoint")
    assert refresh.inner_text().strip() == icons.REFRESH
    page.wait_for_function("() => document.querySelector('#refresh_sd_model_checkpoint').title !== ''")
    assert refresh.get_attribute("title") == icons.TITLES_BY_ID["refresh_sd_model_checkpoint"]
    assert page.get_by_role("button", name="Settings", exact=True).count() == 0
    assert page.get_by_text("Built with Gradio").count() == 0
    page.locator("#quicksettings").screenshot(path=str(server.data_dir / "quicksettings.png"))


def post_options(server: Server, changes: dict) -> None:
    request = urllib.request.Request(server.url + "/sdapi/v1/options", data=json.dumps(changes).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200


def png_info(server: Server, data: bytes) -> dict:
    body = json.dumps({"image": base64.b64encode(data).decode("ascii")}).encode()
    request = urllib.request.Request(server.url + "/sdapi/v1/png-info", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


def wait_for_saved(server: Server, pattern: str) -> Path:
    """The newest file under the outputs folder matching ``pattern``, once it is there (files appear
    whole: written, then renamed into place)."""
    deadline = time.monotonic() + 120
    while not (found := sorted((server.data_dir / "outputs").rglob(pattern), key=lambda p: p.stat().st_mtime)):
        assert time.monotonic() < deadline, f"no {pattern} was saved"
        time.sleep(0.2)
    return found[-1]


def test_webp_chosen_in_settings_saves_webp_that_png_info_reads(page, server) -> None:
    prompt, seed = "a glass teapot on moss", 6061
    try:
        # 1. Settings: samples_format to webp, applied for the server.
        open_settings(page)
        page.locator("#settings_search input, #settings_search textarea").first.fill("samples_format")
        page.locator("#settings_samples_format input").click()
        page.get_by_role("option", name="webp", exact=True).click()
        page.wait_for_function("() => document.querySelector('#settings_samples_format input').value === 'webp'")
        page.locator("#settings_submit").click()
        page.locator("#settings_result").get_by_text("1 setting changed").wait_for()
        assert options(server)["samples_format"] == "webp"

        # 2. txt2img: one small image.
        page.get_by_role("tab", name="txt2img").first.click()
        for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 3)):
            box = page.locator(f"#{elem_id} input[type=number]")
            box.fill(str(value))
            box.press("Enter")
        page.locator("#txt2img_prompt textarea").fill(prompt)
        page.locator("#txt2img_seed input").fill(str(seed))
        page.locator("#txt2img_generate").click()
        page.wait_for_function(f"() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: {seed}')")

        # 3. The saved file is WebP (RIFF....WEBP), named for its seed.
        saved = wait_for_saved(server, f"*-{seed}.*")
        data = saved.read_bytes()
        assert saved.suffix == ".webp" and data[:4] == b"RIFF" and data[8:12] == b"WEBP", saved.name

        # 4. PNG Info, the tab and the API, read its parameters back.
        page.get_by_role("tab", name="PNG Info").click()
        with page.expect_file_chooser() as chooser:
            page.locator("#pnginfo_image").get_by_text("Drop Image Here", exact=False).first.click()
        chooser.value.set_files(str(saved))
        page.wait_for_function(
            f"() => document.querySelector('#pnginfo_generation_info textarea').value.includes('Seed: {seed}')")
        text = page.locator("#pnginfo_generation_info textarea").input_value()
        assert text.startswith(prompt) and "Size: 64x64" in text
        assert prompt in page.locator("#pnginfo_table").inner_text()
        info = png_info(server, data)
        assert info["info"].startswith(prompt) and f"Seed: {seed}" in info["info"]
    finally:
        post_options(server, {"samples_format": "png"})  # the other tests save PNG
    assert options(server)["samples_format"] == "png"
