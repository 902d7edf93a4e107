"""Prompt editing scheduled as A1111 v1.10 schedules it (its default, "new" scheduling), in the
first pass and in hires fix's second pass, checked against a restatement of A1111's formula."""

from __future__ import annotations

import pytest

from modules.prompt_parser import has_brackets, schedule, uses_weights


def a1111_switch(number: str, steps: int, base_steps: int | None = None) -> int:
    """A1111's get_learned_conditioning_prompt_schedules for one ``[a:b:N]``: with hires steps the
    offsets are the first pass's steps (whole numbers) and 1.0 (numbers written with a ".")."""
    int_offset, flt_offset = (0, 0.0) if base_steps is None else (base_steps, 1.0)
    value = float(number)
    value = (value - flt_offset) * steps if "." in number else value - int_offset
    return min(steps, int(value))


def a1111_schedule(number: str, steps: int, base_steps: int | None = None) -> list[tuple[int, str]]:
    """The schedule A1111 gives ``"[cat:dog:N]"``: a switch counts only at step 1 or later."""
    switch = a1111_switch(number, steps, base_steps)
    ends = sorted({steps} | ({switch} if switch >= 1 else set()))
    return [(end, "cat" if end <= switch else "dog") for end in ends]


def pairs(text: str, steps: int, hires_base: int | None = None) -> list[tuple[int, str]]:
    return [(entry.end_at_step, entry.text) for entry in schedule(text, steps, hires_base)]


NUMBERS = ["0.5", ".25", "1.0", "1", "3", "0", "1.5", "1.75", "2.0", "12", "25", "0.0", "-1", "40"]


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize("steps", [1, 7, 20, 40])
def test_first_pass_switches_where_a1111_does(number: str, steps: int) -> None:
    assert pairs(f"[cat:dog:{number}]", steps) == a1111_schedule(number, steps)


@pytest.mark.parametrize("number", NUMBERS)
@pytest.mark.parametrize(("base", "hires"), [(20, 10), (20, 20), (40, 16), (12, 5)])
def test_hires_pass_counts_on_from_the_first_pass(number: str, base: int, hires: int) -> None:
    assert pairs(f"[cat:dog:{number}]", hires, base) == a1111_schedule(number, hires, base)


def test_hires_examples_read_as_users_expect() -> None:
    # A fraction below 1 has passed before the second pass starts; 1.5 is half of that pass.
    assert pairs("a [b:.5] c", 10, 10) == [(10, "a b c")]
    assert pairs("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    # A step count goes on from the first pass: step 25 of 20 + 10 is step 5 of the second pass.
    assert pairs("[cat:dog:25]", 10, 20) == [(5, "cat"), (10, "dog")]
    # Without hires fix, "1.0" is the whole run and "1" the first step (A1111's new scheduling).
    assert pairs("[cat:dog:1.0]", 10) == [(10, "cat")]
    assert pairs("[cat:dog:1]", 10) == [(1, "cat"), (10, "dog")]


def test_several_edits_in_one_prompt_in_the_hires_pass() -> None:
    text = "[red:blue:1.5] [small:big:23] [square::0.2]"
    # red->blue at (1.5-1)*10 = 5; small->big at 23-20 = 3; "square" removed before the pass (0.2 < 1).
    assert pairs(text, 10, 20) == [(3, "red small "), (5, "red big "), (10, "blue big ")]


def test_brackets_and_weights_as_a1111_notes_the_emphasis_mode() -> None:
    assert has_brackets("a (cat)", 20) and has_brackets("a [cat]", 20)
    assert not has_brackets("a [cat:dog:5]", 20)  # editing leaves plain texts
    assert not has_brackets("[cat|dog]", 20)
    assert uses_weights("a (cat:1.2)") and uses_weights("plain", "[ugly]")
    assert not uses_weights("a cat BREAK a dog", "(cat:1)")
