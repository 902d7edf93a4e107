"""One auth layer over UI, API, docs and files; secrets never shown; LAN safety without auth;
accounts from the database (Basic, Bearer tokens, roles, sign-out) on a real server."""

from __future__ import annotations

import base64
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.services.accounts import AccountStore
from modules.services.studio_db import db_path, open_studio_db
from modules.web.credentials import load_auth
from modules.web.limiter import FailureLimiter
from tests.conftest import make_services
from tests.gradio_events import routes_of
from tests.server_process import ROOT, Server, start_server, stop_server

PASSWORD = "s3cret-pass-words"
# The only routes a stranger may reach with auth on: Gradio's login page and its static assets.
ALLOWLIST = {"/", "/login", "/login/", "/logout", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css",
             "/gradio_api/app_id", "/gradio_api/app_id/", "/pwa_icon"}
ALLOWLIST_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def build(tmp_path: Path, *args: str) -> tuple[TestClient, object]:
    flags = parse_flags(list(args), {})
    services = make_services(tmp_path / "data", tmp_path / "no-models")
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    return TestClient(app_module._build_app(flags, services, auth), base_url="http://127.0.0.1"), services


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[TestClient]:
    client, services = build(tmp_path, "--api", "--gradio-auth", f"alice:{PASSWORD}")
    yield client
    services.close()


def test_every_route_answers_401_without_credentials_except_the_login_page(secured: TestClient) -> None:
    inner = secured.app.app  # the FastAPI app behind the auth middleware
    seen = 0
    for method, path in routes_of(inner.routes):
        concrete = re.sub(r"\{[^}]+\}", "x", path) or "/"
        response = secured.request(method, concrete)
        seen += 1
        if concrete in ALLOWLIST or concrete.startswith(ALLOWLIST_PREFIXES):
            assert response.status_code != 401 or concrete == "/gradio_api/login_check", (method, concrete)
            continue
        assert response.status_code == 401, (method, concrete, response.status_code)
    assert seen > 60  # the walk really covered Gradio's and the API's routes


def test_basic_credentials_open_the_api_and_header_names_are_case_insensitive(secured: TestClient) -> None:
    assert secured.get("/sdapi/v1/options", headers=basic("alice", PASSWORD)).status_code == 200
    token = basic("alice", PASSWORD)["Authorization"]
    assert secured.get("/sdapi/v1/samplers", headers={"AUTHORIZATION": token}).status_code == 200
    assert secured.get("/docs", headers=basic("alice", PASSWORD)).status_code == 200
    assert secured.get("/sdapi/v1/options", headers=basic("alice", "wrong")).status_code == 401
    assert secured.get("/sdapi/v1/cmd-flags").status_code == 401  # how bots detect that auth is on


def test_cmd_flags_and_logs_never_show_a_password(secured: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secured.get("/sdapi/v1/options", headers=basic("alice", PASSWORD + "x"))
    flags = secured.get("/sdapi/v1/cmd-flags", headers=basic("alice", PASSWORD))
    assert flags.status_code == 200
    assert flags.json()["gradio_auth"] == "<redacted>" and PASSWORD not in flags.text
    assert PASSWORD not in caplog.text and "Failed login" in caplog.text


def test_repeated_failures_from_one_address_are_slowed_down(tmp_path: Path) -> None:
    client, services = build(tmp_path, "--api", "--api-auth", f"bot:{PASSWORD}")
    try:
        codes = [client.get("/sdapi/v1/options", headers=basic("bot", f"guess{i}")).status_code for i in range(12)]
        assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
        blocked = client.get("/sdapi/v1/options", headers=basic("bot", PASSWORD))
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    finally:
        services.close()


def test_failure_limiter_forgets_after_its_window() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, window_seconds=10, clock=lambda: now[0])
    limiter.failed("a"), limiter.failed("a")
    assert limiter.retry_after("a") and limiter.retry_after("b") is None
    now[0] = 11.0
    assert limiter.retry_after("a") is None


