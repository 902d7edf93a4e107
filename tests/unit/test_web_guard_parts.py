"""The request guard's parts, one rule at a time: Host parsing and the allow-list, same-origin,
the limiter's keys, log escaping, the password kept out of the process title; and sign-in over
accounts (Basic, Bearer, sessions), roles, identity headers and the cookie CSRF rules, through
the guard in front of a small app that says what it saw."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from modules.cmd_args import redacted_argv
from modules.identity import ROLE_HEADER, USER_HEADER, Identity, Role
from modules.server_effects import Effect
from modules.ui.session import identity_of, user_of
from modules.web.credentials import load_auth
from modules.web.guard import Faces, GuardConfig, RequestGuard
from modules.web.hosts import HostPolicy, host_name_of, is_loopback
from modules.web.limiter import FailureLimiter
from modules.web.log_safety import EscapingFilter, printable
from modules.web.origin import cross_site, same_origin
from modules.web.sessions import SessionTable
from modules.web.signin import strict_cookies


@pytest.mark.parametrize(("header", "name"), [
    ("localhost:7860", "localhost"), ("LOCALHOST", "localhost"), ("[::1]:7860", "::1"), ("127.0.0.1", "127.0.0.1"),
    ("example.org.", "example.org"), ("a/b", None), ("x:y", None), ("[::1", None), ("", None), ("u@host", None)])
def test_host_header_parsing(header: str, name: str | None) -> None:
    assert host_name_of(header) == name


def test_loopback_names() -> None:
    assert all(is_loopback(n) for n in ("localhost", "127.0.0.1", "127.8.9.10", "::1", "app.localhost"))
    assert not any(is_loopback(n) for n in ("localhost.evil.example", "10.0.0.1", "evil", "0.0.0.0"))


def test_host_policy() -> None:
    local = HostPolicy()
    assert local.allows("localhost", "127.0.0.1") and not local.allows("192.168.1.5", "192.168.1.5")
    lan = HostPolicy(listen=True, machine_names=frozenset({"studio"}), patterns=frozenset({".example.org"}))
    assert lan.allows("studio", None) and lan.allows("192.168.1.5", "192.168.1.5")
    assert lan.allows("gpu.example.org", None) and not lan.allows("example.org.evil", None)
    assert not lan.allows("evil.example", "192.168.1.5") and not lan.allows("evil", "evil")


def test_same_origin() -> None:
    assert same_origin("http://127.0.0.1:7860", "127.0.0.1:7860")
    assert same_origin("https://atelier.example", "atelier.example")
    assert not same_origin("http://127.0.0.1:7861", "127.0.0.1:7860")
    assert not same_origin("null", "127.0.0.1:7860") and not same_origin("file://", "")
    assert cross_site({"origin": "http://a.example", "host": "b:1"}, frozenset({"http://a.example"})) is None
    assert cross_site({"sec-fetch-site": "cross-site", "host": "b"}, frozenset()) is not None
    assert cross_site({"host": "b"}, frozenset()) is None  # a program, not a page


def test_limiter_counts_addresses_and_user_names_apart() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, window_seconds=10, clock=lambda: now[0])
    limiter.failed("10.0.0.1", "Alice")
    limiter.failed("10.0.0.2", "alice")
    assert limiter.retry_after("10.0.0.3", "ALICE") is not None  # the name, from anywhere
    assert limiter.retry_after("10.0.0.3", "bob") is None
    assert limiter.retry_after("10.0.0.1") is None  # one failure from that address
    now[0] = 11.0
    assert limiter.retry_after("10.0.0.3", "alice") is None


def test_log_escaping_filter() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "path %s from %s", ("/a\nFORGED\r\x1b[31m", 5), None)
    EscapingFilter().filter(record)
    assert record.getMessage() == "path /a\\nFORGED\\r\\x1b[31m from 5"
    assert printable("x" * 500, limit=10) == "x" * 10 + "..."


def test_the_process_title_hides_every_secret() -> None:
    argv = ["--listen", "--gradio-auth", "a:pw1", "--api-auth=b:pw2", "--port", "1"]
    assert redacted_argv(argv) == ["--listen", "--gradio-auth", "<redacted>", "--api-auth=<redacted>", "--port", "1"]


# --- sign-in: accounts, Bearer tokens, roles, identity headers, sessions, cookie CSRF ------------------

ACCOUNTS = {"ann": ("ann-pass-1", Role.ADMIN), "uma": ("uma-pass-1", Role.USER)}


class FakeAccounts:
    """The accounts as the guard sees them; ``users`` may change between requests."""

    def __init__(self, users: dict[str, tuple[str, Role]] | None = None) -> None:
        self.users = dict(ACCOUNTS if users is None else users)
        self.tokens = {"atl_uma-token": "uma"}

    def check_password(self, name: str, password: str) -> Identity | None:
        found = self.users.get(name)
        return Identity(name, found[1]) if found and found[0] == password else None

    def check_token(self, secret: str) -> Identity | None:
        name = self.tokens.get(secret)
        return self.identity(name) if name else None

    def identity(self, name: str) -> Identity | None:
        return Identity(name, self.users[name][1]) if name in self.users else None

    def sign_in_required(self) -> bool:
        return bool(self.users)


class ServerEffects:
    """POST /sdapi/v1/options and the UI's /ui/server change the server; nothing else does."""

    def needs_body(self, method: str, path: str) -> bool:
        return False

    def effect(self, method: str, path: str, body: bytes) -> Effect:
        return Effect.SERVER if method == "POST" and path in ("/sdapi/v1/options", "/ui/server") else Effect.OWN


