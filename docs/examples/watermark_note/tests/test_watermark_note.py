"""Run with: python app.py test-extension docs/examples/watermark_note"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from modules.devtools.extension_testing import tiny_request
from modules.extension_api import parse_infotext

FOLDER = Path(__file__).parents[1]


def test_the_saved_image_is_marked_and_says_so(atelier_with_extension):
    services = atelier_with_extension(FOLDER)
    result = services.generation.generate(tiny_request(extension_params={"watermark_note": {"text": "studio, 2026"}}))
    saved = result.images[0].path
    assert saved is not None
    with Image.open(saved) as png:
        assert png.convert("RGB").getpixel((63, 63)) == (16, 16, 16)
        fields = parse_infotext(png.info["parameters"]).params
    assert fields["Watermark"] == "studio, 2026"
    assert services.extensions.read_infotext(fields)["watermark_note"] == {"text": "studio, 2026"}


def test_without_text_nothing_is_added(atelier_with_extension):
    services = atelier_with_extension(FOLDER)
    result = services.generation.generate(tiny_request())
    assert "Watermark" not in result.images[0].infotext
