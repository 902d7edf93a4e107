"""The API test files' shared server: a started app over the tiny SD 1.5 checkpoint, with the API on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.conftest import TinyModels, make_services


@pytest.fixture(scope="module")
def served(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, object]]:
    """(client, services) of one app per test file; a file that needs another setup defines its own."""
    services = make_services(tmp_path_factory.mktemp("data"), tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    app = app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None))
    yield TestClient(app, base_url="http://127.0.0.1"), services
    services.close()
