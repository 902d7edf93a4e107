"""A fresh install with no model, and a long job watched and interrupted, in headless Chromium."""

from __future__ import annotations

import re

import pytest

from tests.server_process import start_server, stop_server

pytestmark = pytest.mark.browser


def test_with_no_checkpoint_the_ui_starts_and_says_how_to_add_one(browser, tmp_path) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    proc, server = start_server(tmp_path / "data", empty)
    try:
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(server.url + "/")
        notice = page.locator("#no_checkpoint_notice")
        notice.wait_for()
        assert "models/Stable-diffusion" in notice.inner_text()
        page.locator("#txt2img_width input[type=number]").fill("64")
        page.locator("#txt2img_generate").click()
        page.get_by_text(re.compile("No checkpoint found")).first.wait_for()
        # Offline, the download button answers with a clear message instead of hanging.
        page.locator("#download_default_checkpoint").click()
        page.get_by_text(re.compile("offline|unreachable|failed", re.I)).first.wait_for()
        page.close()
    finally:
        stop_server(proc)


def test_progress_and_preview_show_while_running_and_interrupt_keeps_finished_images(page, server) -> None:
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 150),
                           ("txt2img_batch_count", 20)):
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.locator("#txt2img_prompt textarea").fill("a long job")
    page.locator("#txt2img_generate").click()
    page.get_by_text(re.compile(r"step \d+/150")).first.wait_for()
    page.locator("#txt2img_preview img").wait_for()
    # Let the first image finish, then stop.
    page.get_by_text(re.compile(r"batch 2/20")).first.wait_for()
    page.locator("#txt2img_interrupt").click()
    page.get_by_text("Interrupted: kept the images finished before the stop.").wait_for()
    assert page.locator("#txt2img_gallery img").count() >= 1
    info = page.locator("#html_info_txt2img textarea").input_value()
    assert "Steps: 150" in info
