"""An extension's panel in the txt2img tab, driven in headless Chromium: its values reach the job."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Imported here before pytest loads it from pytest_plugins below: registered first so pytest can
# still rewrite its asserts (and does not warn that it cannot).
pytest.register_assert_rewrite("modules.devtools.extension_testing")

from modules.devtools.extension_testing import TINY_CHECKPOINT, TinyCheckpoints  # noqa: E402
from modules.infotext import parse_infotext  # noqa: E402
from modules.services.images import read_infotext  # noqa: E402
from tests.server_process import Server, start_server, stop_server  # noqa: E402

pytest_plugins = ["modules.devtools.extension_testing"]
pytestmark = pytest.mark.browser

STAMP_PREFIX = Path(__file__).resolve().parents[1] / "fixtures" / "extensions" / "stamp_prefix"
MAGENTA = (255, 0, 255)
PANEL = "txt2img_ext_stamp_prefix"  # elem_id prefix: <tab>_ext_<extension name>


@pytest.fixture(scope="module")
def server(atelier_tiny_checkpoints: TinyCheckpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Like tests/ui/conftest.py's server, with the example extension in the data dir's extensions/."""
    data = tmp_path_factory.mktemp("ui-ext-data")
    shutil.copytree(STAMP_PREFIX, data / "extensions" / "stamp_prefix", ignore=shutil.ignore_patterns("__pycache__"))
    proc, srv = start_server(data, atelier_tiny_checkpoints.folder, "--ckpt", TINY_CHECKPOINT)
    yield srv
    stop_server(proc)


def set_number(page, elem_id: str, value: int) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def newest_png(server: Server, after: set[Path]) -> Path:
    made = [p for p in (server.data_dir / "outputs" / "txt2img-images").rglob("*.png") if p not in after]
    assert made, "no new image was saved"
    return max(made, key=lambda p: p.stat().st_mtime_ns)


def corner_is_magenta(path: Path) -> bool:
    with Image.open(path) as image:
        return bool((np.asarray(image.convert("RGB"))[:4, :4] == MAGENTA).all())


def generate(page, server: Server, seed: int) -> tuple[str, Path]:
    """Press Generate on a small job; (the infotext shown, the PNG it saved)."""
    before = set((server.data_dir / "outputs").rglob("*.png"))
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 3)
    page.locator("#txt2img_seed input").fill(str(seed))
    page.locator("#html_info_txt2img textarea").evaluate("el => { el.value = ''; }")
    page.locator("#txt2img_generate").click()
    page.wait_for_function(
        f"() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed: {seed}')")
    return page.locator("#html_info_txt2img textarea").input_value(), newest_png(server, before)


def test_panel_values_reach_the_prompt_and_the_saved_image(page, server: Server) -> None:
    panel = page.locator(f"#{PANEL}_panel")
    panel.wait_for()
    panel.get_by_text("stamp_prefix").first.click()  # the accordion starts closed
    prefix = page.locator(f"#{PANEL}_prefix").locator("textarea, input").first
    prefix.wait_for()
    assert prefix.input_value() == "masterpiece"  # the Param's default
    stamp = page.locator(f"#{PANEL}_stamp input[type=checkbox]")
    assert stamp.is_checked()

    prefix.fill("best quality")
    page.locator("#txt2img_prompt textarea").fill("a lighthouse")
    text, saved = generate(page, server, seed=31)

    assert parse_infotext(text).prompt == "best quality, a lighthouse"
    assert read_infotext(saved) == text
    assert corner_is_magenta(saved)

    stamp.uncheck()
    text, saved = generate(page, server, seed=32)
    assert parse_infotext(text).prompt == "best quality, a lighthouse"
    assert not corner_is_magenta(saved)
