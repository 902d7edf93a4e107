"""With --gradio-auth, a person logs in through the login page and then uses the UI normally."""

from __future__ import annotations

import re

import pytest

from tests.server_process import start_server, stop_server

pytestmark = pytest.mark.browser


def test_login_then_generate(browser, tiny_models, tmp_path) -> None:
    proc, server = start_server(tmp_path / "data", tiny_models.folder, "--api", "--gradio-auth", "alice:open-sesame-9",
                                "--ckpt", "tiny-sd15.safetensors")
    try:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(server.url + "/")
        page.locator("input[type=password]").wait_for()
        page.locator("input[type=text]").first.fill("alice")
        page.locator("input[type=password]").fill("wrong")
        page.get_by_role("button", name=re.compile("login", re.I)).click()
        page.get_by_text(re.compile("incorrect|invalid", re.I)).first.wait_for()
        page.locator("input[type=text]").first.fill("alice")  # the form clears after a failure
        page.locator("input[type=password]").fill("open-sesame-9")
        page.get_by_role("button", name=re.compile("login", re.I)).click()
        page.locator("#txt2img_generate").wait_for()
        for elem_id in ("txt2img_width", "txt2img_height"):
            page.locator(f"#{elem_id} input[type=number]").fill("64")
            page.locator(f"#{elem_id} input[type=number]").press("Enter")
        page.locator("#txt2img_steps input[type=number]").fill("4")
        page.locator("#txt2img_steps input[type=number]").press("Enter")
        page.locator("#txt2img_prompt textarea").fill("behind a login")
        page.locator("#txt2img_generate").click()
        page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed:')")
        assert page.locator("#txt2img_gallery img").count() >= 1
        page.close()
        assert "open-sesame-9" not in server.log.read_text()
    finally:
        stop_server(proc)
