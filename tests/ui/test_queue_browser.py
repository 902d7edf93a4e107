"""Clicks are never dropped: a second Generate queues a second job (cancellable while it waits), a
reloaded page shows the running job, a number out of range is refused next to its field, and a job
of very many images asks first. In headless Chromium, on one server for the file."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from modules.infotext import parse_infotext
from modules.params import GenerationLimits
from modules.services.images import read_infotext
from tests.reliability.support import WORKER_LINE

pytestmark = pytest.mark.browser
LIMITS = GenerationLimits()
SLOW = {"txt2img_steps": 150, "txt2img_batch_count": 20}  # runs until interrupted, on any machine


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def small_job(page, prompt: str, **numbers: int) -> None:
    """A 64x64 job with ``prompt``; ``numbers`` set other number fields by element id."""
    page.locator("#txt2img_prompt textarea").fill(prompt)
    for elem_id, value in {"txt2img_width": 64, "txt2img_height": 64, "txt2img_steps": 2,
                           "txt2img_batch_count": 1, "txt2img_batch_size": 1, **numbers}.items():
        set_number(page, elem_id, value)


def refused_beside(page, field, pattern: re.Pattern[str]) -> None:
    """Click Generate and wait for the refusal beside ``field``. A change event still in flight (the
    memory estimate, sent as the box was typed into) can clear a field's message as it lands, so a
    refusal not shown within a while is asked for once more; a job must never start either way."""
    for attempt in range(2):
        page.locator("#txt2img_generate").click()
        try:
            field.get_by_text(pattern).wait_for(timeout=20_000)
            return
        except PlaywrightTimeout:
            if attempt:
                raise


def info_text(page) -> str:
    return page.locator("#html_info_txt2img textarea").input_value()


def job_lines(server, since: int) -> list[str]:
    """The worker's job lines (one per job run, finished or failed) logged after byte ``since``."""
    with server.log.open("rb") as log:
        log.seek(since)
        text = log.read().decode("utf-8", errors="replace")
    return WORKER_LINE.findall(text)


def saved_prompts(server) -> list[str]:
    """The prompts of the txt2img images saved so far, oldest first."""
    files = sorted((server.data_dir / "outputs" / "txt2img-images").rglob("*.png"), key=lambda p: p.stat().st_mtime)
    return [parse_infotext(read_infotext(path)).prompt for path in files]


def test_two_quick_clicks_make_two_jobs_that_finish_in_order(page, server) -> None:
    small_job(page, "first of two", txt2img_steps=150, txt2img_batch_count=3)
    page.locator("#txt2img_generate").click()
    page.get_by_text(re.compile(r"step \d+/150")).first.wait_for()
    page.locator("#txt2img_prompt textarea").fill("second of two")
    set_number(page, "txt2img_steps", 2)
    set_number(page, "txt2img_batch_count", 1)
    page.locator("#txt2img_generate").click()  # while the first runs: queued, not dropped

    listing = page.locator("#txt2img_queue")
    listing.get_by_text("Queued: position 2 — second of two").wait_for()
    page.get_by_text("Queued: position 2").first.wait_for()  # said when the click queued it
    # The first job's results land first (the second, two steps long, may replace them a moment later:
    # the order is checked on the saved files below).
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('first of two')",
                           timeout=180_000)
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('second of two')")
    assert listing.inner_text().strip() == ""
    prompts = saved_prompts(server)
    assert prompts[-4:] == ["first of two"] * 3 + ["second of two"]


def test_a_waiting_job_is_cancelled_and_never_runs(page, server) -> None:
    small_job(page, "keeps running", txt2img_steps=SLOW["txt2img_steps"], txt2img_batch_count=SLOW["txt2img_batch_count"])
    page.locator("#txt2img_generate").click()
    page.get_by_text(re.compile(r"step \d+/150")).first.wait_for()
    page.locator("#txt2img_prompt textarea").fill("never runs")
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_queue").get_by_text("never runs").wait_for()

    page.locator("#txt2img_queue_cancel").click()
    page.wait_for_function("() => !document.querySelector('#txt2img_queue').innerText.includes('never runs')")
    page.locator("#txt2img_interrupt").click()
    page.get_by_text("Interrupted: kept the images finished before the stop.").wait_for()
    time.sleep(1.0)  # the cancelled job would start now, were it still in line
    assert page.locator("#txt2img_progress").inner_text().startswith("Interrupted")
    assert "never runs" not in info_text(page) and "never runs" not in saved_prompts(server)


