"""UI built by an extension makes no public Gradio API: its panel's, tab's and settings section's
events (a button's click, the load event of ``value=lambda: ...``, an ``every=`` timer) are neither
listed by /gradio_api/info nor callable through gradio_client; the page still runs them. And a
pasted infotext fills the extension's panel through the paste button's event."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.devtools.extension_testing import start_atelier
from modules.web.credentials import load_auth
from tests.gradio_events import event_name, run_event
from tests.server_process import free_port

FIXTURE = Path(__file__).parents[1] / "fixtures" / "extensions_v2" / "panel_probe"
EXTENSION_MODULE = "atelier_extensions.panel_probe"


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    tmp = tmp_path_factory.mktemp("private")
    with start_atelier(tmp / "data", tmp / "no-models", [FIXTURE], builtin=[]) as services:
        yield app_module._build_app(parse_flags([], {}), services, load_auth(None, None, None))


@pytest.fixture(scope="module")
def page(guard: object) -> Iterator[TestClient]:
    """A browser's view: Gradio's queue runs while this client is open."""
    with TestClient(guard, base_url="http://127.0.0.1") as client:
        yield client


def _blocks(guard: object) -> object:
    return next(e.blocks for e in guard.faces.effects if hasattr(e, "blocks"))


def _extension_fns(guard: object) -> dict[int, object]:
    return {i: f for i, f in _blocks(guard).fns.items() if f.fn is not None and f.fn.__module__ == EXTENSION_MODULE}


def test_no_event_of_the_extension_is_in_the_api_info(guard: object) -> None:
    fns = _extension_fns(guard)
    names = {f.fn.__name__ for f in fns.values()}
    # the button clicks of the panel (once per tab) and of the tab, and the load events of the lambdas
    assert {"probe_reveal", "probe_tab_reveal", "<lambda>"} <= names
    assert {f.api_visibility for f in fns.values()} == {"private"}
    info = TestClient(guard, base_url="http://127.0.0.1").get("/gradio_api/info").json()
    listed = set(info["named_endpoints"]) | set(info["unnamed_endpoints"])
    assert listed, "the app's own public events are listed: the check below can fail"
    assert not listed & {f"/{f.api_name}" for f in fns.values()}


def test_paste_fills_the_extension_panel_from_its_infotext_reader(guard: object, page: TestClient) -> None:
    blocks = _blocks(guard)
    send = "modules.ui.send_to:SendWiring.wire.<locals>.send"
    paste = next(i for i, f in blocks.fns.items()
                 if event_name(f) == send and [c.elem_id for c in f.inputs] == ["txt2img_prompt"])
    fn = blocks.fns[paste]
    text = "a cat\nSteps: 3, Sampler: Euler, Probe unit: depth/0.25, Probe weight: 1.75"
    done = run_event(page, paste, [text])
    assert done["success"], done
    shown = {c.elem_id: value for c, value in zip(fn.outputs, done["output"]["data"], strict=True)}
    assert shown["txt2img_ext_panel_probe_module"] == "depth"
    assert shown["txt2img_ext_panel_probe_strength"] == 0.25
    assert shown["txt2img_ext_panel_probe_weight"] == 1.75


def test_the_page_still_runs_the_extensions_private_events(guard: object, page: TestClient) -> None:
    index = next(i for i, f in _extension_fns(guard).items() if f.fn.__name__ == "probe_reveal")
    assert run_event(page, index, [])["output"]["data"] == ["revealed-secret"]


def test_gradio_client_cannot_call_them(guard: object) -> None:
    # Last in this file: the server started here runs Gradio's queue on its own loop.
    from gradio_client import Client

    config = uvicorn.Config(guard, host="127.0.0.1", port=free_port(), log_level="warning", log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        client = Client(f"http://127.0.0.1:{config.port}/", verbose=False, download_files=False)
        for name in ("/probe_reveal", "/probe_tab_reveal"):
            with pytest.raises(Exception):  # noqa: B017  # gradio_client's own error for an unknown endpoint
                client.predict(api_name=name)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


