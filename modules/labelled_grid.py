"""Labelled image grids: column headers on top, row labels on the left, drawn with PIL.

Part of the extension API (re-exported by :mod:`modules.extension_api`): the X/Y/Z plot and the
prompt matrix draw their grids with it, and so can any extension. Text is black on white, in PIL's default font at a size that grows with the cells, wrapped to fit;
an inactive label (a prompt matrix part left out of that row or column) is grey and struck through.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont
TEXT = (0, 0, 0)
INACTIVE = (153, 153, 153)
BACKGROUND = "white"


@dataclass(frozen=True)
class Label:
    text: str
    active: bool = True


@dataclass(frozen=True)
class _Style:
    font: Font
    line_height: int
    pad: int


def font_size_for(cell_width: int, cell_height: int) -> int:
    # A1111 uses (w + h) / 25; small cells still need text a person can read.
    return max(12, (cell_width + cell_height) // 25)


def _style(size: int) -> _Style:
    try:
        font: Font = ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # an old Pillow, or one without FreeType
        font = ImageFont.load_default()
    top, bottom = font.getbbox("Ay")[1::2]
    return _Style(font, int(bottom - top) + max(2, size // 4), max(2, size // 2))


def _wrap(text: str, style: _Style, width: int) -> list[str]:
    """Lines of ``text`` no wider than ``width``, breaking between words, or inside a word too long."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and style.font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while len(word) > 1 and style.font.getlength(word) > width:
            cut = len(word) - 1
            while cut > 1 and style.font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines


def _wrapped(labels: Sequence[Label], style: _Style, width: int) -> list[tuple[str, bool]]:
    return [(line, label.active) for label in labels for line in _wrap(label.text, style, width)]


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[tuple[str, bool]], centre_x: float, top: float,
                style: _Style) -> None:
    for number, (line, active) in enumerate(lines):
        width = style.font.getlength(line)
        x, y = centre_x - width / 2, top + number * style.line_height
        draw.text((x, y), line, font=style.font, fill=TEXT if active else INACTIVE)
        if not active:
            middle = y + style.line_height / 2 - 1
            draw.line((x, middle, x + width, middle), fill=INACTIVE, width=max(1, style.line_height // 12))


def _row_label_width(rows: Sequence[Sequence[Label]], style: _Style, cell_width: int) -> int:
    widest = max((style.font.getlength(label.text) for labels in rows for label in labels), default=0)
    if not widest:
        return 0
    # At least A1111's three quarters of a cell; wider for long labels, up to two cells.
    low = cell_width * 3 // 4
    return int(min(max(widest + 2 * style.pad, low), max(low, 2 * cell_width)))


def labelled_grid(cells: Sequence[Image.Image], columns: int, column_labels: Sequence[Sequence[Label]],
                  row_labels: Sequence[Sequence[Label]], font_size: int | None = None, gap: int = 0) -> Image.Image:
    """``cells`` row by row, ``columns`` to a row, each centred in a slot as large as the largest;
    headers and row labels where given (no margin where every label is empty)."""
    cell_w, cell_h = max(c.width for c in cells), max(c.height for c in cells)
    rows = -(-len(cells) // columns)
    style = _style(font_size or font_size_for(cell_w, cell_h))
    left = _row_label_width(row_labels, style, cell_w)
    heads = [_wrapped(labels, style, cell_w - style.pad) for labels in column_labels]
    head_lines = max((len(lines) for lines in heads), default=0)
    top = head_lines * style.line_height + 2 * style.pad if any(line for lines in heads for line, _ in lines) else 0
    grid = Image.new("RGB", (left + columns * cell_w + (columns - 1) * gap, top + rows * cell_h + (rows - 1) * gap),
                     BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for index, cell in enumerate(cells):
        x = left + (index % columns) * (cell_w + gap) + (cell_w - cell.width) // 2
        y = top + (index // columns) * (cell_h + gap) + (cell_h - cell.height) // 2
        grid.paste(cell.convert("RGB"), (x, y))
    for column, lines in enumerate(heads[:columns] if top else []):
        block = len(lines) * style.line_height
        _draw_lines(draw, lines, left + column * (cell_w + gap) + cell_w / 2, (top - block) / 2, style)
    for row, labels in enumerate(row_labels[:rows] if left else []):
        lines = _wrapped(labels, style, left - 2 * style.pad)
        block = len(lines) * style.line_height
        _draw_lines(draw, lines, left / 2, top + row * (cell_h + gap) + (cell_h - block) / 2, style)
    return grid
