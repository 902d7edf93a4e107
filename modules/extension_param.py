"""An extension's typed parameters (:class:`Param`): what a job's UI panel or the API's
``alwayson_scripts`` / ``script_args`` give it, checked and converted. Extensions import them from
:mod:`modules.extension_api`, which re-exports this module's names."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class ParamKind(enum.Enum):
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    CHOICE = "choice"
    UPSCALER = "upscaler"  # a name from Host.upscaler_names(), or its index there
    NOTE = "note"  # a text the UI shows; it carries no value
    TEXTS = "texts"  # a list of texts (A1111's multi-select dropdowns)
    OBJECT = "object"  # v2: a JSON value the extension checks itself (a ControlNet unit)


@dataclass(frozen=True)
class Param:
    """One value an extension takes from a job, by name: from its UI panel or the API's
    ``alwayson_scripts`` / ``script_args``. Values are checked and converted with :meth:`coerce`."""

    name: str
    kind: ParamKind
    default: Any
    label: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    lines: int = 1  # text boxes: how many lines the UI shows
    # Choices: a list whose positions clients may send instead of a name (A1111's index dropdowns,
    # e.g. the X/Y/Z plot's axis types); its names pass too, for the extension to judge.
    indexed: tuple[str, ...] = ()
    # OBJECT: value -> the checked plain JSON value (dicts, lists, texts, numbers); ValueError says why not.
    check: Callable[[Any], Any] | None = field(default=None, compare=False)
    # OBJECT: whether a checked value asks the extension to act (a ControlNet unit that is enabled);
    # None: any value but the default does. A job on a remote model refuses parameters that act.
    active: Callable[[Any], bool] | None = field(default=None, compare=False)

    @staticmethod
    def bool(name: str, default: bool = False, label: str = "") -> Param:
        return Param(name, ParamKind.BOOL, default, label)

    @staticmethod
    def int(name: str, default: int = 0, label: str = "", minimum: float | None = None,
            maximum: float | None = None) -> Param:
        return Param(name, ParamKind.INT, default, label, minimum=minimum, maximum=maximum)

    @staticmethod
    def float(name: str, default: float = 0.0, label: str = "", minimum: float | None = None,
              maximum: float | None = None) -> Param:
        return Param(name, ParamKind.FLOAT, default, label, minimum=minimum, maximum=maximum)

    @staticmethod
    def text(name: str, default: str = "", label: str = "", lines: int = 1) -> Param:
        return Param(name, ParamKind.TEXT, default, label, lines=lines)

    @staticmethod
    def choice(name: str, choices: Sequence[str], default: str | None = None, label: str = "",
               indexed: Sequence[str] = ()) -> Param:
        return Param(name, ParamKind.CHOICE, default if default is not None else choices[0], label,
                     choices=tuple(choices), indexed=tuple(indexed))

    @staticmethod
    def texts(name: str, label: str = "") -> Param:
        """A list of texts (``[]`` by default), as A1111's multi-select dropdowns send them."""
        return Param(name, ParamKind.TEXTS, (), label)

    @staticmethod
    def upscaler(name: str, default: str = "None", label: str = "") -> Param:
        """An upscaler of :meth:`Host.upscaler_names`, by name or, as A1111's UI sends it, by its index
        in that list. The list is the server's (model files come and go), so the value is only checked
        for its form here; turn it into a name with :func:`find_upscaler_name`. The UI shows a dropdown."""
        return Param(name, ParamKind.UPSCALER, default, label)

    @staticmethod
    def object(name: str, check: Callable[[Any], Any], label: str = "",
               active: Callable[[Any], bool] | None = None) -> Param:
        """v2: a JSON value (an object, a list ...) that ``check`` validates and normalises to plain
        JSON values (it travels in the job, to remote workers too); None (not sent) stays None.
        ``active(checked value)``: whether it asks the extension to act (None: any value but None does)."""
        return Param(name, ParamKind.OBJECT, None, label, check=check, active=active)

    def acts(self, value: Any) -> bool:
        """Whether a checked ``value`` of this parameter asks its extension to do anything."""
        if self.kind is ParamKind.NOTE:
            return False
        if self.active is not None:
            return bool(self.active(value))
        return value != self.default

    @staticmethod
    def note(name: str, text: str) -> Param:
        """A text the UI shows (A1111 scripts' info labels). It holds the label's place in A1111's
        positional ``script_args``, so clients' lists line up: any value sent there is accepted and
        the value seen is always ``text``."""
        return Param(name, ParamKind.NOTE, text, text)

    def coerce(self, value: Any) -> Any:
        """``value`` as this parameter's type; ValueError with a reason a user understands."""
        if value is None or self.kind is ParamKind.NOTE:
            return self.default
        if self.kind is ParamKind.UPSCALER:
            return self._upscaler(value)
        if self.kind is ParamKind.OBJECT:
            assert self.check is not None
            return self.check(value)
        if self.kind is ParamKind.BOOL:
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
                return value.strip().lower() in ("true", "1")
            if not isinstance(value, (bool, int)) or value not in (0, 1, True, False):
                raise ValueError(f"must be true or false, got {value!r}")
            return bool(value)
        if self.kind in (ParamKind.INT, ParamKind.FLOAT):
            return self._number(value)
        if self.kind is ParamKind.CHOICE:
            return self._choice(value)
        if self.kind is ParamKind.TEXTS:
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"must be a list of texts, got {value!r}")
            return tuple(value)
        if not isinstance(value, str):
            raise ValueError(f"must be text, got {value!r}")
        return value

    def _choice(self, value: Any) -> str:
        if self.indexed and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not float(value).is_integer() or not 0 <= value < len(self.indexed):
                raise ValueError(f"must be a name or a position from 0 to {len(self.indexed) - 1}, got {value!r}")
            return self.indexed[int(value)]
        if value not in self.choices and value not in self.indexed:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
        return value

    @staticmethod
    def _upscaler(value: Any) -> str | int:
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() and value >= 0:
            return int(value)
        raise ValueError(f"must be an upscaler's name or its index in the upscaler list, got {value!r}")

    def _number(self, value: Any) -> int | float:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"must be a number, got {value!r}")
        if self.kind is ParamKind.INT:
            if not number.is_integer():
                raise ValueError(f"must be a whole number, got {value!r}")
            number = int(number)
        if self.minimum is not None and number < self.minimum or self.maximum is not None and number > self.maximum:
            raise ValueError(f"must be {self.range_text()}, got {value!r}")
        return number

    def range_text(self) -> str:
        """The range a number must be in, as the UI and a refusal state it ("" when it has none)."""
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum:g} and {self.maximum:g}"
        if self.minimum is not None:
            return f"at least {self.minimum:g}"
        return f"at most {self.maximum:g}" if self.maximum is not None else ""


# --- the host: what an extension may ask of Atelier ---------------------------------------------


def find_upscaler_name(value: str | int, names: Sequence[str]) -> str | None:
    """The upscaler among ``names`` (:meth:`Host.upscaler_names`) that a :meth:`Param.upscaler` value
    means: a name in any case, or an index into ``names``; None when it means none."""
    if isinstance(value, int):
        return names[value] if 0 <= value < len(names) else None
    return next((name for name in names if name.lower() == value.strip().lower()), None)