async def echo(scope: dict, receive, send) -> None:
    """What the app behind the guard saw: the recorded state and every identity header."""
    if scope["path"] == "/ui/login":
        headers = [(b"set-cookie", b"sid=s1; HttpOnly; Path=/; SameSite=none; Secure"),
                   (b"set-cookie", b"sid2=s1; HttpOnly; Path=/; SameSite=lax")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    seen = {"state": {k: v for k, v in scope.get("state", {}).items() if k.startswith("atelier_")},
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"] if k.startswith(b"x-atelier")]}
    body = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def guarded(accounts: FakeAccounts | None = None, api_auth: str | None = None,
            sessions: SessionTable | None = None,
            may_read: Callable[[str, Identity | None], bool] = lambda path, identity: True) -> TestClient:
    table = sessions if sessions is not None else SessionTable(max_age=3600)

    def session_user(scope: dict) -> str | None:
        cookie = next((v.decode() for k, v in scope["headers"] if k == b"cookie"), "")
        return table.get(cookie.removeprefix("sid=")) if cookie.startswith("sid=") else None

    faces = Faces(is_ui=lambda path: path.startswith("/ui"), is_open=lambda path: path == "/ui/logout",
                  session_user=session_user, login_route=lambda path: "/ui/login" if path == "/ui/login" else None,
                  effects=(ServerEffects(),), may_read=may_read)
    config = GuardConfig(auth=load_auth(None, None, api_auth), accounts=accounts or FakeAccounts())
    return TestClient(RequestGuard(echo, config, faces), base_url="http://127.0.0.1")


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_and_bearer_sign_in_and_the_app_sees_who() -> None:
    client = guarded()
    seen = client.get("/sdapi/v1/samplers", headers=basic_auth("ann", "ann-pass-1")).json()
    assert seen["state"] == {"atelier_user": "ann", "atelier_role": "admin", "atelier_authenticated": True}
    by_token = client.get("/ui/queue", headers=bearer("atl_uma-token")).json()  # a token opens the UI's routes too
    assert by_token["headers"] == [[USER_HEADER, "uma"], [ROLE_HEADER, "user"]]
    assert client.get("/sdapi/v1/samplers", headers=bearer("atl_revoked")).status_code == 401
    assert client.get("/sdapi/v1/samplers").status_code == 401


def test_unknown_user_and_wrong_password_get_the_same_answer() -> None:
    client = guarded()
    wrong = client.get("/sdapi/v1/samplers", headers=basic_auth("ann", "nope"))
    unknown = client.get("/sdapi/v1/samplers", headers=basic_auth("nobody", "nope"))
    bad_token = client.get("/sdapi/v1/samplers", headers=bearer("atl_nope"))
    assert wrong.status_code == unknown.status_code == bad_token.status_code == 401
    assert wrong.content == unknown.content == bad_token.content
    assert dict(wrong.headers) == dict(unknown.headers) == dict(bad_token.headers)


def test_client_sent_identity_headers_never_reach_the_app() -> None:
    forged = {USER_HEADER: "ann", ROLE_HEADER: "admin", "X-Atelier-User": "ann"}
    as_uma = guarded().get("/ui/queue", headers={**forged, **basic_auth("uma", "uma-pass-1")}).json()
    assert as_uma["headers"] == [[USER_HEADER, "uma"], [ROLE_HEADER, "user"]]
    no_sign_in = guarded(FakeAccounts({})).get("/ui/queue", headers=forged).json()
    assert no_sign_in == {"state": {}, "headers": []}


def test_a_user_may_not_change_the_server_but_an_admin_and_api_auth_may() -> None:
    client = guarded(api_auth="bot:bot-pass-1")
    refused = client.post("/sdapi/v1/options", json={}, headers=basic_auth("uma", "uma-pass-1"))
    assert refused.status_code == 403
    assert refused.json()["detail"].startswith("Only an admin may change")
    assert "you are signed in as uma, a user" in refused.json()["detail"]
    assert client.post("/ui/server", headers={**bearer("atl_uma-token"), "Origin": "http://127.0.0.1"}).status_code == 403
    assert client.post("/sdapi/v1/txt2img", json={}, headers=basic_auth("uma", "uma-pass-1")).status_code == 200
    assert client.post("/sdapi/v1/options", json={}, headers=basic_auth("ann", "ann-pass-1")).status_code == 200
    bot = client.post("/sdapi/v1/options", json={}, headers=basic_auth("bot", "bot-pass-1"))
    assert bot.status_code == 200 and bot.json()["state"]["atelier_role"] == "admin"
    assert client.get("/ui/queue", headers=basic_auth("bot", "bot-pass-1")).status_code == 401  # API only


def test_auth_is_on_once_an_account_exists_and_off_ignores_authorization() -> None:
    accounts = FakeAccounts({})
    client = guarded(accounts)
    for header in ("Basic ", "Basic !!", "Bearer x"):
        assert client.get("/sdapi/v1/samplers", headers={"Authorization": header}).status_code == 200
    accounts.users["ann"] = ("ann-pass-1", Role.ADMIN)
    assert client.get("/sdapi/v1/samplers").status_code == 401
    assert client.get("/ui/queue", headers={"Authorization": "Basic "}).status_code == 401


def test_session_cookie_signs_in_ui_routes_and_ends_with_the_account() -> None:
    accounts, table = FakeAccounts(), SessionTable(max_age=3600)
    table["s1"] = "uma"
    client = guarded(accounts, sessions=table)
    assert client.get("/ui/queue", headers={"Cookie": "sid=s1"}).json()["state"]["atelier_user"] == "uma"
    assert client.get("/sdapi/v1/samplers", headers={"Cookie": "sid=s1"}).status_code == 401  # not the API's
    del accounts.users["uma"]  # removed: the session's account is gone, so is the session
    assert client.get("/ui/queue", headers={"Cookie": "sid=s1"}).status_code == 401


def test_cookie_changes_need_this_servers_origin_or_referer() -> None:
    table = SessionTable(max_age=3600)
    table["s1"] = "uma"
    client = guarded(sessions=table)
    cookie = {"Cookie": "sid=s1"}
    refused = client.post("/ui/queue/join", headers=cookie)
    assert refused.status_code == 403 and "Origin or Referer" in refused.json()["detail"]
    assert client.post("/ui/queue/join", headers={**cookie, "Origin": "http://127.0.0.1"}).status_code == 200
    assert client.post("/ui/queue/join", headers={**cookie, "Referer": "http://127.0.0.1/ui/?x=1"}).status_code == 200
    assert client.post("/ui/queue/join", headers={**cookie, "Referer": "http://evil.example/"}).status_code == 403
    assert client.post("/ui/queue/join", headers={**cookie, "Origin": "null"}).status_code == 403
    assert client.get("/ui/queue", headers=cookie).status_code == 200  # reading is not a change
    # Basic and Bearer are not sent by a browser on another site's behalf: today's rules.
    assert client.post("/ui/queue/join", headers=basic_auth("uma", "uma-pass-1")).status_code == 200


def test_the_login_cookies_become_same_site_strict() -> None:
    login = guarded().post("/ui/login", data={"username": "ann", "password": "ann-pass-1"})
    cookies = login.headers.get_list("set-cookie")
    assert len(cookies) == 2 and all(c.endswith("; SameSite=Strict") for c in cookies)
    assert not any("none" in c.lower() or "lax" in c.lower() for c in cookies)
    assert strict_cookies([(b"Set-Cookie", b"a=1; samesite=Lax; Path=/")]) == [(b"Set-Cookie", b"a=1; Path=/; SameSite=Strict")]


def test_session_table_expires_by_age_and_idleness_and_ends_a_users_sessions() -> None:
    now = [0.0]
    table = SessionTable(max_age=100, idle=30, clock=lambda: now[0])
    table["a"], table["b"], table["c"] = "ann", "ann", "uma"
    now[0] = 20.0
    assert table.get("a") == "ann" and table.get("c") == "uma" and "b" in table  # a, c used at 20; "in" is no use
    now[0] = 45.0  # b idle for 45 > 30
    assert "b" not in table and table.get("b") is None and sorted(table.keys()) == ["a", "c"]
    assert table.get("a") == "ann"
    now[0] = 70.0
    assert table["a"] == "ann"  # used at 45, 25 ago
    now[0] = 99.0
    assert table.get("a") == "ann"
    now[0] = 101.0  # older than max_age, however busy
    assert table.get("a") is None and len(table) == 0
    table["d"], table["e"] = "uma", "ann"
    assert table.end_user("uma") == 1 and list(table.items()) == [("e", "ann")]
    with pytest.raises(KeyError):
        table["d"]


def test_file_rule_hook_answers_404_for_a_file_the_caller_may_not_read() -> None:
    def own_files_only(path: str, identity: Identity | None) -> bool:
        return not path.startswith("/ui/file=") or (identity is not None and f"/{identity.name}/" in path)

    client = guarded(may_read=own_files_only)
    assert client.get("/ui/file=outputs/uma/a.png", headers=basic_auth("uma", "uma-pass-1")).status_code == 200
    hidden = client.get("/ui/file=outputs/ann/a.png", headers=basic_auth("uma", "uma-pass-1"))
    assert hidden.status_code == 404 and hidden.json() == {"detail": "Not Found"}


def test_identity_of_reads_only_the_guards_headers() -> None:
    request = SimpleNamespace(headers={USER_HEADER: "J%C3%BCrgen", ROLE_HEADER: "user"}, username=None)
    assert identity_of(request) == Identity("Jürgen", Role.USER) and user_of(request) == "Jürgen"
    assert identity_of(SimpleNamespace(headers={USER_HEADER: "x", ROLE_HEADER: "root"})) is None
    assert identity_of(None) is None and user_of(SimpleNamespace(headers={}, username="gr")) == "gr"
