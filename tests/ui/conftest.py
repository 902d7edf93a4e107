"""A real Atelier server (app.py in a subprocess) and headless Debian Chromium driving it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.devtools.fake_image_apis import FakeImageApis
from tests.server_process import Server, start_server, stop_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def image_apis() -> Iterator[FakeImageApis]:
    """The offline fake of OpenAI's and Google's image APIs the shared server's remote engines call."""
    with FakeImageApis() as fake:
        yield fake


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory: pytest.TempPathFactory, image_apis: FakeImageApis) -> Iterator[Server]:
    """One plain server for every browser test file that needs no flags of its own (starting one takes
    seconds); a file that needs another setup defines its own ``server``. Its OpenAI provider is the
    fake, configured as users do it: by the variables the official client reads; its data dir's
    models hold a tiny ControlNet and a tiny FLUX.1 dev besides the SD ones (tests/ui/test_controlnet_browser.py,
    tests/ui/test_flux_browser.py)."""
    from modules.devtools.tiny_controlnet import build_for_arch, write_tiny_controlnet
    from modules.devtools.tiny_model import TinyArch, write_tiny_model

    data = tmp_path_factory.mktemp("ui-data")
    write_tiny_controlnet(build_for_arch(TinyArch.SD15), data / "models" / "ControlNet" / "tiny-canny.safetensors")
    write_tiny_model(TinyArch.FLUX_DEV, data / "models" / "Stable-diffusion" / "tiny-flux-dev.safetensors", seed=0)
    env = {"OPENAI_API_KEY": image_apis.key, "OPENAI_BASE_URL": image_apis.openai_base_url}
    proc, srv = start_server(data, tiny_models.folder, "--ckpt", "tiny-sd15.safetensors", env=env)
    yield srv
    stop_server(proc)


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: apt-get install chromium (tests/run.sh does this)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server: Server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.goto(server.url + "/")
    pg.wait_for_selector("#txt2img_generate")
    yield pg
    context.close()
