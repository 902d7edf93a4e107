"""Nothing a client sends can forge a log line: control characters in logged values are escaped.

:func:`printable` is for values the guard logs itself; :class:`EscapingFilter`, installed on the
log handlers by the composition root, escapes every string argument of every record, so a path
with ``%0a`` or a user name with a carriage return cannot start a line of its own in any module's
log.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]")


def printable(text: object, limit: int = 300) -> str:
    """``text`` with control characters (newlines included) written as escapes, cut at ``limit``."""
    value = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))
    return value if len(value) <= limit else value[:limit] + "..."


class EscapingFilter(logging.Filter):
    """Escapes control characters in the string arguments of a record (its message template, the
    program's own text, is left alone)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_escaped(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _escaped(v) for k, v in record.args.items()}
        return True


def _escaped(value: object) -> object:
    # Exceptions too: their messages often quote what a client sent.
    return printable(value, limit=4000) if isinstance(value, (str, BaseException)) else value
