"""The accounts routes: the caller's own account (password, API tokens) and an admin's users.

One app (in process, API only, no model needed) with an admin and a user in its database.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.identity import Role
from modules.web.credentials import load_auth
from tests.conftest import make_services

API = "/sdapi/v1"


def basic(name: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()}


ROOT = basic("root", "root-password-1")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("data")
    services = make_services(data, data / "no-models")
    services.accounts.add("root", "root-password-1", Role.ADMIN)
    services.accounts.add("dana", "dana-password-1", Role.USER)
    app = app_module._build_app(parse_flags(["--api", "--nowebui"], {}), services, load_auth(None, None, None))
    yield TestClient(app, base_url="http://127.0.0.1")
    services.close()


def test_who_am_i_and_a_password_change(client: TestClient) -> None:
    old, new = basic("dana", "dana-password-1"), basic("dana", "dana-password-2")
    me = client.get(f"{API}/account", headers=old).json()
    assert me == {"name": "dana", "role": "user", "signed_in": True, "limits": me["limits"]}
    wrong = client.post(f"{API}/account/password", json={"current_password": "nope-nope-nope",
                                                         "new_password": "dana-password-2"}, headers=old)
    assert wrong.status_code == 400
    changed = client.post(f"{API}/account/password", json={"current_password": "dana-password-1",
                                                           "new_password": "dana-password-2"}, headers=old)
    assert changed.status_code == 200, changed.text
    assert client.get(f"{API}/account", headers=old).status_code == 401
    assert client.get(f"{API}/account", headers=new).json()["name"] == "dana"


def test_a_token_works_until_revoked(client: TestClient) -> None:
    dana = basic("dana", "dana-password-2")
    made = client.post(f"{API}/account/tokens", json={"label": "my script"}, headers=dana)
    assert made.status_code == 200, made.text
    token = made.json()
    assert token["label"] == "my script" and token["token"]
    bearer = {"Authorization": f"Bearer {token['token']}"}
    assert client.get(f"{API}/account", headers=bearer).json()["name"] == "dana"
    listed = client.get(f"{API}/account/tokens", headers=bearer).json()
    assert [t["id"] for t in listed] == [token["id"]] and "token" not in listed[0]  # the secret is shown once
    assert client.delete(f"{API}/account/tokens/{token['id']}", headers=ROOT).status_code == 404  # not root's
    assert client.delete(f"{API}/account/tokens/{token['id']}", headers=dana).status_code == 200
    assert client.get(f"{API}/account", headers=bearer).status_code == 401


def test_users_are_an_admins_business(client: TestClient) -> None:
    dana = basic("dana", "dana-password-2")
    assert client.get(f"{API}/users", headers=dana).status_code == 403
    body: dict[str, Any] = {"name": "erin", "password": "erin-password-1", "role": "user",
                            "limits": {"max_steps": 30}}
    assert client.post(f"{API}/users", json=body, headers=dana).status_code == 403
    added = client.post(f"{API}/users", json=body, headers=ROOT)
    assert added.status_code == 200, added.text
    assert added.json()["limits"]["max_steps"] == 30
    assert client.post(f"{API}/users", json=body, headers=ROOT).status_code == 409
    erin = basic("erin", "erin-password-1")
    assert client.get(f"{API}/account", headers=erin).json()["limits"]["max_steps"] == 30
    assert sorted(u["name"] for u in client.get(f"{API}/users", headers=ROOT).json()) == ["dana", "erin", "root"]

    promoted = client.post(f"{API}/users/erin", json={"role": "admin"}, headers=ROOT)
    assert promoted.status_code == 200 and promoted.json()["role"] == "admin"
    assert client.get(f"{API}/users", headers=erin).status_code == 200
    assert client.post(f"{API}/users", json={**body, "role": "boss"}, headers=ROOT).status_code == 422
    assert client.delete(f"{API}/users/erin", headers=ROOT).status_code == 200
    assert client.get(f"{API}/account", headers=erin).status_code == 401
    assert client.delete(f"{API}/users/erin", headers=ROOT).status_code == 404
