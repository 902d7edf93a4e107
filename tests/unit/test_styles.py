"""Prompt styles: A1111's merge rule, A1111's styles.csv as users have it, and never losing the file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules import atomic
from modules.errors import ConfigError, ValidationError
from modules.services.styles import (
    PromptStyle,
    StyleStore,
    apply_style_text,
    format_styles_csv,
    parse_styles_csv,
)

# Written the way A1111 and spreadsheets leave it: BOM, CRLF, quoted commas, quotes and line
# breaks, an extra column, a short row, an empty-name row and the legacy "None" row.
A1111_FILE = (
    "\ufeffname,prompt,negative_prompt,notes\r\n"
    "None,,,\r\n"
    'Cinematic,"cinematic still of {prompt}, ""film grain"", bokeh","blurry, lowres",mine\r\n'
    'Poster,"bold colours\nflat shading",,\r\n'
    ",orphan prompt,orphan negative,\r\n"
    "Short,just a prompt\r\n"
    "Café,café au lait,,\r\n"
)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def touch_later(path: Path) -> None:
    # Hand edits can land within the file system's timestamp resolution; make the change visible.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


# --- apply_style_text / StyleStore.apply -------------------------------------------------------


def test_placeholder_wraps_the_prompt() -> None:
    assert apply_style_text("photo of {prompt}, 35mm", "a cat") == "photo of a cat, 35mm"
    assert apply_style_text("{prompt} and {prompt}", "x") == "x and x"


def test_without_placeholder_the_style_is_appended() -> None:
    assert apply_style_text("oil painting", "a cat") == "a cat, oil painting"


def test_empty_sides() -> None:
    assert apply_style_text("oil painting", "") == "oil painting"
    assert apply_style_text("", "a cat ") == "a cat "
    assert apply_style_text("", "") == ""
    assert apply_style_text("photo of {prompt}", "") == "photo of "


def test_store_applies_several_styles_in_order_and_ignores_unknown(tmp_path: Path) -> None:
    store = StyleStore(tmp_path / "styles.csv")
    store.save(PromptStyle("Wrap", "photo of {prompt}", "ugly"))
    store.save(PromptStyle("Tail", "4k", "{prompt}, blurry"))
    assert store.apply(["Wrap", "Tail"], "a cat", "") == ("photo of a cat, 4k", "ugly, blurry")
    assert store.apply(["Tail", "Wrap"], "a cat", "") == ("photo of a cat, 4k", ", blurry, ugly")
    assert store.apply(["None", "nope"], "a cat", "bad") == ("a cat", "bad")
    assert store.apply([], "a cat", "bad") == ("a cat", "bad")


# --- reading A1111 files -----------------------------------------------------------------------


def test_reads_a_real_a1111_file(tmp_path: Path) -> None:
    store = StyleStore(write(tmp_path / "styles.csv", A1111_FILE))
    assert store.all() == (
        PromptStyle("None"),
        PromptStyle("Cinematic", 'cinematic still of {prompt}, "film grain", bokeh', "blurry, lowres"),
        PromptStyle("Poster", "bold colours\nflat shading"),
        PromptStyle("Short", "just a prompt"),
        PromptStyle("Café", "café au lait"),
    )
    assert store.names()[0] == "None"
    assert store.get("Poster") == PromptStyle("Poster", "bold colours\nflat shading")
    assert store.get("poster") is None


def test_legacy_text_column_and_comment_rows(tmp_path: Path) -> None:
    store = StyleStore(write(tmp_path / "styles.csv", "name,text\n# a comment,x\nOld,old prompt\n"))
    assert store.all() == (PromptStyle("Old", "old prompt"),)


def test_missing_or_empty_file_means_no_styles(tmp_path: Path) -> None:
    assert StyleStore(tmp_path / "absent.csv").all() == ()
    assert StyleStore(write(tmp_path / "empty.csv", "")).all() == ()
    assert StyleStore(write(tmp_path / "header.csv", "name,prompt,negative_prompt\r\n")).all() == ()


def test_duplicate_names_keep_the_first_place_and_the_last_values(tmp_path: Path) -> None:
    store = StyleStore(write(tmp_path / "styles.csv", "name,prompt\nA,1\nB,2\nA,3\n"))
    assert store.all() == (PromptStyle("A", "3"), PromptStyle("B", "2"))


# --- saving ------------------------------------------------------------------------------------


def test_save_writes_a1111_format(tmp_path: Path) -> None:
    path = tmp_path / "data" / "styles.csv"
    StyleStore(path).save(PromptStyle("Q", 'say "hi", then\nleave', ""))
    assert path.read_bytes() == b'name,prompt,negative_prompt\r\nQ,"say ""hi"", then\nleave",\r\n'


def test_save_adds_and_replaces_keeping_other_rows_and_order(tmp_path: Path) -> None:
    store = StyleStore(write(tmp_path / "styles.csv", A1111_FILE))
    before = store.all()
    store.save(PromptStyle("Poster", "new poster", "neg"))
    store.save(PromptStyle("Added", "added"))
    expected = tuple(PromptStyle("Poster", "new poster", "neg") if s.name == "Poster" else s for s in before)
    assert store.all() == (*expected, PromptStyle("Added", "added"))
    assert StyleStore(store.path).all() == store.all()  # what a fresh reader sees on disk


def test_failed_write_leaves_the_file_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "styles.csv", A1111_FILE)
    store = StyleStore(path)
    before = store.all()

    def refuse(*_args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        store.save(PromptStyle("New", "x"))
    with pytest.raises(OSError, match="disk full"):
        store.delete("Poster")
    assert path.read_bytes() == A1111_FILE.encode("utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["styles.csv"]  # no temp files left
    assert store.all() == before


@pytest.mark.parametrize(
    ("style", "field"),
    [
        (PromptStyle(""), "style_name"),
        (PromptStyle("   "), "style_name"),
        (PromptStyle("two\nlines"), "style_name"),
        (PromptStyle("cr\rname"), "style_name"),
        (PromptStyle("n" * 101), "style_name"),
        (PromptStyle("#comment"), "style_name"),
        (PromptStyle("ok", "p" * 30_001), "style_prompt"),
        (PromptStyle("ok", "", "p" * 30_001), "style_negative_prompt"),
    ],
)
def test_save_validates(tmp_path: Path, style: PromptStyle, field: str) -> None:
    path = tmp_path / "styles.csv"
    with pytest.raises(ValidationError) as info:
        StyleStore(path).save(style)
    assert [e.field for e in info.value.errors] == [field]
    assert not path.exists()


def test_limits_are_inclusive(tmp_path: Path) -> None:
    store = StyleStore(tmp_path / "styles.csv")
    store.save(PromptStyle("n" * 100, "p" * 30_000, "q" * 30_000))
    assert store.names() == ("n" * 100,)


# --- delete, hand edits, broken files ----------------------------------------------------------


def test_delete(tmp_path: Path) -> None:
    store = StyleStore(write(tmp_path / "styles.csv", A1111_FILE))
    assert store.delete("Poster") is True
    assert "Poster" not in store.names()
    assert StyleStore(store.path).names() == ("None", "Cinematic", "Short", "Café")
    stamp = store.path.stat().st_mtime_ns
    assert store.delete("Poster") is False
    assert store.path.stat().st_mtime_ns == stamp  # nothing to delete, nothing written
    assert StyleStore(tmp_path / "absent.csv").delete("x") is False


def test_hand_edits_are_picked_up(tmp_path: Path) -> None:
    store = StyleStore(tmp_path / "styles.csv")
    store.save(PromptStyle("A", "a"))
    assert store.names() == ("A",)
    write(store.path, "name,prompt,negative_prompt\nB,b,\nA,edited,\n")
    touch_later(store.path)
    assert store.all() == (PromptStyle("B", "b"), PromptStyle("A", "edited"))
    store.path.unlink()
    assert store.all() == ()


@pytest.mark.parametrize(
    "content",
    [
        b"name,prompt\n\xff\xfe\x00garbage\x81\n",  # not UTF-8
        b'name,prompt\nA,"unclosed quote\nB,b\n',  # would swallow row B
        b"title,text\nA,a\n",  # no name column
        b"name,prompt\n" + b"A," + b"x" * 200_000 + b"\n",  # beyond the csv field limit
    ],
)
def test_garbled_file_raises_and_is_never_overwritten(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "styles.csv"
    path.write_bytes(content)
    store = StyleStore(path)
    with pytest.raises(ConfigError, match="styles.csv"):
        store.all()
    with pytest.raises(ConfigError):
        store.save(PromptStyle("New", "x"))
    with pytest.raises(ConfigError):
        store.delete("A")
    assert path.read_bytes() == content


def test_a_repaired_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path / "styles.csv", 'name,prompt\nA,"oops\n')
    store = StyleStore(path)
    with pytest.raises(ConfigError):
        store.all()
    write(path, "name,prompt\nA,fixed\n")
    touch_later(path)
    assert store.all() == (PromptStyle("A", "fixed"),)


# --- round trip --------------------------------------------------------------------------------

# Bias towards what breaks CSV (separators, quotes, line breaks) while still covering all of Unicode
# that UTF-8 can encode (lone surrogates cannot be written to any text file).
_char = st.one_of(
    st.sampled_from([",", '"', "'", "\n", "\r", "\r\n", " ", "{prompt}", "\ufeff", "é", "漢", "🎨"]),
    st.characters(exclude_categories=("Cs",)),
)
_text = st.lists(_char, max_size=40).map("".join)
_name = _text.filter(
    lambda s: s.strip() != "" and "\n" not in s and "\r" not in s and not s.startswith("#") and len(s) <= 100
)
_styles = st.lists(st.builds(PromptStyle, _name, _text, _text), max_size=6, unique_by=lambda s: s.name)


@settings(max_examples=200, deadline=None)
@given(_styles)
def test_csv_round_trip(styles: list[PromptStyle]) -> None:
    assert parse_styles_csv(format_styles_csv(styles), Path("styles.csv")) == tuple(styles)


@settings(max_examples=50, deadline=None)
@given(_styles)
def test_store_round_trip(styles: list[PromptStyle]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "styles.csv"
        store = StyleStore(path)
        for style in styles:
            store.save(style)
        assert store.all() == tuple(styles)
        assert StyleStore(path).all() == tuple(styles)
