"""The file rule: another user's output is not found through Gradio's file route, however spelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.identity import Identity, Role
from modules.web.file_rule import file_route_target, file_rule

ANN, BOB, BOSS = Identity("ann", Role.USER), Identity("Bob", Role.USER), Identity("boss", Role.ADMIN)


@pytest.fixture()
def outputs(tmp_path: Path) -> Path:
    root = tmp_path / "outputs"
    for relative in ("ann/txt2img-images/a.png", "bob/txt2img-images/b.png", "txt2img-images/old-ann.png",
                     "txt2img-images/shared.png"):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"png")
    return root


def _rule(outputs: Path, per_user: bool = True, subpath: str = ""):
    jobs = {outputs / "txt2img-images/old-ann.png": "ann", outputs / "bob/txt2img-images/b.png": "Bob"}
    accounts = {"ann": "ann", "bob": "Bob"}

    def owner_of(path: Path) -> str | None:
        if path.parent == outputs.resolve():
            return accounts.get(path.name)
        return jobs.get(path)

    return file_rule(outputs, subpath, owner_of, lambda: per_user)


def test_another_users_folder_and_job_files_are_refused_to_users_only(outputs: Path) -> None:
    allowed = _rule(outputs)
    ann_file, bob_file = outputs / "ann/txt2img-images/a.png", outputs / "bob/txt2img-images/b.png"
    assert allowed(f"/gradio_api/file={ann_file}", ANN)
    assert not allowed(f"/gradio_api/file={ann_file}", BOB)  # ann's folder
    assert not allowed(f"/gradio_api/file={bob_file}", ANN)  # bob's folder and job
    assert allowed(f"/gradio_api/file={bob_file}", BOB)
    assert not allowed(f"/gradio_api/file={outputs}/txt2img-images/old-ann.png", BOB)  # ann's job, shared folder
    assert allowed(f"/gradio_api/file={outputs}/txt2img-images/shared.png", BOB)  # nobody's
    for who in (BOSS, None):  # admins, and a server without sign-in
        assert allowed(f"/gradio_api/file={ann_file}", who)


@pytest.mark.parametrize("spelling", [
    "/gradio_api/file={f}", "//gradio_api//file={f}", "/GRADIO_API/File={f}", "/gradio_api/file={d}/../ann/txt2img-images/a.png",
    "/gradio_api/file%3D{f}", "/gradio_api/file={q}", "/studio/gradio_api/file={f}",
])
def test_any_spelling_of_the_route_or_the_path_is_refused(outputs: Path, spelling: str) -> None:
    target = outputs / "ann/txt2img-images/a.png"
    quoted = str(target).replace("/", "%2F")
    path = spelling.format(f=target, d=outputs / "bob", q=quoted)
    subpath = "/studio" if path.startswith("/studio") else ""
    assert not _rule(outputs, subpath=subpath)(path, BOB)


def test_a_link_into_another_users_folder_is_refused(outputs: Path, tmp_path: Path) -> None:
    link = tmp_path / "elsewhere.png"
    link.symlink_to(outputs / "ann/txt2img-images/a.png")
    assert not _rule(outputs)(f"/gradio_api/file={link}", BOB)


def test_other_routes_and_files_outside_outputs_are_not_its_business(outputs: Path, tmp_path: Path) -> None:
    allowed = _rule(outputs)
    assert allowed("/sdapi/v1/options", BOB)
    assert allowed(f"/gradio_api/upload={outputs}/ann/txt2img-images/a.png", BOB)
    assert allowed(f"/gradio_api/file={tmp_path}/other.png", BOB)
    assert allowed(f"/studio/gradio_api/file={outputs}/ann/txt2img-images/a.png", BOB)  # not under this subpath
    assert file_route_target("/app/gradio_api/file=x.png", "/app") == "x.png"
    assert file_route_target("/appx/gradio_api/file=x.png", "/app") is None


def test_folders_count_only_while_outputs_go_per_user(outputs: Path) -> None:
    allowed = _rule(outputs, per_user=False)
    assert allowed(f"/gradio_api/file={outputs}/ann/txt2img-images/a.png", BOB)  # no job says it is ann's
    assert not allowed(f"/gradio_api/file={outputs}/bob/txt2img-images/b.png", ANN)  # bob's job still is
