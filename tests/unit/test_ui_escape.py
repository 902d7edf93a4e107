"""modules.ui.escape: user text shown in toasts, gr.HTML and gr.Markdown stays text."""

from __future__ import annotations

import string
from html.parser import HTMLParser

import pytest

from modules.ui.escape import markdown, text

HOSTILE = [
    '<img src=x onerror=alert(1)><a href="http://evil">x</a>',
    "[click](javascript:alert(1)) ![](http://evil/pixel.png) <http://evil> http://evil.com www.evil.com a@evil.com",
    "**bold** _em_ `code` ~~gone~~ $$<b>math</b>$$ &lt;img src=x&gt; &amp; \\[x\\](y)",
    "<script>alert(1)</script> {{handlebars}} ${template} 'single' \"double\"",
    "# heading\n- item\n1. item\n> quote\n| a | b |\n|---|---|\n```\nfence\n```\n<div>block</div>",
]


class _Rendered(HTMLParser):
    def __init__(self, fragment: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.data: list[str] = []
        self.feed(fragment)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.data.append(data)


@pytest.mark.parametrize("value", HOSTILE)
def test_text_leaves_no_tag_and_reads_as_written(value: str) -> None:
    shown = _Rendered(text(value))
    assert shown.tags == []
    assert "".join(shown.data) == value


def test_text_takes_any_object() -> None:
    assert text(ValueError("<b>")) == "&lt;b&gt;"


@pytest.mark.parametrize("value", HOSTILE)
def test_markdown_renders_to_the_text_as_written_with_no_link_image_or_tag(value: str) -> None:
    markdown_it = pytest.importorskip("markdown_it")  # Gradio's own dependency; the browser uses marked
    renderer = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    shown = _Rendered(renderer.render(markdown(value)))
    assert set(shown.tags) <= {"p"}, shown.tags
    assert "".join(shown.data).strip() == value.strip()


def test_markdown_escapes_every_ascii_punctuation_mark() -> None:
    # ':' and '.' stop GFM's bare-URL autolinks, which CommonMark renderers without that extension
    # cannot show; '$' stops Gradio's $$ blocks, which it renders before sanitizing.
    escaped = markdown(string.punctuation)
    for mark in string.punctuation:
        assert ("\\" + mark) in escaped or mark in "&<>\"'", mark
    assert "http\\:\\/\\/evil\\.com" in markdown("http://evil.com")
    assert "www\\.evil" in markdown("www.evil")
    assert "$$" not in markdown("$$x$$")


def test_markdown_keeps_letters_digits_spaces_and_unicode() -> None:
    assert markdown("Loaded model 2 ⚠️ ünïcode") == "Loaded model 2 ⚠️ ünïcode"
