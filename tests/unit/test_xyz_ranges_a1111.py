"""X/Y/Z plot ranges against a restatement of A1111's scripts/xyz_grid.py (v1.10): its regular
expressions and its range / numpy calls, for every input where A1111 gives a usable list."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

FOLDER = Path(__file__).resolve().parents[2] / "extensions" / "xyz_plot"
sys.path.insert(0, str(FOLDER))
try:
    values = importlib.import_module("xyz_values")
finally:
    sys.path.remove(str(FOLDER))

# A1111's patterns, as written there (the float ones match any character where a "." is meant).
RE_RANGE = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\(([+-]\d+)\s*\))?\s*")
RE_RANGE_FLOAT = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\(([+-]\d+(?:.\d*)?)\s*\))?\s*")
RE_RANGE_COUNT = re.compile(r"\s*([+-]?\s*\d+)\s*-\s*([+-]?\s*\d+)(?:\s*\[(\d+)\s*\])?\s*")
RE_RANGE_COUNT_FLOAT = re.compile(r"\s*([+-]?\s*\d+(?:.\d*)?)\s*-\s*([+-]?\s*\d+(?:.\d*)?)(?:\s*\[(\d+(?:.\d*)?)\s*\])?\s*")


def a1111_ints(item: str) -> list[int]:
    m, mc = RE_RANGE.fullmatch(item), RE_RANGE_COUNT.fullmatch(item)
    if m is not None:
        step = int(m.group(3)) if m.group(3) is not None else 1
        return list(range(int(m.group(1)), int(m.group(2)) + 1, step))
    if mc is not None:
        num = int(mc.group(3)) if mc.group(3) is not None else 1
        return [int(x) for x in np.linspace(start=int(mc.group(1)), stop=int(mc.group(2)), num=num).tolist()]
    return [int(item)]


def a1111_floats(item: str) -> list[float]:
    m, mc = RE_RANGE_FLOAT.fullmatch(item), RE_RANGE_COUNT_FLOAT.fullmatch(item)
    if m is not None:
        start, end = float(m.group(1)), float(m.group(2))
        step = float(m.group(3)) if m.group(3) is not None else 1
        return np.arange(start, end + step, step).tolist()
    if mc is not None:
        num = int(mc.group(3)) if mc.group(3) is not None else 1
        return np.linspace(start=float(mc.group(1)), stop=float(mc.group(2)), num=num).tolist()
    return [float(item)]


INTS = ["1-5", "1-5 (+2)", "1-10 (+3)", "10-1 (-3)", "10-2 (-2)", "5-1 (-1)", "-5--1", "-3-3 (+2)", "1-10 [3]",
        "1-10 [4]", "10-1 [4]", "-10-0 [4]", "0-7 [3]", "3-3", "3-3 [5]", "7", "-2", "2-100 (+7)"]
FLOATS = ["1-2 (+0.5)", "0-1 (+0.25)", "1-3", "3-1 (-1)", "2.5-0.5 (-0.5)", "0-1 [5]", "1-2 [3]", "1-0 [3]",
          "0.5-4.5 (+1)", "7.5", "-1.5", "5-7.5 (+1.25)", "0-1 (+0.1)"]


@pytest.mark.parametrize("item", INTS)
def test_whole_number_ranges_match_a1111(item: str) -> None:
    assert values.int_values([item]) == a1111_ints(item)


@pytest.mark.parametrize("item", FLOATS)
def test_decimal_ranges_match_a1111(item: str) -> None:
    assert values.float_values([item]) == a1111_floats(item)


@pytest.mark.parametrize("item", ["5-1", "1-5 (-1)", "1-10 [0]", "3-3 (-1)"])
def test_ranges_a1111_leaves_empty_are_refused_with_the_reason(item: str) -> None:
    assert a1111_ints(item) == []  # A1111 would start a plot with no cells
    with pytest.raises(ValueError, match="no values|at least 1"):
        values.int_values([item])


def test_decimal_ranges_stop_at_their_end_where_a1111_overshoots() -> None:
    assert a1111_floats("1-2 (+0.3)")[-1] > 2  # A1111: 1, 1.3, 1.6, 1.9, 2.2
    assert values.float_values(["1-2 (+0.3)"]) == a1111_floats("1-2 (+0.3)")[:-1]
    with pytest.raises(ValueError, match="no values"):
        values.float_values(["3-1"])  # A1111: numpy.arange(3, 2, 1) is empty
