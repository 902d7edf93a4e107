"""A job's spec as JSON, and back: how the job store keeps requests (never pickle).

:func:`encode_spec` writes a :class:`GenerationRequest` (or an :class:`ExtrasJob`) as a JSON object
tagged with its type and the format's version; :func:`decode_spec` reads it back into an equal,
frozen request, checking every field's type against the dataclass, so a damaged or hand-edited
row is refused with a ValueError naming the field rather than run.

The dataclasses' own type hints drive both ways: enums travel as their values, tuples and
frozensets as lists, bytes as ``{"b64": "..."}``, nested dataclasses as objects of their fields.
Inside ``Any`` (extensions' parameters) values must be JSON-like: bytes there are tagged the same
way, tuples as ``{"tuple": [...]}`` (so they come back as tuples, not lists), and a mapping whose
only key is one of those tags is wrapped in ``{"map": ...}`` so no value is ever mistaken for a tag.
Typed mappings come back read-only, as the generation front makes them. A field missing from a stored row takes its
default (a row written before the field existed); a field the dataclass does not have is refused.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Any

from modules.params import GenerationRequest
from modules.services.job_types import ExtrasJob, JobSpec

FORMAT_VERSION = 1
MAX_DEPTH = 32  # nesting a spec never needs; deeper input is refused, not recursed into
_TYPES: Mapping[str, type] = types.MappingProxyType({"generation": GenerationRequest, "extras": ExtrasJob})
_TAGS = ("b64", "map", "tuple")  # single-key objects that carry a value inside Any


def encode_spec(spec: JobSpec) -> str:
    """``spec`` as compact JSON (bytes fields base64); ValueError for a spec that is not stored."""
    tag = next((name for name, cls in _TYPES.items() if type(spec) is cls), None)
    if tag is None:
        raise ValueError(f"a {type(spec).__name__} job is not stored")
    body = _encode_dataclass(spec, type(spec), "spec", 0)
    return json.dumps({"type": tag, "version": FORMAT_VERSION, "spec": body}, separators=(",", ":"))


def decode_spec(text: str) -> JobSpec:
    """The spec :func:`encode_spec` wrote; ValueError naming what is wrong with a bad one."""
    try:
        data = json.loads(text)
    except RecursionError as exc:
        raise ValueError("the stored request is nested too deeply") from exc
    except (TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the stored request is not JSON: {exc}") from exc
    if not isinstance(data, dict) or set(data) != {"type", "version", "spec"}:
        raise ValueError("the stored request is not an object of type, version and spec")
    if data["version"] != FORMAT_VERSION or isinstance(data["version"], bool):
        raise ValueError(f"the stored request has format version {data['version']!r}; this Atelier reads "
                         f"{FORMAT_VERSION}")
    cls = _TYPES.get(data["type"]) if isinstance(data["type"], str) else None
    if cls is None:
        raise ValueError(f"the stored request has an unknown type {data['type']!r}")
    try:
        return _decode_dataclass(data["spec"], cls, "spec", 0)
    except RecursionError as exc:
        raise ValueError("the stored request is nested too deeply") from exc


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    return tuple(f for f in dataclasses.fields(cls) if f.init)


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(hint)
    return typing.get_args(hint) if origin is typing.Union or origin is types.UnionType else None


# --- encoding -----------------------------------------------------------------------------------


def _encode_dataclass(value: Any, cls: type, path: str, depth: int) -> dict[str, Any]:
    hints = _hints(cls)
    return {f.name: _encode(getattr(value, f.name), hints[f.name], f"{path}.{f.name}", depth + 1)
            for f in _fields(cls)}


def _encode(value: Any, hint: Any, path: str, depth: int) -> Any:  # noqa: C901 - one branch per kind of type
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: nested too deeply")
    if hint is Any:
        return _encode_any(value, path, depth)
    args = _union_args(hint)
    if args is not None:
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None) and _matches(value, arg):
                return _encode(value, arg, path, depth)
        raise ValueError(f"{path}: {type(value).__name__} is none of {hint}")
    if not _matches(value, hint):
        raise ValueError(f"{path}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}")
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value.value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _encode_dataclass(value, hint, path, depth)
    if hint is bytes:
        return {"b64": base64.b64encode(value).decode("ascii")}
    if origin is tuple:
        item_hints = [params[0]] * len(value) if len(params) == 2 and params[1] is Ellipsis else list(params)
        return [_encode(v, h, f"{path}[{i}]", depth + 1) for i, (v, h) in enumerate(zip(value, item_hints))]
    if origin is frozenset:
        return sorted(_encode(v, params[0], f"{path}[]", depth + 1) for v in value)
    if origin is Mapping or origin is dict:
        return {k: _encode(v, params[1], f"{path}[{k!r}]", depth + 1) for k, v in value.items()}
    return value  # str, int, float, bool


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of type ``hint`` (the outer type; items are checked as they are encoded)."""
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is tuple:
        fixed = not (len(params) == 2 and params[1] is Ellipsis)
        return isinstance(value, tuple) and (not fixed or len(value) == len(params))
    if origin is frozenset:
        return isinstance(value, frozenset)
    if origin is Mapping or origin is dict:
        return isinstance(value, Mapping) and all(isinstance(k, str) for k in value)
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise ValueError(f"type {hint} is not stored")


