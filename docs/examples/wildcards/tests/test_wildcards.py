"""Run with: python app.py test-extension docs/examples/wildcards"""

from __future__ import annotations

from pathlib import Path

from modules.devtools.extension_testing import tiny_request

FOLDER = Path(__file__).parents[1]
COLOURS = {"red", "green", "blue", "yellow", "purple", "orange"}


def _colour(infotext: str) -> str:
    first_line = infotext.splitlines()[0]
    assert first_line.startswith("a ") and first_line.endswith(" cube"), first_line
    return first_line[2:-5]


def test_every_image_gets_its_own_colour_from_its_seed(atelier_with_extension):
    services = atelier_with_extension(FOLDER)
    request = tiny_request(prompt="a __colour__ cube", seed=10, batch_size=2, batch_count=2)
    images = services.generation.generate(request).images
    colours = [_colour(image.infotext) for image in images]
    assert set(colours) <= COLOURS and len(set(colours)) > 1
    assert [image.seed for image in images] == [10, 11, 12, 13]
    again = services.generation.generate(request).images
    assert [_colour(image.infotext) for image in again] == colours
    assert [image.png for image in again] == [image.png for image in images]
