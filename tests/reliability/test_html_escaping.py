"""Category 10, escaping: text from users and files never becomes live HTML in the UI.

Gradio renders toast messages (gr.Info/Warning/Error) and gr.HTML as HTML, and gr.Markdown as
Markdown; its sanitizer strips scripts but keeps links and images. An attacker's style name, prompt,
infotext or model file name is tried where the UI shows it, by calling the real event handlers of
the built page, and must come back escaped. Also: the handlers that change the server for everyone
carry :func:`modules.server_effects.changes_server`, which the request guard reads.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import gradio as gr
import gradio.helpers
import pytest

from modules.server_effects import Effect, effect_of
from modules.ui import png_info
from tests.conftest import make_services
from tests.reliability.support import png_bytes

CATEGORY = "10 escaping"
ATTACK = '<img src=x onerror=alert(1)><a href="http://evil">x</a>'
FILE_ATTACK = "<img src=x onerror=alert(1)>"  # a file name cannot hold the '/' of '</a>'
PREFIXES = ("txt2img", "img2img", "inpaint")


@dataclass
class Page:
    services: Any
    demo: gr.Blocks

    def block_fn(self, elem_id: str, event: str) -> Any:
        """Gradio's BlockFunction for ``event`` of the component with ``elem_id``."""
        for block_fn in self.demo.fns.values():
            for target, name in block_fn.targets:
                if name == event and getattr(self.demo.blocks.get(target), "elem_id", None) == elem_id:
                    return block_fn
        raise LookupError(f"no {event} handler on #{elem_id}")

    def handler(self, elem_id: str, event: str) -> Callable[..., Any]:
        return self.block_fn(elem_id, event).fn


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """The whole page over a data dir whose LoRA, VAE and checkpoint folders hold a hostile file name."""
    from modules.ui.app_ui import build_ui

    data = tmp_path_factory.mktemp("data")
    for folder in ("Lora", "VAE", "Stable-diffusion"):
        (data / "models" / folder).mkdir(parents=True)
        (data / "models" / folder / f"{FILE_ATTACK}.safetensors").write_bytes(b"")  # listed; empty, never loads
    services = make_services(data, tmp_path_factory.mktemp("no-more-models"))
    try:
        yield Page(services, build_ui(services))
    finally:
        services.close()


