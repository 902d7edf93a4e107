"""Reading X/Y/Z plot value lists the way A1111 users type them.

A list is comma-separated, CSV style, so a value holding a comma is written in double quotes
(``"a, b", c``); newlines separate values too. Number axes also take ranges: ``1-5`` (every whole
number), ``1-10 (+2)`` (a step), ``1-10 [3]`` (that many values spread evenly, ends included), and
the same with decimals on float axes. Unlike A1111, a range runs downwards when its end is below
its start (``5-1``), and a step range always includes an end it lands on exactly.

Pure Python with no Atelier imports, so it is easy to test on its own. Errors are ValueError with a
message fit to show the user; the script turns them into a ValidationError naming the field.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable

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


def _int_range(match: re.Match[str], item: str) -> list[int]:
    start, end = int(_number(match.group(1))), int(_number(match.group(2)))
    if match.group(4) is not None:
        return [int(round(v, 9)) for v in _spread(float(start), float(end), int(match.group(4)), item)]
    step = int(_number(match.group(3))) if match.group(3) is not None else (1 if end >= start else -1)
    if step == 0 or (end - start) * step < 0:
        raise ValueError(f"{item!r}: the step must go from the start towards the end")
    count = (end - start) // step + 1
    _check_count(count, item)
    return [start + i * step for i in range(count)]


def _float_range(match: re.Match[str], item: str) -> list[float]:
    start, end = float(_number(match.group(1))), float(_number(match.group(2)))
    if match.group(4) is not None:
        return _spread(start, end, int(match.group(4)), item)
    step = float(_number(match.group(3))) if match.group(3) is not None else (1.0 if end >= start else -1.0)
    if step == 0 or (end - start) * step < 0:
        raise ValueError(f"{item!r}: the step must go from the start towards the end")
    # The small allowance keeps an end that the step reaches up to rounding (0.1 steps and the like).
    count = math.floor((end - start) / step + 1e-9) + 1
    _check_count(count, item)
    return [round(start + i * step, 10) for i in range(count)]


def _spread(start: float, end: float, count: int, item: str) -> list[float]:
    if count < 1:
        raise ValueError(f"{item!r}: the count in [...] must be at least 1")
    _check_count(count, item)
    if count == 1:
        return [start]
    return [round(start + (end - start) * i / (count - 1), 10) for i in range(count)]


def int_values(items: Iterable[str]) -> list[int]:
    """Whole numbers and integer ranges. A1111 truncates spread values (``1-10 [3]`` is 1, 5, 10)."""
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
