"""Reading X/Y/Z plot value lists the way A1111 users type them.

A list is comma-separated, CSV style, so a value holding a comma is written in double quotes
(``"a, b", c``); newlines separate values too. Number axes also take ranges, read as A1111's
scripts/xyz_grid.py reads them:

- whole numbers: ``1-5`` is ``range(1, 5 + 1)``; ``1-10 (+2)`` is ``range(1, 10 + 1, 2)``, and with a
  negative step ``10-1 (-3)`` is ``range(10, 1 + 1, -3)`` = 10, 7, 4 (a downward range stops before
  end + 1); ``1-10 [3]`` is ``numpy.linspace(1, 10, 3)`` truncated to whole numbers (1, 5, 10);
- decimals: ``1-2 (+0.5)`` is ``numpy.arange(1, 2 + 0.5, 0.5)``; ``1-3`` steps by 1; ``0-1 [5]`` is
  ``numpy.linspace(0, 1, 5)``.

Where A1111's result is empty or broken, the range is refused with the reason instead: a range
with no values (``5-1``: A1111 counts up only, unless given a negative step), a zero step, a count
of 0. One deliberate difference: A1111's decimal ranges can overshoot their end (``1-2 (+0.3)``
gives 2.2 there); values past the end are left out here. A step may also be written without its
sign (``(2)``), which A1111 does not read.

Pure Python with no Atelier imports, so it is easy to test on its own. Errors are ValueError with a
message fit to show the user; the script turns them into a ValidationError naming the field.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable

import numpy as np

MAX_VALUES = 1000  # per axis: a typo such as 1-100000 must not build a list of a hundred thousand cells

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"


def _range_pattern(number: str) -> re.Pattern[str]:
    # start - end, then optionally "(+step)" or "[count]"
    return re.compile(rf"\s*({number})\s*-\s*({number})\s*(?:\(\s*({number})\s*\)|\[\s*(\d+)\s*\])?\s*")


_INT_RANGE = _range_pattern(_INT)
_FLOAT_RANGE = _range_pattern(_FLOAT)


def split_values(text: str, keep_blank: bool = False) -> list[str]:
    """The values of a comma-separated list, stripped; blank ones left out unless ``keep_blank``."""
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    except csv.Error as exc:
        raise ValueError(f"cannot read the list ({exc}); put values with commas in double quotes") from None
    values = [value.strip() for row in rows for value in row]
    return values if keep_blank else [value for value in values if value]


def _number(text: str) -> str:
    return re.sub(r"\s+", "", text)  # "+ 2" and "- 5" are allowed, as A1111 allows them


def _check_count(count: int, item: str) -> None:
    if count > MAX_VALUES:
        raise ValueError(f"{item!r} gives {count} values; an axis takes at most {MAX_VALUES}")


def _empty(item: str, values: list) -> None:
    if not values:
        raise ValueError(f"{item!r} gives no values: a range counts up from its start to its end unless its step "
                         "is negative, e.g. '10-1 (-3)' is 10, 7, 4 (as in A1111, counting down stops before "
                         "end + 1)")


def _count(text: str, item: str) -> int:
    count = int(text)
    if count < 1:
        raise ValueError(f"{item!r}: the count in [...] must be at least 1")
    _check_count(count, item)
    return count


def _int_range(match: re.Match[str], item: str) -> list[int]:
    start, end = int(_number(match.group(1))), int(_number(match.group(2)))
    if match.group(4) is not None:  # A1111: numpy.linspace, each value truncated by int()
        return [int(value) for value in np.linspace(start, end, _count(match.group(4), item)).tolist()]
    step = int(_number(match.group(3))) if match.group(3) is not None else 1
    if step == 0:
        raise ValueError(f"{item!r}: the step must not be 0")
    found = range(start, end + 1, step)  # A1111's, end + 1 even when counting down
    _check_count(len(found), item)
    _empty(item, list(found))
    return list(found)


def _float_range(match: re.Match[str], item: str) -> list[float]:
    start, end = float(_number(match.group(1))), float(_number(match.group(2)))
    if match.group(4) is not None:
        return list(np.linspace(start, end, _count(match.group(4), item)).tolist())
    step = float(_number(match.group(3))) if match.group(3) is not None else 1.0
    if step == 0 or not math.isfinite(step) or not math.isfinite(start) or not math.isfinite(end):
        raise ValueError(f"{item!r}: the step must not be 0")
    _check_count(math.ceil((end + step - start) / step), item)
    # A1111's numpy.arange(start, end + step, step), less values past the end (rounding aside).
    allowance = abs(step) * 1e-9
    found = [value for value in np.arange(start, end + step, step).tolist() if (value - end) * step <= allowance]
    _empty(item, found)
    return found


def int_values(items: Iterable[str]) -> list[int]:
    """Whole numbers and integer ranges, as A1111 reads them."""
    result: list[int] = []
    for item in items:
        match = _INT_RANGE.fullmatch(item)
        if match is not None:
            result += _int_range(match, item)
        else:
            try:
                result.append(int(_number(item)))
            except ValueError:
                raise ValueError(f"{item!r} is not a whole number or a range such as 1-5") from None
        _check_count(len(result), "the list")
    return result


def float_values(items: Iterable[str]) -> list[float]:
    """Numbers and decimal ranges."""
    result: list[float] = []
    for item in items:
        match = _FLOAT_RANGE.fullmatch(item)
        result += _float_range(match, item) if match is not None else [_float(item)]
        _check_count(len(result), "the list")
    return result


def _float(item: str) -> float:
    try:
        number = float(_number(item))
    except ValueError:
        raise ValueError(f"{item!r} is not a number or a range such as 1-2 (+0.5)") from None
    if not math.isfinite(number):
        raise ValueError(f"{item!r} is not a finite number")
    return number


def show_number(value: int | float) -> str:
    """A number as a label shows it: 7.0 as ``7``, 7.5 as ``7.5``, no float noise."""
    if isinstance(value, int):
        return str(value)
    rounded = round(value, 8)
    return str(int(rounded)) if rounded.is_integer() else repr(rounded)
