"""``/sdapi/v1/scripts`` and ``/sdapi/v1/script-info`` as A1111 clients read them: selectable and
always-on scripts, per tab, with their arguments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.devtools.extension_testing import start_atelier, write_extension
from modules.web.credentials import load_auth

FIXTURE = Path(__file__).parents[1] / "fixtures" / "extensions_v2" / "route_echo"

SCRIPT = """
    from modules.extension_api import ExtensionSetup, Param, Script

    def setup(ext: ExtensionSetup) -> None:
        ext.add_script(Script("Loop Back", run=lambda run: None, tabs=frozenset({"img2img"}),
                              params=(Param.int("loops", default=2, minimum=1, maximum=8, label="Loops"),
                                      Param.texts("tags"))))
    """
HOOK_ONLY = """
    from modules.extension_api import ExtensionSetup, Hook

    def setup(ext: ExtensionSetup) -> None:
        ext.on(Hook.STEP_END, lambda ctx: None)
    """
SHOUTY = """
    from modules.extension_api import ExtensionSetup, Param

    def setup(ext: ExtensionSetup) -> None:
        ext.add_params(Param.bool("loud", default=True))
    """


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("scripts")
    folders = [FIXTURE, write_extension(tmp / "src", "loop_back", SCRIPT, api_version=2),
               write_extension(tmp / "src", "quiet_hook", HOOK_ONLY, api_version=2),
               write_extension(tmp / "src", "Shouty", SHOUTY, api_version=2)]
    with start_atelier(tmp / "data", tmp / "no-models", folders, builtin=[]) as services:
        flags = parse_flags(["--nowebui"], {})
        yield TestClient(app_module._build_app(flags, services, load_auth(None, None, None)),
                         base_url="http://127.0.0.1")


def test_scripts_lists_selectable_then_always_on_scripts_per_tab(client: TestClient) -> None:
    # An extension with params is always-on (by its name in lower case); one with hooks only is no script.
    assert client.get("/sdapi/v1/scripts").json() == {"txt2img": ["route_echo", "shouty"],
                                                      "img2img": ["loop back", "route_echo", "shouty"]}


def test_script_info_describes_every_script_of_every_tab_with_its_args(client: TestClient) -> None:
    info = client.get("/sdapi/v1/script-info").json()
    by_key = {(e["name"], e["is_img2img"]): e for e in info}
    assert set(by_key) == {("route_echo", False), ("route_echo", True), ("loop back", True), ("shouty", False),
                           ("shouty", True)}
    assert len(info) == len(by_key)
    echo = by_key[("route_echo", False)]
    assert echo["is_alwayson"] is True
    assert echo["args"] == [
        {"label": "Echo strength", "value": 0.5, "minimum": 0.0, "maximum": 2.0, "step": None, "choices": None},
        {"label": "mode", "value": "quiet", "minimum": None, "maximum": None, "step": None,
         "choices": ["loud", "quiet"]}]
    assert by_key[("route_echo", True)]["args"] == echo["args"]
    loop = by_key[("loop back", True)]
    assert loop["is_alwayson"] is False
    assert loop["args"] == [
        {"label": "Loops", "value": 2, "minimum": 1, "maximum": 8, "step": 1, "choices": None},
        {"label": "tags", "value": [], "minimum": None, "maximum": None, "step": None, "choices": None}]
