"""A1111's prompt language: emphasis, escapes, editing, alternation, BREAK and AND."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.prompt_parser import ScheduledText, parse_attention, schedule, split_and


@pytest.mark.parametrize("text, expected", [
    ("a cat", [("a cat", 1.0)]),
    ("(cat)", [("cat", 1.1)]),
    ("((cat))", [("cat", pytest.approx(1.21))]),
    ("[cat]", [("cat", pytest.approx(1 / 1.1))]),
    ("(cat:1.5)", [("cat", 1.5)]),
    ("a (b:0.5) c", [("a ", 1.0), ("b", 0.5), (" c", 1.0)]),
    ("((a) b:1.5)", [("a", pytest.approx(1.65)), (" b", 1.5)]),
    ("\\(literal\\) \\[x\\]", [("(literal) [x]", 1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("", [("", 1.0)]),
])
def test_emphasis(text: str, expected: list) -> None:
    assert parse_attention(text) == expected


def test_unbalanced_brackets_degrade_like_a1111() -> None:
    assert parse_attention("(unclosed") == [("unclosed", pytest.approx(1.1))]
    assert parse_attention("closed) only") == [("closed) only", 1.0)]
    assert parse_attention("a:b") == [("a:b", 1.0)]


def texts(entries: list[ScheduledText]) -> list[tuple[int, str]]:
    return [(e.end_at_step, e.text) for e in entries]


def test_prompt_editing_switches_at_a_step_or_a_fraction() -> None:
    assert texts(schedule("a [cat:dog:0.5]", 10)) == [(5, "a cat"), (10, "a dog")]
    assert texts(schedule("a [cat:dog:3]", 10)) == [(3, "a cat"), (10, "a dog")]
    assert texts(schedule("[tree::4] house", 10)) == [(4, "tree house"), (10, " house")]
    assert texts(schedule("house [sun:7]", 10)) == [(7, "house "), (10, "house sun")]


def test_nesting_and_emphasis_pass_through() -> None:
    assert texts(schedule("[(red:1.2) [cat:fox:2]:dog:4]", 6)) == [
        (2, "(red:1.2) cat"), (4, "(red:1.2) fox"), (6, "dog")]


def test_alternation_changes_every_step() -> None:
    assert [t for _, t in texts(schedule("[cat|dog|bird]", 5))] == ["cat", "dog", "bird", "cat", "dog"]


def test_malformed_editing_is_literal_text() -> None:
    assert texts(schedule("a [b:c", 10)) == [(10, "a [b:c")]
    assert texts(schedule("plain", 10)) == [(10, "plain")]


def test_and_with_weights() -> None:
    assert split_and("a cat AND a dog :0.5") == [("a cat ", 1.0), (" a dog", 0.5)]
    assert split_and("ANDROID robot") == [("ANDROID robot", 1.0)]  # only the whole word splits


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab ()[]:|\\,.0123456789ANDBREK")), max_size=40), st.integers(1, 30))
def test_any_text_parses_without_error(text: str, steps: int) -> None:
    entries = schedule(text, steps)
    assert entries and entries[-1].end_at_step == steps
    for entry in entries:
        assert parse_attention(entry.text)
    assert split_and(text)


def test_token_counter_counts_like_the_encoder_chunks() -> None:
    from modules.engine.token_count import count_tokens

    assert str(count_tokens("a photo of a cat")) == "5/75"
    assert str(count_tokens(" ".join(["word"] * 80))) == "80/150"
    assert str(count_tokens("a BREAK b")) == "76/150"
    assert str(count_tokens("short AND " + " ".join(["word"] * 100))) == "100/150"
    assert str(count_tokens("")) == "0/75"
