"""The Extensions tab as a person uses it: read the states, switch one off, install from git, and
find installing refused on a server that listens on the network."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.server_process import Server, start_server, stop_server

pytestmark = [pytest.mark.browser, pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")]

GIT_ENV = {"GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid", "GIT_COMMITTER_NAME": "Test",
           "GIT_COMMITTER_EMAIL": "test@example.invalid", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}


def write_extension(folder: Path, name: str, code: str) -> None:
    folder.mkdir(parents=True)
    (folder / "extension.yaml").write_text(f"name: {name}\nversion: 1.0.0\napi_version: 1\nentry: main.py\n"
                                           "requirements: ['atelier-demo-requirement']\n", encoding="utf-8")
    (folder / "main.py").write_text(code, encoding="utf-8")


def bare_repo(tmp: Path, name: str) -> Path:
    work, bare = tmp / f"{name}-work", tmp / f"{name}.git"
    write_extension(work, name, "def setup(ext):\n    pass\n")
    env = {**os.environ, **GIT_ENV}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "first"]):
        subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True)
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], env=env, check=True, capture_output=True)
    return bare


def data_dir_with_extensions(tmp: Path) -> tuple[Path, Path]:
    """(data dir with one good and one broken user extension, an empty checkpoints folder)."""
    data, checkpoints = tmp / "data", tmp / "checkpoints"
    checkpoints.mkdir(parents=True)
    write_extension(data / "extensions" / "good-ext", "good-ext",
                    "import gradio as gr\nfrom modules.extension_api import Hook\n\n"
                    "def setup(ext):\n"
                    "    ext.on(Hook.SETTINGS_SECTION, lambda ctx: gr.Markdown('good-ext settings here'))\n")
    write_extension(data / "extensions" / "broken-ext", "broken-ext", "def setup(ext)\n    pass\n")
    return data, checkpoints


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data, checkpoints = data_dir_with_extensions(tmp_path_factory.mktemp("ext-ui"))
    proc, srv = start_server(data, checkpoints)
    yield srv
    stop_server(proc)


def open_tab(page) -> None:
    page.get_by_role("tab", name="Extensions").click()
    page.locator("#extensions_table table").wait_for()


def test_table_shows_states_and_errors_and_apply_persists(page, server: Server) -> None:
    open_tab(page)
    table = page.locator("#extensions_table").inner_text()
    assert "good-ext" in table and "broken-ext" in table
    assert "failed" in table and "SyntaxError" in table
    page.get_by_role("tab", name="Settings").click()  # an extension's own section is in the Settings tab
    page.locator("#extensions_settings_good-ext").get_by_text("good-ext").first.click()  # open its accordion
    page.locator("#extensions_settings_good-ext").get_by_text("good-ext settings here").wait_for()
    open_tab(page)
    page.locator("#extensions_enabled").get_by_label("good-ext").uncheck()
    page.locator("#extensions_apply").click()
    page.wait_for_function("() => document.querySelector('#extensions_apply_result').innerText.includes('restart')")
    state = yaml.safe_load((server.data_dir / "extensions.yaml").read_text(encoding="utf-8"))
    assert "good-ext" in state["disabled"]
    assert "disabled at the next start" in page.locator("#extensions_table").inner_text()


def test_install_from_a_local_repository(page, server: Server, tmp_path: Path) -> None:
    bare = bare_repo(tmp_path, "fresh-ext")
    open_tab(page)
    page.locator("#extensions_install_url textarea").fill(str(bare))
    page.locator("#extensions_install").click()
    # The server says what it would install and waits for this page's own confirmation.
    page.wait_for_function(
        "() => document.querySelector('#extensions_install_result textarea').value.includes('Press Confirm')")
    assert not (server.data_dir / "extensions" / "fresh-ext").exists()
    page.locator("#extensions_install_confirm").click()
    page.wait_for_function(
        "() => document.querySelector('#extensions_install_result textarea').value.includes('Installed fresh-ext')")
    assert "fresh-ext" in page.locator("#extensions_table").inner_text()
    # The new extension is chosen under Requirements, which then lists what it needs.
    page.wait_for_function(
        "() => document.querySelector('#extensions_requirements').innerText.includes('atelier-demo-requirement')")
    assert (server.data_dir / "extensions" / "fresh-ext" / "main.py").is_file()
    page.reload()
    open_tab(page)
    # The table is filled again on every page load (the page itself holds the one built at the start).
    page.wait_for_function(
        "() => document.querySelector('#extensions_table').innerText.includes('loads at the next start')")
    assert "fresh-ext" in page.locator("#extensions_table").inner_text()


def test_listen_refuses_installing(browser, tmp_path: Path) -> None:
    data, checkpoints = data_dir_with_extensions(tmp_path)
    proc, srv = start_server(data, checkpoints, "--listen")
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(60_000)
        page.goto(srv.url + "/")
        open_tab(page)
        assert "refused while Atelier serves the network" in page.locator("#extensions_locked").inner_text()
        assert page.locator("#extensions_install").is_disabled()
        assert page.locator("#extensions_install_requirements").is_disabled()
        assert page.locator("#extensions_install_url textarea").is_disabled()
        context.close()
    finally:
        stop_server(proc)
