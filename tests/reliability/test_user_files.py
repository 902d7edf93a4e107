"""Outputs per user on a real server: a user's image lands in outputs/<user>/, another user gets 404
for it through Gradio's file route (an admin and its owner get it), and a user's gallery lists only
their own folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from modules.identity import ROLE_HEADER, USER_HEADER, Role
from modules.services.accounts import AccountStore
from modules.services.gallery import Gallery, GalleryQuery
from modules.services.studio_db import db_path, open_studio_db
from modules.ui.gallery import own_folder
from tests.reliability.support import API, output_pngs
from tests.server_process import Server, start_server, stop_server

CATEGORY = "2 files"
PASSWORD = "user-files-password-1"
SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 1, "save_images": True}


@pytest.fixture(scope="module")
def server(tiny_models: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("user-files")
    (data / "config.yaml").write_text("outputs_per_user: true\n")
    db = open_studio_db(db_path(data))
    accounts = AccountStore(db)
    for name, role in (("ann", Role.USER), ("bob", Role.USER), ("boss", Role.ADMIN)):
        accounts.add(name, PASSWORD, role)
    db.close()
    proc, srv = start_server(data, tiny_models.folder, "--api")
    try:
        yield srv
    finally:
        stop_server(proc)


def _signed_in(server: Server, name: str) -> httpx.Client:
    client = httpx.Client(base_url=server.url, timeout=120)
    assert client.post("/login", data={"username": name, "password": PASSWORD}).status_code == 200
    return client


def test_a_users_file_is_not_found_by_another_user(server: Server) -> None:
    with httpx.Client(base_url=server.url, auth=("ann", PASSWORD), timeout=300) as ann_api:
        assert ann_api.post(f"{API}/txt2img", json=SMALL).status_code == 200
    saved = output_pngs(server.data_dir)
    assert saved and all(p.relative_to(server.data_dir / "outputs").parts[0] == "ann" for p in saved)
    route = f"/gradio_api/file={saved[0]}"
    for name, expected in (("bob", 404), ("ann", 200), ("boss", 200)):
        client = _signed_in(server, name)
        try:
            assert client.get(route).status_code == expected, name
            if expected == 404:  # nor by another spelling of the path
                spelled = f"/gradio_api/file={saved[0].parent}/../{saved[0].parent.name}/{saved[0].name}"
                assert client.get(spelled).status_code == 404
        finally:
            client.close()


def test_a_users_gallery_lists_only_their_own_folder(server: Server, tmp_path: Path) -> None:
    gallery = Gallery(server.data_dir / "outputs", tmp_path / "cache")
    try:
        services = SimpleNamespace(options=SimpleNamespace(get=lambda: SimpleNamespace(outputs_per_user=True)))

        def request(name: str, role: Role) -> Any:
            return SimpleNamespace(headers={USER_HEADER: name, ROLE_HEADER: role.value}, username=name)

        seen = {who: {item.relative for item in
                      gallery.page(GalleryQuery(within=own_folder(services, request(who, role)))).items}
                for who, role in (("bob", Role.USER), ("ann", Role.USER), ("boss", Role.ADMIN))}
        assert seen["ann"] and all(r.startswith("ann/") for r in seen["ann"])
        assert seen["bob"] == set()  # bob made nothing: ann's files are not his to see
        assert seen["ann"] <= seen["boss"]
        assert gallery.folders(own_folder(services, request("bob", Role.USER))) == []
    finally:
        gallery.close()
