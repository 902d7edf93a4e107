"""Benchmark: the gallery back end over a few thousand images. Run on demand, never in the test pass:

    venv/bin/python tests/bench/gallery.py [--images 5000] [--page-size 48] [--side 64]

Writes PNGs (64x64 unless --side says otherwise) with A1111-style infotexts (varied prompt, model,
sampler, seed, size) into A1111's folder layout in a temporary folder, then times a cold and a warm
refresh, the first page with its thumbnails, the same page again, a text search and a seed search.
The last line is ``gallery_first_page_s <x> gallery_search_s <y>`` (target: each under 1 s).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("txt2img-images", "txt2img-grids", "img2img-images", "img2img-grids", "extras-images")
SUBJECTS = ("a cat", "a castle", "a red fox", "portrait of a woman", "a spaceship", "mountains at dawn")
STYLES = ("oil painting", "photo, 35mm", "watercolor", "pixel art", "highly detailed", "studio lighting")
MODELS = ("v1-5-pruned-emaonly", "sd_xl_base_1.0", "dreamshaper_8", "realisticVision")
SAMPLERS = ("Euler a", "DPM++ 2M", "DDIM", "UniPC", "DPM++ SDE")
SIZES = ("512x512", "512x768", "768x512", "1024x1024")
BASE_NS = 1_700_000_000 * 10**9


def write_images(outputs: Path, count: int, side: int) -> None:
    """``count`` square PNGs over several kinds and dates, each with its own mtime and infotext."""
    from PIL import Image

    from modules.services.images import png_bytes

    rng = random.Random(0)
    # Noise, not flat colour: decoding it costs what decoding a real picture costs.
    pixels = [Image.effect_noise((side, side), 20 + i * 10).convert("RGB") for i in range(6)]
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        folder = outputs / kind / f"2026-01-{1 + i * 10 // count:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        infotext = (
            f"{rng.choice(SUBJECTS)}, {rng.choice(STYLES)}, image {i}\n"
            f"Negative prompt: blurry, lowres, {rng.choice(STYLES)}\n"
            f"Steps: 20, Sampler: {rng.choice(SAMPLERS)}, CFG scale: 7, Seed: {1000 + i}, "
            f"Size: {rng.choice(SIZES)}, Model hash: 6ce0161689, Model: {rng.choice(MODELS)}, Version: v1"
        )
        path = folder / f"{i:05d}-{1000 + i}.png"
        path.write_bytes(png_bytes(pixels[i % len(pixels)], infotext))
        os.utime(path, ns=(BASE_NS + i * 10**9, BASE_NS + i * 10**9))


def timed(label: str, results: list[tuple[str, float, str]], action: Callable[[], str]) -> float:
    start = time.perf_counter()
    note = action()
    elapsed = time.perf_counter() - start
    results.append((label, elapsed, note))
    return elapsed


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from modules.services.gallery import Gallery, GalleryQuery

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--page-size", type=int, default=48)
    parser.add_argument("--side", type=int, default=64, help="image width and height in pixels")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as tmp:
        outputs, cache = Path(tmp) / "outputs", Path(tmp) / "cache"
        start = time.perf_counter()
        write_images(outputs, args.images, args.side)
        print(f"wrote {args.images} images in {time.perf_counter() - start:.1f} s")

        gallery = Gallery(outputs, cache, page_size=args.page_size)
        results: list[tuple[str, float, str]] = []

        def first_page_with_thumbnails() -> str:
            page = gallery.page()
            gallery.thumbnails(page.items)
            return f"{len(page.items)} items, page 1 of {page.pages}"

        def search(query: GalleryQuery) -> Callable[[], str]:
            return lambda: f"{gallery.page(query).total} matches"

        timed("refresh (cold index)", results, lambda: f"{gallery.refresh()} images")
        timed("refresh (warm, nothing changed)", results, lambda: f"{gallery.refresh()} images")
        first_page = timed("first page + thumbnails (made)", results, first_page_with_thumbnails)
        timed("same page + thumbnails (cached)", results, first_page_with_thumbnails)
        text_search = timed("text search 'castle'", results, search(GalleryQuery(text="CASTLE")))
        timed("seed search", results, search(GalleryQuery(seed=1000 + args.images // 2)))
        timed("model + sampler + size search", results,
              search(GalleryQuery(model="dreamshaper_8", sampler="euler a", size="512x768")))
        timed("last page", results, lambda: f"page {gallery.page(page=10**9).page}")
        gallery.close()

        width = max(len(label) for label, _, _ in results)
        print(f"{'step':<{width}}  {'seconds':>8}  note")
        for label, elapsed, note in results:
            print(f"{label:<{width}}  {elapsed:8.4f}  {note}")
        print(f"gallery_first_page_s {first_page:.4f} gallery_search_s {text_search:.4f}")


if __name__ == "__main__":
    main()