def test_separate_api_credentials(tmp_path: Path) -> None:
    client, services = build(tmp_path, "--api", "--gradio-auth", f"alice:{PASSWORD}", "--api-auth", "bot:other-pass")
    try:
        assert client.get("/sdapi/v1/options", headers=basic("bot", "other-pass")).status_code == 200
        # alice is an admin account now (seeded from --gradio-auth): accounts sign in to the API too.
        assert client.get("/sdapi/v1/options", headers=basic("alice", PASSWORD)).status_code == 200
        assert client.get("/gradio_api/info", headers=basic("bot", "other-pass")).status_code == 401  # API only
        assert client.get("/gradio_api/info").status_code == 401
        assert client.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 200
        assert client.get("/gradio_api/info").status_code == 200  # the login session opens the UI's routes
        assert client.get("/sdapi/v1/options").status_code == 401  # but not the API
    finally:
        services.close()


def test_auth_off_ignores_authorization_headers(tmp_path: Path) -> None:
    client, services = build(tmp_path, "--api")
    try:
        assert client.get("/sdapi/v1/options", headers={"Authorization": "Basic "}).status_code == 200
        assert client.get("/sdapi/v1/options", headers={"Authorization": "Bearer x"}).status_code == 200
        assert client.post("/sdapi/v1/interrupt").json() == {}
    finally:
        services.close()


def test_listen_without_auth_refuses_settings_changes_from_the_network(tmp_path: Path) -> None:
    client, services = build(tmp_path, "--api", "--listen")
    try:
        refused = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2})
        assert refused.status_code == 403 and "--gradio-auth" in refused.text
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
    finally:
        services.close()


def test_options_changes_persist_atomically_to_config_yaml(tmp_path: Path) -> None:
    client, services = build(tmp_path, "--api")
    try:
        assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "randn_source": "cpu"}).status_code == 200
        assert (tmp_path / "data" / "config.yaml").read_text() == "clip_skip: 2\nrandn_source: CPU\n"
        bad = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 99})
        assert bad.status_code == 422 and "clip_skip" in bad.text
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
    finally:
        services.close()


def test_gradio_auth_path_file(tmp_path: Path) -> None:
    credentials = tmp_path / "users.txt"
    credentials.write_text(f"alice:{PASSWORD}\nbob:another-pass\n")
    client, services = build(tmp_path, "--api", "--gradio-auth-path", str(credentials))
    try:
        assert client.get("/sdapi/v1/options", headers=basic("bob", "another-pass")).status_code == 200
        assert client.get("/sdapi/v1/options").status_code == 401
    finally:
        services.close()


def test_nowebui_serves_only_the_api(tmp_path: Path) -> None:
    client, services = build(tmp_path, "--nowebui")
    try:
        assert client.get("/sdapi/v1/samplers").status_code == 200
        missing = client.get("/")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("application/json")
    finally:
        services.close()


