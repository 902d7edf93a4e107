"""Where a generating tab puts things: the results column level with the prompt, a gallery that grows
with the batch, and Generate close to its result on a phone. In headless Chromium."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.browser


def box(page, selector: str) -> dict:
    found = page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not on the page"
    return found


def set_number(page, elem_id: str, value: int) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Enter")


def test_the_results_column_starts_level_with_the_prompt(page) -> None:
    # Once the page has settled (fonts, the quicksettings bar and late components move things while it loads).
    page.wait_for_function("""() => {
        const top = (id) => document.querySelector(id)?.getBoundingClientRect().top;
        return Math.abs(top('#txt2img_generate') - top('#txt2img_prompt')) < 40;
    }""", timeout=15_000)
    prompt, generate, gallery = box(page, "#txt2img_prompt"), box(page, "#txt2img_generate"), box(page, "#txt2img_gallery")
    assert generate["x"] > prompt["x"] + prompt["width"] - 1  # beside it, not under it
    assert abs(generate["y"] - prompt["y"]) < 40
    assert gallery["y"] - generate["y"] < 300  # not pushed down under styles and extra networks


def test_the_gallery_grows_with_the_batch(page) -> None:
    page.locator("#txt2img_prompt textarea").fill("five in view")
    for elem_id, value in (("txt2img_width", 64), ("txt2img_height", 64), ("txt2img_steps", 1),
                           ("txt2img_batch_size", 6)):
        set_number(page, elem_id, value)
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelectorAll('#txt2img_gallery .thumbnail-item, "
                           "#txt2img_gallery button.thumbnail-item').length >= 7")
    gallery = box(page, "#txt2img_gallery")
    thumbnails = page.locator("#txt2img_gallery .thumbnail-item")
    for index in range(thumbnails.count()):  # the grid and six images, none cut off by a fixed height
        item = thumbnails.nth(index).bounding_box()
        assert item is not None and item["y"] + item["height"] <= gallery["y"] + gallery["height"] + 1


def test_on_a_phone_generate_is_close_to_the_result(browser, server) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#txt2img_generate")
        generate, gallery = box(page, "#txt2img_generate"), box(page, "#txt2img_gallery")
        assert 0 < gallery["y"] - (generate["y"] + generate["height"]) < 400
    finally:
        context.close()


def test_the_seed_buttons_are_plain_glyphs_with_tooltips(page) -> None:
    for elem_id, glyph, words in (("txt2img_random_seed", "\u2684", "random seed"),
                                  ("txt2img_reuse_seed", "\u267b", "Reuse the seed")):
        button = page.locator(f"#{elem_id}")
        assert button.inner_text().strip() == glyph  # no emoji variation selector: drawn by text fonts
        page.wait_for_function(f"() => (document.querySelector('#{elem_id}').title || '').includes({words!r})")
