"""The extra-networks cards in headless Chromium: preview, description and trigger words from A1111's
files beside a LoRA, sorting, "nothing found", a click that adds the tag under the LoRA's alias (which
then generates), and the gallery caption naming the tab that made the image."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from PIL import Image

from modules.infotext import parse_infotext
from tests.server_process import Server, start_server, stop_server

pytestmark = pytest.mark.browser

ALIAS = "tiny-kohya-3"  # the ss_output_name write_tiny_lora gives seed 3 in the kohya layout
CARD_NAMES = "() => [...document.querySelectorAll('#txt2img_lora_cards .en-card-name')].map(e => e.innerText)"


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from modules.devtools.tiny_lora import write_tiny_lora

    data = tmp_path_factory.mktemp("ui-cards")
    loras = data / "models" / "Lora"
    write_tiny_lora(tiny_models.sd15_file, loras / "cubestyle.safetensors", seed=3)
    write_tiny_lora(tiny_models.sd15_file, loras / "older.safetensors", seed=4)
    os.utime(loras / "older.safetensors", (1_600_000_000, 1_600_000_000))  # cubestyle is the newer
    Image.new("RGB", (64, 64), (250, 10, 10)).save(loras / "cubestyle.preview.png")
    (loras / "cubestyle.json").write_text(json.dumps({
        "description": "Turns <i>everything</i> into cubes", "activation text": "red cube",
        "preferred weight": 0.7, "notes": "", "sd version": "SD1"}), encoding="utf-8")
    proc, srv = start_server(data, tiny_models.folder, "--ckpt", "tiny-sd15.safetensors")
    yield srv
    stop_server(proc)


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.get_by_role("option", name=option, exact=True).click()


def wait_for_names(page, names: list[str]) -> None:
    wanted = json.dumps(json.dumps(names, separators=(",", ":")))  # a JS string literal of JSON.stringify's form
    page.wait_for_function(f"() => JSON.stringify(({CARD_NAMES})()) === {wanted}")


def test_cards_sort_search_click_and_generate(page, server) -> None:
    page.locator("#txt2img_extra_networks").get_by_text("Extra networks").first.click()
    cards = page.locator("#txt2img_lora_cards")
    wait_for_names(page, ["cubestyle", "older"])
    # 1. The card shows the preview beside the file, and the description and trigger words of name.json.
    card = cards.locator(".en-card", has_text="cubestyle")
    assert card.locator("img").evaluate("img => img.complete && img.naturalWidth") > 0
    assert card.locator(".en-card-desc").inner_text() == "Turns <i>everything</i> into cubes"
    assert card.locator(".en-card-trigger").inner_text() == "Trigger words: red cube"
    assert cards.locator(".en-card", has_text="older").locator(".en-card-noimg").inner_text() == "No preview"
    # 2. Sorting: by name, either way; by date modified.
    choose(page, "txt2img_extra_order", "Descending")
    wait_for_names(page, ["older", "cubestyle"])
    choose(page, "txt2img_extra_sort", "Date modified")
    wait_for_names(page, ["cubestyle", "older"])
    choose(page, "txt2img_extra_order", "Ascending")
    wait_for_names(page, ["older", "cubestyle"])
    # 3. A search with no match says so.
    search = page.locator("#txt2img_extra_search textarea, #txt2img_extra_search input").first
    search.fill("zzz")
    cards.get_by_text('Nothing found for "zzz".').wait_for()
    search.fill("cube")
    wait_for_names(page, ["cubestyle"])
    # 4. A click adds A1111's text: separator, <lora:alias:preferred weight>, the activation text.
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a cube")
    cards.locator(".en-card", has_text="cubestyle").click()
    expected = f"a cube, <lora:{ALIAS}:0.7>, red cube"
    page.wait_for_function(f"() => document.querySelector('#txt2img_prompt textarea').value === {expected!r}")
    # 5. The alias resolves when generating, and the infotext names the LoRA as the prompt did.
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Lora hashes')",
                           timeout=180_000)  # a busy machine may take long to load the LoRA
    text = page.locator("#html_info_txt2img textarea").input_value()
    assert parse_infotext(text).params["Lora hashes"].startswith(f"{ALIAS}: ")
    # 6. A second click takes the tag and its trigger words out again.
    cards.locator(".en-card", has_text="cubestyle").click()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a cube'")
    # 7. The gallery's caption says which tab made the image.
    page.locator("#tabs").get_by_role("tab", name="Gallery").click()
    page.wait_for_function("() => document.querySelector('#gallery_images').innerText.includes('txt2img \u00b7 ')")