@pytest.fixture
def toasts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Messages of gr.Info / gr.Warning raised during the test (they all go through log_message)."""
    shown: list[str] = []
    monkeypatch.setattr(gradio.helpers, "log_message", lambda message, *args, **kwargs: shown.append(message))
    return shown


class _Rendered(HTMLParser):
    """What a browser makes of an HTML fragment: its tags and its text."""

    def __init__(self, fragment: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text = ""
        self.feed(fragment)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text += data


def assert_shown_as_text(fragment: str, hostile: str, allowed_tags: tuple[str, ...] = ()) -> None:
    """``fragment`` shows ``hostile`` as written, escaped, and has no tag besides ``allowed_tags``."""
    rendered = _Rendered(fragment)
    assert set(rendered.tags) <= set(allowed_tags), (rendered.tags, fragment)
    assert hostile in rendered.text, fragment
    assert html.escape(hostile, quote=False) in fragment or html.escape(hostile) in fragment


def assert_markdown_shown_as_text(fragment: str, hostile: str) -> None:
    markdown_it = pytest.importorskip("markdown_it")  # Gradio's own dependency; the browser uses marked
    assert_shown_as_text(markdown_it.MarkdownIt("commonmark", {"html": True}).render(fragment), hostile, ("p",))


# --- toasts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_saving_and_deleting_a_style_named_with_html_toasts_it_escaped(page: Page, toasts: list[str],
                                                                       prefix: str) -> None:
    page.handler(f"{prefix}_style_save", "click")(ATTACK, "a {prompt}", "")
    page.handler(f"{prefix}_style_delete", "click")(ATTACK)
    saved, deleted = toasts
    assert saved.startswith("Saved style") and deleted.startswith("Deleted style")
    for toast in toasts:
        assert_shown_as_text(toast, ATTACK)


def test_a_refused_vae_choice_errors_with_its_name_and_the_vae_file_names_escaped(page: Page) -> None:
    with pytest.raises(gr.Error) as refused:
        page.handler("setting_sd_vae", "input")(ATTACK)
    assert_shown_as_text(refused.value.message, ATTACK)
    assert_shown_as_text(refused.value.message, FILE_ATTACK)  # the list of available VAEs


def test_a_prompt_naming_a_missing_lora_errors_with_the_lora_file_names_escaped(page: Page) -> None:
    generate = page.block_fn("txt2img_generate", "click")
    received = {component: component.value for component in generate.inputs}  # inputs are a set: one dict
    prompt = next(component for component in generate.inputs if component.elem_id == "txt2img_prompt")
    received[prompt] = f"{ATTACK} <lora:missing:1>"
    with pytest.raises(gr.Error) as refused:
        list(generate.fn(received, None))
    assert "missing" in refused.value.message
    assert_shown_as_text(refused.value.message, FILE_ATTACK)


def test_sending_an_image_whose_infotext_names_a_hostile_model_warns_escaped(page: Page, toasts: list[str]) -> None:
    infotext = f"{ATTACK}\nSteps: 20, Sampler: Euler, Model: {ATTACK}"
    page.handler("pnginfo_send_to_txt2img", "click")(None, infotext)
    [warning] = toasts
    assert "not here" in warning
    assert_shown_as_text(warning, ATTACK)


def test_a_hostile_checkpoint_file_warns_and_shows_its_status_escaped(page: Page, toasts: list[str]) -> None:
    title = next(info.title for info in page.services.registry.all() if FILE_ATTACK in info.title)
    _choices, status, *_offer = page.handler("setting_sd_model_checkpoint", "input")(title)  # empty: fails to load
    [warning] = toasts
    assert_shown_as_text(warning, FILE_ATTACK)
    assert_markdown_shown_as_text(status, FILE_ATTACK)  # gr.Markdown: no link, image or tag either


def test_a_missing_checkpoint_toasts_its_name_escaped(page: Page, toasts: list[str]) -> None:
    page.handler("setting_sd_model_checkpoint", "input")(ATTACK)
    [warning] = toasts
    assert "not found" in warning
    assert_shown_as_text(warning, ATTACK)


# --- HTML fragments ----------------------------------------------------------------------------


def test_png_info_shows_a_hostile_prompt_and_parameters_as_text(tmp_path: Path) -> None:
    image = tmp_path / "hostile.png"
    image.write_bytes(png_bytes(parameters=f"{ATTACK}\nNegative prompt: <script>alert(1)</script>\n"
                                           f"Steps: 20, Sampler: Euler, Model: {ATTACK}"))
    raw, table = png_info.read(str(image))
    assert raw.startswith(ATTACK)  # the textbox gets the text as written
    assert_shown_as_text(table, ATTACK, ("table", "tr", "th", "td"))
    assert "<script>" not in table


def test_the_token_counter_is_an_escaped_fragment(page: Page) -> None:
    counter = page.handler("txt2img_prompt", "change")(ATTACK)
    assert _Rendered(counter).tags == ["span"]


def test_the_lora_cards_show_file_names_as_text(page: Page) -> None:
    loras, _embeddings = page.handler("txt2img_extra_refresh", "click")("", "Name", "Ascending")
    assert_shown_as_text(loras, FILE_ATTACK, ("div",))
    found = page.handler("txt2img_extra_search", "change")(FILE_ATTACK, "Name", "Ascending")[0]
    assert_shown_as_text(found, FILE_ATTACK, ("div",))
    nothing = page.handler("txt2img_extra_search", "change")(ATTACK, "Name", "Ascending")[0]
    assert_shown_as_text(nothing, ATTACK, ("div",))  # "Nothing found for ..." quotes the search


# --- marks -------------------------------------------------------------------------------------

CHANGES_SERVER = [
    ("setting_sd_vae", "input"), ("refresh_sd_vae", "click"),
    ("setting_sd_model_checkpoint", "input"), ("refresh_sd_model_checkpoint", "click"),
    ("download_default_checkpoint", "click"), ("gallery_delete_confirm", "click"),
    *((f"{prefix}_{button}", "click") for prefix in PREFIXES
      for button in ("style_save", "style_delete", "extra_refresh")),
]
OWN = [("gallery_refresh", "click"), ("tab_gallery", "select"), ("gallery_delete", "click"),
       ("txt2img_style_apply", "click"), ("txt2img_extra_search", "change"), ("pnginfo_image", "change"),
       ("txt2img_generate", "click")]


@pytest.mark.parametrize(("elem_id", "event"), CHANGES_SERVER)
def test_handlers_that_change_the_server_for_everyone_are_marked(page: Page, elem_id: str, event: str) -> None:
    assert effect_of(page.handler(elem_id, event)) is Effect.SERVER


@pytest.mark.parametrize(("elem_id", "event"), OWN)
def test_handlers_that_only_read_or_run_own_jobs_are_not_marked(page: Page, elem_id: str, event: str) -> None:
    assert effect_of(page.handler(elem_id, event)) is Effect.OWN