def _encode_any(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: nested too deeply")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray)):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        items = [_encode_any(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        return {"tuple": items} if isinstance(value, tuple) else items
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"{path}: mapping keys must be strings")
        encoded = {k: _encode_any(v, f"{path}[{k!r}]", depth + 1) for k, v in value.items()}
        return {"map": encoded} if len(encoded) == 1 and next(iter(encoded)) in _TAGS else encoded
    raise ValueError(f"{path}: a {type(value).__name__} cannot be stored (plain values, lists, mappings, bytes)")


# --- decoding -----------------------------------------------------------------------------------


def _decode_dataclass(data: Any, cls: type, path: str, depth: int) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object, got {type(data).__name__}")
    known = {f.name: f for f in _fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown field {unknown[0]!r}")
    hints = _hints(cls)
    values = {name: _decode(data[name], hints[name], f"{path}.{name}", depth + 1) for name in data}
    missing = [name for name, f in known.items() if name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{path}.{missing[0]}: missing")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _decode(data: Any, hint: Any, path: str, depth: int) -> Any:  # noqa: C901 - one branch per kind of type
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: nested too deeply")
    if hint is Any:
        return _decode_any(data, path, depth)
    args = _union_args(hint)
    if args is not None:
        if data is None and type(None) in args:
            return None
        problems = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _decode(data, arg, path, depth)
            except ValueError as exc:
                problems.append(str(exc))
        raise ValueError(problems[0] if len(problems) == 1 else f"{path}: matches none of {hint}")
    origin, params = typing.get_origin(hint), typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _decode_enum(data, hint, path)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _decode_dataclass(data, hint, path, depth)
    if hint is bytes:
        return _decode_bytes(data, path)
    if origin is tuple:
        _expect(isinstance(data, list), path, "a list", data)
        variadic = len(params) == 2 and params[1] is Ellipsis
        if not variadic and len(data) != len(params):
            raise ValueError(f"{path}: expected {len(params)} items, got {len(data)}")
        item_hints = [params[0]] * len(data) if variadic else list(params)
        return tuple(_decode(v, h, f"{path}[{i}]", depth + 1) for i, (v, h) in enumerate(zip(data, item_hints)))
    if origin is frozenset:
        _expect(isinstance(data, list), path, "a list", data)
        return frozenset(_decode(v, params[0], f"{path}[{i}]", depth + 1) for i, v in enumerate(data))
    if origin is Mapping or origin is dict:
        _expect(isinstance(data, dict), path, "an object", data)
        return types.MappingProxyType({k: _decode(v, params[1], f"{path}[{k!r}]", depth + 1)
                                       for k, v in data.items()})
    return _decode_scalar(data, hint, path)


def _decode_scalar(data: Any, hint: Any, path: str) -> Any:
    if hint is bool:
        _expect(isinstance(data, bool), path, "true or false", data)
    elif hint is int:
        _expect(isinstance(data, int) and not isinstance(data, bool), path, "a whole number", data)
    elif hint is float:
        _expect(isinstance(data, (int, float)) and not isinstance(data, bool), path, "a number", data)
        return float(data)
    elif hint is str:
        _expect(isinstance(data, str), path, "a string", data)
    else:
        raise ValueError(f"{path}: type {hint} is not stored")
    return data


def _decode_enum(data: Any, cls: type[enum.Enum], path: str) -> enum.Enum:
    if isinstance(data, bool) or not isinstance(data, (str, int, float)):
        raise ValueError(f"{path}: expected one of {[m.value for m in cls]}, got {type(data).__name__}")
    try:
        return cls(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: expected one of {[m.value for m in cls]}, got {data!r}") from exc


def _decode_bytes(data: Any, path: str) -> bytes:
    if not (isinstance(data, dict) and set(data) == {"b64"} and isinstance(data["b64"], str)):
        raise ValueError(f"{path}: expected {{\"b64\": ...}}, got {type(data).__name__}")
    try:
        return base64.b64decode(data["b64"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{path}: not valid base64 ({exc})") from exc


def _decode_any(data: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [_decode_any(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(data)]
    if isinstance(data, dict):
        if set(data) == {"b64"}:
            return _decode_bytes(data, path)
        if set(data) == {"tuple"}:
            _expect(isinstance(data["tuple"], list), path, "a list inside tuple", data["tuple"])
            return tuple(_decode_any(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(data["tuple"]))
        if set(data) == {"map"}:
            _expect(isinstance(data["map"], dict), path, "an object inside map", data["map"])
            data = data["map"]
        return {k: _decode_any(v, f"{path}[{k!r}]", depth + 1) for k, v in data.items()}
    raise ValueError(f"{path}: unexpected {type(data).__name__}")


def _expect(ok: bool, path: str, what: str, data: Any) -> None:
    if not ok:
        raise ValueError(f"{path}: expected {what}, got {type(data).__name__}")
