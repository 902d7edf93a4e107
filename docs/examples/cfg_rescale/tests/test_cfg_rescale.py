"""Run with: python app.py test-extension docs/examples/cfg_rescale"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from modules.devtools.extension_testing import tiny_request

FOLDER = Path(__file__).parents[1]


def _pixels(png: bytes) -> bytes:
    return Image.open(io.BytesIO(png)).convert("RGB").tobytes()


def test_rescale_changes_the_image_and_is_recorded(atelier_with_extension):
    services = atelier_with_extension(FOLDER)
    plain = services.generation.generate(tiny_request(cfg_scale=9.0)).images[0]
    off = services.generation.generate(tiny_request(
        cfg_scale=9.0, extension_params={"cfg_rescale": {"multiplier": 0.0}})).images[0]
    on = services.generation.generate(tiny_request(
        cfg_scale=9.0, extension_params={"cfg_rescale": {"multiplier": 0.7}})).images[0]
    assert _pixels(off.png) == _pixels(plain.png)
    assert _pixels(on.png) != _pixels(plain.png)
    assert "CFG Rescale: 0.7" in on.infotext and "CFG Rescale" not in plain.infotext


def test_a_pasted_infotext_gives_the_multiplier_back(atelier_with_extension):
    services = atelier_with_extension(FOLDER)
    assert services.extensions.read_infotext({"Steps": "3", "CFG Rescale": "0.7"})["cfg_rescale"] == {"multiplier": 0.7}
