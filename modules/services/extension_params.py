"""Checking the values a job or a script run sends an extension, against the params it declared.

Values travel by name (``{"strength": 0.5}``) or, as A1111's ``alwayson_scripts`` / ``script_args``
send them, as a positional list taken in the declared order. Every problem becomes a
:class:`FieldError` naming where the value came from, so a client sees them all at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from modules.errors import FieldError
from modules.extension_api import Param


def checked_values(params: Sequence[Param], values: Mapping[str, Any] | list[Any], where: str,
                   errors: list[FieldError]) -> dict[str, Any]:
    """Values by name, each converted by its param; problems are added to ``errors``."""
    if isinstance(values, (list, tuple)):
        if len(values) > len(params):
            errors.append(FieldError(where, f"takes at most {len(params)} values, got {len(values)}"))
            return {}
        values = {p.name: v for p, v in zip(params, values)}
    if not isinstance(values, Mapping):
        errors.append(FieldError(where, "must be a list of values or an object of name: value"))
        return {}
    known = {p.name: p for p in params}
    result: dict[str, Any] = {}
    for key, value in values.items():
        param = known.get(key)
        if param is None:
            errors.append(FieldError(f"{where}.{key}", f"unknown parameter; known: {', '.join(known) or 'none'}"))
            continue
        try:
            result[key] = param.coerce(value)
        except ValueError as exc:
            errors.append(FieldError(f"{where}.{key}", str(exc)))
    return result