def test_a_reloaded_page_shows_the_running_job(page, server) -> None:
    small_job(page, "watched after a reload", **SLOW)
    page.locator("#txt2img_generate").click()
    page.get_by_text(re.compile(r"step \d+/150")).first.wait_for()

    page.reload()
    page.wait_for_selector("#txt2img_generate")
    progress = page.locator("#txt2img_progress")
    progress.get_by_text(re.compile(r"step \d+/150, batch \d+/20")).wait_for()
    page.locator("#txt2img_preview img").wait_for()
    first = progress.inner_text()
    page.wait_for_function(f"() => document.querySelector('#txt2img_progress').innerText !== {first!r}")  # live
    page.get_by_text(re.compile(r"batch 2/20")).first.wait_for()
    page.locator("#txt2img_interrupt").click()  # stops the job the reloaded page shows
    page.get_by_text("Interrupted: kept the images finished before the stop.").wait_for()
    assert "watched after a reload" in info_text(page)


def test_a_width_out_of_range_is_refused_next_to_the_field_and_starts_nothing(page, server) -> None:
    small_job(page, "too narrow", txt2img_width=7)
    before, logged = len(saved_prompts(server)), server.log.stat().st_size
    width = page.locator("#txt2img_width")
    refused_beside(page, width, re.compile(f"between {LIMITS.min_size} and {LIMITS.max_size}, got 7"))
    assert page.locator("#txt2img_width input[type=number]").input_value() == "7"  # not clamped
    time.sleep(1.0)
    assert not job_lines(server, logged)
    assert len(saved_prompts(server)) == before and "too narrow" not in info_text(page)


def test_a_job_of_800_images_asks_first(page, server) -> None:
    small_job(page, "eight hundred", txt2img_steps=1, txt2img_batch_count=100, txt2img_batch_size=8)
    logged = server.log.stat().st_size
    page.locator("#txt2img_generate").click()
    question = page.locator("#txt2img_confirm:visible")
    question.get_by_text(re.compile("800 images")).wait_for()
    page.locator("#txt2img_confirm_cancel:visible").click()
    page.wait_for_function("() => ![...document.querySelectorAll('#txt2img_confirm')].some(e => e.offsetParent)")
    time.sleep(1.0)
    assert not job_lines(server, logged)  # cancelled: nothing was queued

    page.locator("#txt2img_generate").click()
    question.get_by_text(re.compile("800 images")).wait_for()
    page.locator("#txt2img_confirm_start:visible").click()
    page.wait_for_function("() => ![...document.querySelectorAll('#txt2img_confirm')].some(e => e.offsetParent)")
    page.get_by_text(re.compile(r"batch \d+/100")).first.wait_for()  # accepted: the job runs
    page.locator("#txt2img_interrupt").click()
    page.get_by_text("Interrupted: kept the images finished before the stop.").wait_for()
    assert len(job_lines(server, logged)) == 1


def test_a_fractional_batch_count_is_refused_not_rounded(page, server) -> None:
    small_job(page, "half a batch")
    box = page.locator("#txt2img_batch_count input[type=number]")
    box.fill("1.5")
    logged = server.log.stat().st_size
    refused_beside(page, page.locator("#txt2img_batch_count"),
                   re.compile(r"Batch count: must be a whole number, got 1\.5"))
    assert box.input_value() == "1.5"
    time.sleep(1.0)
    assert not job_lines(server, logged)


def test_a_cfg_scale_out_of_range_is_refused_with_its_range_and_kept_as_typed(page, server) -> None:
    small_job(page, "too much guidance")
    cfg = page.locator("#txt2img_cfg_scale")
    cfg.get_by_text(f"1 to {LIMITS.max_cfg_scale:g}").wait_for()  # the range, stated beside the box
    box = page.locator("#txt2img_cfg_scale input[type=number]")
    box.fill("40")
    box.press("Tab")  # leaving the box changes nothing (a slider would have set it to 30)
    before, logged = len(saved_prompts(server)), server.log.stat().st_size
    refused_beside(page, cfg, re.compile(f"CFG Scale: must be between 1 and {LIMITS.max_cfg_scale:g}, got 40"))
    assert box.input_value() == "40"
    time.sleep(1.0)
    assert not job_lines(server, logged)
    assert len(saved_prompts(server)) == before and "too much guidance" not in info_text(page)


def test_a_hires_upscale_out_of_range_is_refused_next_to_upscale_by(page, server) -> None:
    small_job(page, "nine times larger")
    page.locator("#txt2img_hr").get_by_text("Hires. fix").first.click()
    page.locator("#txt2img_enable_hr input").check()
    scale = page.locator("#txt2img_hr_scale")
    scale.get_by_text("1 to 8").wait_for()
    box = page.locator("#txt2img_hr_scale input[type=number]")
    box.fill("9")
    box.press("Tab")
    logged = server.log.stat().st_size
    refused_beside(page, scale, re.compile(r"Upscale by: must be between 1 and 8, got 9"))
    assert box.input_value() == "9"
    time.sleep(1.0)
    assert not job_lines(server, logged)
    page.locator("#txt2img_enable_hr input").uncheck()
