"""Extensions' REST routes (``ext.add_route``): served under their prefix behind the same guard as
/sdapi/v1, their errors as a client sees them, and prefixes that are refused."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.api.extension_routes import RESERVED
from modules.cmd_args import parse_flags
from modules.devtools.extension_testing import start_atelier, write_extension
from modules.web.credentials import load_auth
from tests.gradio_events import routes_of

FIXTURE = Path(__file__).parents[1] / "fixtures" / "extensions_v2" / "route_echo"
PASSWORD = "route-echo-password-1"


@contextmanager
def _build(tmp_path: Path, folders: list[Path], *flags: str) -> Iterator[tuple[object, object]]:
    """(the guarded app, its services) with exactly ``folders`` as extensions."""
    parsed = parse_flags(["--api", *flags], {})
    with start_atelier(tmp_path / "data", tmp_path / "no-models", folders, builtin=[]) as services:
        auth = load_auth(parsed.gradio_auth, parsed.gradio_auth_path, parsed.api_auth)
        yield app_module._build_app(parsed, services, auth), services


def _client(guard: object, **kwargs: object) -> TestClient:
    return TestClient(guard, base_url="http://127.0.0.1", **kwargs)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with _build(tmp_path_factory.mktemp("echo"), [FIXTURE], "--nowebui") as (guard, _services):
        yield _client(guard)


def test_get_and_post_routes_are_served_under_the_prefix(client: TestClient) -> None:
    got = client.get("/routeecho/echo", params={"q": "cat"})
    assert got.status_code == 200, got.text
    assert got.json() == {"method": "GET", "path": "/echo", "query": {"q": "cat"}, "body": None, "user": None,
                          "has_settings": True}
    posted = client.post("/routeecho/echo", json={"units": [1, 2]})
    assert posted.status_code == 200
    assert posted.json()["body"] == {"units": [1, 2]} and posted.json()["method"] == "POST"
    assert client.post("/routeecho/double", json={"n": 21}).json() == {"n": 42}
    assert "/routeecho/echo" in client.get("/openapi.json").json()["paths"]


def test_bad_json_and_a_validation_error_are_422_naming_the_problem(client: TestClient) -> None:
    bad = client.post("/routeecho/echo", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 422 and "not valid JSON" in bad.json()["errors"]
    refused = client.post("/routeecho/double", json={"n": "many"})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"] == ["body", "n"] and "whole number" in refused.json()["errors"]


def test_a_raising_handler_is_a_500_naming_the_extension_and_the_server_serves_on(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        failed = client.get("/routeecho/boom")
    assert failed.status_code == 500
    assert "route_echo" in failed.json()["detail"] and "echo chamber collapsed" in failed.json()["detail"]
    assert any("route_echo" in r.getMessage() for r in caplog.records)
    assert client.get("/routeecho/echo").status_code == 200  # the extension and the server go on
    assert client.get("/sdapi/v1/extensions").json()[0]["state"] == "enabled"


def test_the_routes_of_an_extension_switched_off_since_start_up_answer_503(tmp_path: Path) -> None:
    with _build(tmp_path, [FIXTURE], "--nowebui") as (guard, services):
        client = _client(guard)
        assert client.get("/routeecho/echo").status_code == 200
        services.extensions.fail("route_echo", "STEP_END", RuntimeError("broken"))
        off = client.get("/routeecho/echo")
        assert off.status_code == 503 and "route_echo is switched off" in off.json()["detail"]


def test_api_auth_applies_to_extension_routes(tmp_path: Path) -> None:
    with _build(tmp_path, [FIXTURE], "--api-auth", f"alice:{PASSWORD}") as (guard, _services):
        client = _client(guard)
        assert client.get("/routeecho/echo").status_code == 401
        assert client.post("/routeecho/echo", json={}).status_code == 401
        token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        signed = client.get("/routeecho/echo", headers={"Authorization": f"Basic {token}"})
        assert signed.status_code == 200 and signed.json()["user"] == "alice"
        # --api-auth alone leaves the UI open: the extension's paths are the API's, not the UI's
        assert client.get("/").status_code == 200


def test_the_network_rule_refuses_only_the_route_marked_as_changing_the_server(tmp_path: Path) -> None:
    with _build(tmp_path, [FIXTURE], "--listen", "--nowebui") as (guard, _services):
        lan = _client(guard, client=("192.168.1.30", 41000))
        assert lan.post("/routeecho/echo", json={}).status_code == 200
        assert lan.post("/routeecho/forget", json={}).status_code == 403
        assert lan.get("/routeecho/echo").status_code == 200
        local = _client(guard, client=("127.0.0.1", 41000))
        assert local.post("/routeecho/forget", json={}).json() == {"forgotten": True}


def test_bad_and_colliding_prefixes_fail_only_that_extension(tmp_path: Path) -> None:
    def routed(name: str, prefix: str | None) -> Path:
        chosen = f"ext.set_route_prefix({prefix!r})" if prefix else "pass"
        return write_extension(tmp_path / "src", name, f"""
            from modules.extension_api import ExtensionSetup
            def setup(ext: ExtensionSetup) -> None:
                {chosen}
                ext.add_route("GET", "/who", lambda call: {{"name": {name!r}}})
            """, api_version=2)

    folders = [routed("first", "/shared"), routed("second", "/shared"), routed("sneaky", "/sdapi"),
               routed("nested", "/a/b"), routed("plain", None), routed("gradio", "/gradio_api")]
    with _build(tmp_path, folders, "--nowebui") as (guard, services):
        client = _client(guard)
        assert client.get("/shared/who").json() == {"name": "first"}
        assert client.get("/ext/plain/who").json() == {"name": "plain"}
        states = {r.name: (r.state.value, r.error or "") for r in services.extensions.records()}
        assert states["first"] == ("enabled", "")
        assert states["second"][0] == "failed" and "already taken" in states["second"][1]
        assert states["sneaky"][0] == "failed" and "server's own" in states["sneaky"][1]
        assert states["gradio"][0] == "failed" and "server's own" in states["gradio"][1]
        assert states["nested"][0] == "failed" and "one path segment" in states["nested"][1]
        assert client.get("/sdapi/v1/samplers").status_code == 200  # the server's own route is untouched


def test_every_top_level_path_the_server_serves_is_reserved(tmp_path: Path) -> None:
    with _build(tmp_path, []) as (guard, _services):
        served = {path.split("/")[1] for _m, path in routes_of(guard.app.routes)}
        assert served - RESERVED == set(), "reserve these first path segments in extension_routes.RESERVED"