def test_subpath_and_cors(tmp_path: Path) -> None:
    client, services = build(tmp_path, "--api", "--subpath", "/atelier", "--cors-allow-origins",
                             "http://editor.local")
    try:
        assert client.get("/atelier/").status_code == 200
        assert client.get("/config").status_code == 404  # the UI lives under the subpath only
        preflight = client.options("/sdapi/v1/txt2img", headers={"Origin": "http://editor.local",
                                                                 "Access-Control-Request-Method": "POST"})
        assert preflight.headers.get("access-control-allow-origin") == "http://editor.local"
        other = client.get("/sdapi/v1/samplers", headers={"Origin": "http://evil.local"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        services.close()


def test_sign_out_under_a_subpath_ends_the_session_and_cookie_changes_need_our_origin(tmp_path: Path) -> None:
    client, services = build(tmp_path, "--api", "--subpath", "/atelier", "--gradio-auth", f"alice:{PASSWORD}")
    try:
        login = client.post("/atelier/login", data={"username": "alice", "password": PASSWORD})
        assert login.status_code == 200
        assert all("SameSite=Strict" in c for c in login.headers.get_list("set-cookie"))
        assert client.get("/atelier/gradio_api/info").status_code == 200
        refused = client.post("/atelier/gradio_api/queue/join", json={})
        assert refused.status_code == 403 and "Origin or Referer" in refused.text  # a cookie alone changes nothing
        assert client.post("/atelier/gradio_api/queue/join", json={},
                           headers={"Origin": "http://127.0.0.1"}).status_code != 403
        out = client.get("/atelier/logout", follow_redirects=False)
        assert out.status_code == 302
        client.cookies.clear()
        assert client.get("/atelier/gradio_api/info").status_code == 401
    finally:
        services.close()


# --- accounts on a real server: users made with `app.py users add` ----------------------------------

ADMIN_PW, USER_PW = "admin-pass-77", "user-pass-77"


def add_user(data: Path, name: str, role: str, password: str) -> None:
    done = subprocess.run([sys.executable, str(ROOT / "app.py"), "users", "add", name, "--role", role,
                           "--password", password, "--data-dir", str(data)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, AccountStore]]:
    """A server (no flags' credentials) whose database holds an admin and a user; the test's own
    handle on the same database, for tokens."""
    data = tmp_path_factory.mktemp("studio")
    add_user(data, "ann", "admin", ADMIN_PW)
    add_user(data, "uma", "user", USER_PW)
    models = tmp_path_factory.mktemp("no-models")
    proc, server = start_server(data, models, "--api")
    db = open_studio_db(db_path(data))
    try:
        yield server, AccountStore(db)
    finally:
        db.close()
        stop_server(proc)


def test_once_an_account_exists_everything_asks_for_sign_in(studio: tuple[Server, AccountStore]) -> None:
    server, _ = studio
    for path in ("/sdapi/v1/samplers", "/sdapi/v1/options", "/gradio_api/info", "/docs"):
        assert httpx.get(server.url + path).status_code == 401, path
    assert httpx.get(server.url + "/sdapi/v1/samplers", auth=("uma", USER_PW)).status_code == 200
    assert httpx.get(server.url + "/gradio_api/info", auth=("ann", ADMIN_PW)).status_code == 200


def test_unknown_user_and_wrong_password_are_answered_alike(studio: tuple[Server, AccountStore]) -> None:
    server, _ = studio
    wrong = httpx.get(server.url + "/sdapi/v1/samplers", auth=("uma", "not-it-77"))
    unknown = httpx.get(server.url + "/sdapi/v1/samplers", auth=("nobody", "not-it-77"))
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.content == unknown.content
    same = {k: v for k, v in wrong.headers.items() if k != "date"}
    assert same == {k: v for k, v in unknown.headers.items() if k != "date"}
    assert "www-authenticate" in same


def test_api_tokens_sign_in_until_revoked(studio: tuple[Server, AccountStore]) -> None:
    server, accounts = studio
    info, secret = accounts.create_token("uma", "script")
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(server.url + "/sdapi/v1/samplers", headers=headers).status_code == 200
    accounts.revoke_token(info.id, "uma")
    revoked = httpx.get(server.url + "/sdapi/v1/samplers", headers=headers)
    assert revoked.status_code == 401


def test_only_an_admin_changes_the_servers_options(studio: tuple[Server, AccountStore]) -> None:
    server, _ = studio
    refused = httpx.post(server.url + "/sdapi/v1/options", json={}, auth=("uma", USER_PW), timeout=60)
    assert refused.status_code == 403 and "signed in as uma, a user" in refused.json()["detail"]
    forged = httpx.post(server.url + "/sdapi/v1/options", json={}, auth=("uma", USER_PW),
                        headers={"X-Atelier-User": "ann", "X-Atelier-Role": "admin"}, timeout=60)
    assert forged.status_code == 403
    assert httpx.post(server.url + "/sdapi/v1/options", json={}, auth=("ann", ADMIN_PW), timeout=60).status_code == 200
