"""A1111 options Atelier has no use for, kept as clients sent them.

Clients written for A1111 send its whole options object back (``POST /sdapi/v1/options`` with every
key ``GET`` gave them, or their own). Keys Atelier does not know are stored under ``a1111_extra:`` in
config.yaml and echoed by ``GET``; they change nothing. Values must be plain JSON and small: the
limits below keep a hostile client from filling the disk or the server's memory, or from nesting
deeply enough to break a parser.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

MAX_KEYS = 1024  # A1111 has about 500 options; a client may send them all back
MAX_KEY_CHARS = 100
MAX_TEXT_CHARS = 4096
MAX_ITEMS = 256  # in one list or object value
MAX_DEPTH = 4  # a value nested in at most this many lists/objects
MAX_TOTAL_BYTES = 256 * 1024


def _value_problem(value: object, depth: int) -> str | None:
    if value is None or isinstance(value, bool) or isinstance(value, int) and abs(value) < 2 ** 63:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"must be a finite number, got {value!r}"
    if isinstance(value, str):
        return None if len(value) <= MAX_TEXT_CHARS and _utf8(value) else \
            f"text must be UTF-8 of at most {MAX_TEXT_CHARS} characters"
    if isinstance(value, (list, tuple, dict)):
        if depth >= MAX_DEPTH:
            return f"must not nest lists or objects more than {MAX_DEPTH} deep"
        if len(value) > MAX_ITEMS:
            return f"a list or object must hold at most {MAX_ITEMS} items"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict) and key_problem(key) is not None:
                return f"object keys must be text of at most {MAX_KEY_CHARS} characters"
            problem = _value_problem(item, depth + 1)
            if problem is not None:
                return problem
        return None
    return f"must be plain JSON (text, number, true/false, null, list or object), got {type(value).__name__}"


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")  # a lone surrogate could not be written to config.yaml
    except UnicodeEncodeError:
        return False
    return True


def extra_value_problem(value: object) -> str | None:
    """Why ``value`` cannot be kept as one unused A1111 option; None when it can."""
    return _value_problem(value, 0)


def key_problem(key: object) -> str | None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_CHARS or not key.isprintable() or not _utf8(key):
        return f"must be a printable option name of at most {MAX_KEY_CHARS} characters"
    return None


def extras_problem(value: object) -> str | None:
    """Why ``value`` cannot be the whole ``a1111_extra`` mapping; None when it can."""
    if not isinstance(value, Mapping):
        return f"must be a mapping of A1111 option names to values, got {value!r:.60}"
    if len(value) > MAX_KEYS:
        return f"must hold at most {MAX_KEYS} options, got {len(value)}"
    for key, item in value.items():
        problem = key_problem(key) or extra_value_problem(item)
        if problem is not None:
            return f"{str(key)[:MAX_KEY_CHARS]!r} {problem}"
    size = len(json.dumps(value, ensure_ascii=False).encode("utf-8", errors="replace"))
    if size > MAX_TOTAL_BYTES:
        return f"must take at most {MAX_TOTAL_BYTES} bytes as JSON, got {size}"
    return None
