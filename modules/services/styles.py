"""Prompt styles: named prompt fragments kept in an A1111-compatible ``styles.csv``.

The file is the single source of truth. Users edit it by hand and copy it between installs, so
it is re-read whenever its modification time or size changes, written in exactly A1111's format
(``name,prompt,negative_prompt`` via the ``csv`` module), and never overwritten when it could not
be parsed: a typo in a hand-edited file must not cost the user their styles.
"""

from __future__ import annotations

import csv
import io
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modules.atomic import write_text_atomic
from modules.errors import ConfigError, FieldError, ValidationError

FIELDNAMES = ("name", "prompt", "negative_prompt")
PROMPT_PLACEHOLDER = "{prompt}"
MAX_NAME_LENGTH = 100
MAX_PROMPT_LENGTH = 30_000


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def apply_style_text(style_text: str, prompt: str) -> str:
    """Merge one style's text into a prompt the way A1111 does.

    With a ``{prompt}`` placeholder the style wraps the prompt; otherwise the style is appended
    after a comma. Empty sides are dropped so no dangling ", " appears.
    """
    if PROMPT_PLACEHOLDER in style_text:
        return style_text.replace(PROMPT_PLACEHOLDER, prompt)
    if not style_text.strip():
        return prompt
    # Stripping before joining matches A1111, so "cat " + "red" gives "cat, red", not "cat , red".
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def validate_style(style: PromptStyle) -> None:
    """Raise ValidationError listing every field of ``style`` that cannot be stored."""
    errors: list[FieldError] = []
    name = style.name
    if not name.strip():
        errors.append(FieldError("style_name", "must not be empty"))
    elif "\n" in name or "\r" in name:
        errors.append(FieldError("style_name", "must be a single line"))
    elif len(name) > MAX_NAME_LENGTH:
        errors.append(FieldError("style_name", f"must be at most {MAX_NAME_LENGTH} characters"))
    elif name.startswith("#"):
        # A1111 reads rows whose name starts with "#" as comments; such a style would vanish.
        errors.append(FieldError("style_name", "must not start with '#'"))
    for field, text in (("style_prompt", style.prompt), ("style_negative_prompt", style.negative_prompt)):
        if len(text) > MAX_PROMPT_LENGTH:
            errors.append(FieldError(field, f"must be at most {MAX_PROMPT_LENGTH:,} characters"))
    if errors:
        raise ValidationError(errors)


def parse_styles_csv(text: str, source: Path) -> tuple[PromptStyle, ...]:
    """Parse styles.csv text; ConfigError (naming ``source``) when it is not a styles table."""
    # newline="" keeps line breaks inside quoted fields intact, as the csv docs require. strict
    # turns an unclosed quote into an error instead of silently swallowing every later row into
    # one field, which the next save would then make permanent.
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        header = reader.fieldnames
        if header is None:
            return ()  # an empty file holds no styles
        if "name" not in header:
            raise ConfigError(f"Styles file {source} has no 'name' column (header: {', '.join(header)}).")
        # A1111 keeps the first position of a name and the last row's values, like a dict.
        styles: dict[str, PromptStyle] = {}
        for row in reader:
            style = _style_from_row(row)
            if style is not None:
                styles[style.name] = style
    except csv.Error as exc:
        raise ConfigError(f"Styles file {source} is not valid CSV (line {reader.line_num}): {exc}") from exc
    return tuple(styles.values())


def _style_from_row(row: Mapping[str | None, object]) -> PromptStyle | None:
    name = _cell(row.get("name"))
    # Empty names and "#" comment rows are skipped, as A1111 does; "None" is an ordinary row.
    if not name.strip() or name.startswith("#"):
        return None
    # Very old A1111 files called the prompt column "text".
    prompt = _cell(row["prompt"]) if "prompt" in row else _cell(row.get("text"))
    return PromptStyle(name=name, prompt=prompt, negative_prompt=_cell(row.get("negative_prompt")))


def _cell(value: object) -> str:
    # Short rows give None for missing cells; extra cells arrive as a list under the None key.
    return value if isinstance(value, str) else ""


def format_styles_csv(styles: Sequence[PromptStyle]) -> str:
    """Render styles exactly as A1111 writes them (header, QUOTE_MINIMAL, CRLF rows)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(FIELDNAMES)
    for style in styles:
        writer.writerow((style.name, style.prompt, style.negative_prompt))
    return buffer.getvalue()


_Stamp = tuple[int, int]  # (mtime_ns, size): changes whenever a hand edit lands


class StyleStore:
    """The styles in one styles.csv, safe to use from the UI and API threads at once."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: _Stamp | None = None
        self._styles: tuple[PromptStyle, ...] = ()

    @property
    def path(self) -> Path:
        return self._path

    def all(self) -> tuple[PromptStyle, ...]:
        """Every style in file order; re-reads the file if it changed since the last read."""
        with self._lock:
            return self._load_locked()

    def names(self) -> tuple[str, ...]:
        return tuple(style.name for style in self.all())

    def get(self, name: str) -> PromptStyle | None:
        return next((style for style in self.all() if style.name == name), None)

    def apply(self, names: Sequence[str], prompt: str, negative_prompt: str) -> tuple[str, str]:
        """Apply the named styles in order to both prompts; unknown names are ignored.

        Ignoring unknown names matters: A1111 API clients routinely send ``["None"]``.
        """
        by_name = {style.name: style for style in self.all()}
        for name in names:
            style = by_name.get(name)
            if style is None:
                continue
            prompt = apply_style_text(style.prompt, prompt)
            negative_prompt = apply_style_text(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    def save(self, style: PromptStyle) -> None:
        """Add ``style`` or replace the one with its name, keeping every other row and the order."""
        validate_style(style)
        with self._lock:
            # Loading first also guarantees we never overwrite a file we could not parse.
            current = self._load_locked()
            if any(existing.name == style.name for existing in current):
                updated = tuple(style if s.name == style.name else s for s in current)
            else:
                updated = (*current, style)
            self._write_locked(updated)

    def delete(self, name: str) -> bool:
        """Remove the named style; False (and no write) when there is none."""
        with self._lock:
            current = self._load_locked()
            remaining = tuple(style for style in current if style.name != name)
            if len(remaining) == len(current):
                return False
            self._write_locked(remaining)
            return True

    def _load_locked(self) -> tuple[PromptStyle, ...]:
        stamp = self._stat()
        if stamp is None:
            self._stamp, self._styles = None, ()
            return ()
        if stamp == self._stamp:
            return self._styles
        try:
            # utf-8-sig: files saved by A1111 or Excel start with a BOM.
            text = self._path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"Styles file {self._path} is not UTF-8 text: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"Cannot read styles file {self._path}: {exc}") from exc
        styles = parse_styles_csv(text, self._path)
        # The stamp taken before reading: an edit racing the read shows up as a change next time.
        self._stamp, self._styles = stamp, styles
        return styles

    def _write_locked(self, styles: tuple[PromptStyle, ...]) -> None:
        write_text_atomic(self._path, format_styles_csv(styles))
        self._stamp, self._styles = self._stat(), styles

    def _stat(self) -> _Stamp | None:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"Cannot read styles file {self._path}: {exc}") from exc
        return st.st_mtime_ns, st.st_size
