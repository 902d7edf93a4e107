"""What remote models cost: a built-in table of list prices (US dollars per image) that config.yaml's
``remote_prices`` extends or corrects, and the estimate shown before a job starts.

A model's prices are keyed by size, with the quality after a space where the price depends on it
(``"1024x1024 hd"``); ``"*"`` is any size. The most specific entry wins: size and quality, size,
``"* quality"``, ``"*"``. A model or size with no entry has no estimate (shown as unknown).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PriceTable = Mapping[str, Mapping[str, float]]


def _gpt_image(low: tuple[float, float], medium: tuple[float, float], high: tuple[float, float]) -> dict[str, float]:
    """A gpt-image model's prices: (square, portrait or landscape) per quality; "auto" priced as medium."""
    table: dict[str, float] = {}
    for quality, (square, oblong) in (("low", low), ("medium", medium), ("high", high), ("auto", medium)):
        table[f"1024x1024 {quality}"] = square
        table[f"1536x1024 {quality}"] = table[f"1024x1536 {quality}"] = oblong
    return table


# List prices published by the providers (per image), for the estimate; config.yaml corrects them.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "openai/dall-e-2": {"256x256": 0.016, "512x512": 0.018, "1024x1024": 0.02},
    "openai/dall-e-3": {"1024x1024 standard": 0.04, "1792x1024 standard": 0.08, "1024x1792 standard": 0.08,
                        "1024x1024 hd": 0.08, "1792x1024 hd": 0.12, "1024x1792 hd": 0.12},
    "openai/gpt-image-1": _gpt_image((0.011, 0.016), (0.042, 0.063), (0.167, 0.25)),
    "openai/gpt-image-1-mini": _gpt_image((0.005, 0.006), (0.011, 0.015), (0.036, 0.052)),
    "openai/gpt-image-1.5": _gpt_image((0.009, 0.013), (0.034, 0.05), (0.133, 0.2)),
    "google/imagen-4.0-generate-001": {"*": 0.04},
    "google/imagen-4.0-ultra-generate-001": {"*": 0.06},
    "google/imagen-4.0-fast-generate-001": {"*": 0.02},
    "google/imagen-3.0-generate-002": {"*": 0.03},
    "google/imagen-3.0-generate-001": {"*": 0.04},
}
MAX_PRICE = 1000.0  # dollars per image: more is a typing error


def prices_problem(value: object) -> str | None:
    """Why ``value`` is not a price table ({title: {size key: dollars}}); None when it is."""
    if not isinstance(value, Mapping):
        return 'must be a mapping of model titles to {size: price} ({"openai/dall-e-3": {"1024x1024 hd": 0.08}})'
    for title, sizes in value.items():
        if not isinstance(title, str) or "/" not in title:
            return f"must have remote model titles (provider/model) as keys, got {title!r}"
        if not isinstance(sizes, Mapping) or not sizes:
            return f"{title!r} must map sizes (\"1024x1024\", \"1024x1024 hd\" or \"*\") to prices"
        for key, price in sizes.items():
            if not isinstance(key, str) or not _size_key_ok(key):
                return f"{title!r}: {key!r} is not a size key (\"1024x1024\", \"1024x1024 hd\", \"* hd\" or \"*\")"
            if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 <= price <= MAX_PRICE:
                return (f"{title!r} {key!r}: the price must be a number of dollars from 0 to {MAX_PRICE:g}, "
                        f"got {price!r}")
    return None


def _size_key_ok(key: str) -> bool:
    size, _, quality = key.partition(" ")
    if size != "*":
        width, x, height = size.partition("x")
        if not (x and width.isdigit() and height.isdigit()):
            return False
    return not quality or quality.replace("-", "").isalnum()


def merged_prices(configured: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The built-in table with config.yaml's entries over it (per model, per size key)."""
    table = {title: dict(sizes) for title, sizes in DEFAULT_PRICES.items()}
    for title, sizes in configured.items():
        table.setdefault(title, {}).update({key: float(price) for key, price in sizes.items()})
    return table


def price_per_image(table: PriceTable, title: str, width: int, height: int, quality: str | None) -> float | None:
    """Dollars per image of ``title`` at this size and quality; None when the table has no entry."""
    sizes = table.get(title)
    if not sizes:
        return None
    size = f"{width}x{height}"
    keys = ([f"{size} {quality}"] if quality else []) + [size] + ([f"* {quality}"] if quality else []) + ["*"]
    return next((float(sizes[key]) for key in keys if key in sizes), None)


def cost_text(per_image: float | None, images: int) -> str:
    """"$0.16 (4 images at $0.04)", or why there is no estimate."""
    if per_image is None:
        return "cost unknown (no price for this model and size in remote_prices)"
    unit = "image" if images == 1 else "images"
    return f"${per_image * images:.3f} ({images} {unit} at ${per_image:g})"
