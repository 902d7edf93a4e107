"""Installing extensions and their requirements needs the server's own confirmation, tied to the
session, the signed-in user and the exact extension on disk; nothing a request sends stands in for it.

Each test plays the attacker against the Extensions tab's real event functions (found by the
elem_id of the button that triggers them, as a forged event would name them by fn_index), or
against Gradio's queue protocol itself. pip never really runs: ``subprocess.run`` is replaced by a
recorder for pip commands (git still runs, on local repositories).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from starlette.testclient import TestClient

from modules.server_effects import Effect, effect_of
from modules.services import extension_install
from modules.services.extension_install import ExtensionInstaller
from modules.services.extension_manifest import read_manifest
from modules.ui import extensions_tab
from tests.conftest import make_services

CATEGORY = "7 extension install"
NEEDS = "needs"  # a user extension with requirements, installed before the tests start
ASK_REQUIREMENTS, CONFIRM_REQUIREMENTS = "extensions_install_requirements", "extensions_install_requirements_confirm"
FORGED_TOKENS = ["", "True", "true", "trust", "1", "forged-token", "x" * 43]


def request(session: str, user: str | None = None) -> gr.Request:
    return gr.Request(username=user, session_hash=session)


def write_extension(folder: Path, name: str, version: str = "1.0.0", requirements: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", f"version: {version}", "api_version: 1", "entry: main.py"]
    if requirements:
        lines.append("requirements: [" + ", ".join(f"'{r}'" for r in requirements) + "]")
    (folder / "extension.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "main.py").write_text("def setup(ext):\n    pass\n", encoding="utf-8")
    return folder


@dataclasses.dataclass(frozen=True)
class PipRuns:
    commands: list[tuple[list[str], Path | None]]

    @property
    def count(self) -> int:
        return len(self.commands)


@pytest.fixture
def pip_runs(monkeypatch: pytest.MonkeyPatch) -> PipRuns:
    """Every pip command the installer runs, with its folder; pip itself never runs. git runs for real."""
    runs = PipRuns([])
    real_run = subprocess.run

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
        if command[1:3] == ["-m", "pip"]:
            runs.commands.append((command, kwargs.get("cwd")))
            return subprocess.CompletedProcess(command, 0, stdout="pip ok\n")
        return real_run(command, **kwargs)

    monkeypatch.setattr(extension_install.subprocess, "run", run)
    return runs


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in (("GIT_AUTHOR_NAME", "Test"), ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
                       ("GIT_COMMITTER_NAME", "Test"), ("GIT_COMMITTER_EMAIL", "test@example.invalid"),
                       ("GIT_CONFIG_GLOBAL", "/dev/null"), ("GIT_CONFIG_NOSYSTEM", "1")):
        monkeypatch.setenv(key, value)


class Tab:
    """The Extensions tab built on real services; its event functions by trigger elem_id."""

    def __init__(self, services: Any) -> None:
        self.services = services
        with gr.Blocks() as self.demo:
            extensions_tab.build_tab(services, self.demo)

    def handler(self, elem_id: str, event: str = "click") -> Callable[..., Any]:
        for block_fn in self.demo.fns.values():
            for target, name in block_fn.targets:
                if name == event and getattr(self.demo.blocks.get(target), "elem_id", None) == elem_id:
                    return block_fn.fn
        raise AssertionError(f"no {event} handler on #{elem_id}")

    def ask_requirements(self, name: str, req: gr.Request) -> tuple[str, str]:
        """(what the page shows, the token the page keeps) after pressing Install requirements."""
        text, token, _button = self.handler(ASK_REQUIREMENTS)(name, req)
        return text, token

    def confirm_requirements(self, token: str | None, req: gr.Request) -> str:
        return self.handler(CONFIRM_REQUIREMENTS)(token, req)[0]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    write_extension(tmp_path / "data" / "extensions" / NEEDS, NEEDS, requirements=("atelier-demo-req>=1",))
    return tmp_path / "data"


@pytest.fixture
def services(data_dir: Path, tmp_path: Path) -> Iterator[Any]:
    svc = make_services(data_dir, tmp_path / "no-models")
    yield svc
    svc.close()


@pytest.fixture
def tab(services: Any) -> Tab:
    return Tab(services)


def refused(text: str, pip_runs: PipRuns, runs_before: int = 0) -> bool:
    return text.startswith("Not done:") and pip_runs.count == runs_before


# --- no confirmation, no pip ---------------------------------------------------------------------

@pytest.mark.parametrize("token", FORGED_TOKENS + [None])
def test_confirm_without_an_ask_in_this_session_runs_nothing(tab: Tab, pip_runs: PipRuns, token: str | None) -> None:
    with pytest.warns(UserWarning, match="Nothing to confirm"):  # the UI says why (gr.Warning)
        text = tab.confirm_requirements(token, request("A"))
    assert refused(text, pip_runs)


def test_asking_runs_nothing_and_says_exactly_what_would_be_installed(tab: Tab, pip_runs: PipRuns) -> None:
    text, token = tab.ask_requirements(NEEDS, request("A"))
    assert "needs 1.0.0" in text and "atelier-demo-req>=1" in text and "Confirm" in text
    assert token and token not in text
    assert pip_runs.count == 0


def test_a_token_one_character_off_is_refused(tab: Tab, pip_runs: PipRuns) -> None:
    _text, token = tab.ask_requirements(NEEDS, request("A"))
    with pytest.warns(UserWarning, match="Nothing to confirm"):
        assert refused(tab.confirm_requirements(token[:-1] + ("A" if token[-1] != "A" else "B"), request("A")),
                       pip_runs)


# --- tied to the session and the user ------------------------------------------------------------

@pytest.mark.parametrize(("asker", "confirmer", "why"), [
    (request("A"), request("B"), "another browser session"),
    (request("A", "alice"), request("B", "alice"), "another browser session"),
    (request("A", "alice"), request("A", "mallory"), "another user"),
    (request("A", "alice"), request("A"), "another user"),
    (request("A"), request("A", "alice"), "another user"),
])
def test_a_token_is_refused_in_another_session_or_for_another_user(tab: Tab, pip_runs: PipRuns, asker: gr.Request,
                                                                  confirmer: gr.Request, why: str) -> None:
    _text, token = tab.ask_requirements(NEEDS, asker)
    with pytest.warns(UserWarning, match=why):
        assert refused(tab.confirm_requirements(token, confirmer), pip_runs)
    # Shown to the wrong session, the token may have leaked: it is void for its owner too.
    with pytest.warns(UserWarning, match="Nothing to confirm"):
        assert refused(tab.confirm_requirements(token, asker), pip_runs)
    _text, fresh = tab.ask_requirements(NEEDS, asker)
    assert tab.confirm_requirements(fresh, asker) == "pip ok\n" and pip_runs.count == 1


def test_a_request_without_a_session_cannot_ask(tab: Tab, pip_runs: PipRuns) -> None:
    with pytest.warns(UserWarning, match="no browser session"):
        text, token = tab.ask_requirements(NEEDS, request(""))
    assert text.startswith("Not done:") and token == ""


# --- single use, short-lived, replaced by a newer question -------------------------------------

def test_a_token_is_single_use(tab: Tab, pip_runs: PipRuns) -> None:
    _text, token = tab.ask_requirements(NEEDS, request("A", "alice"))
    assert tab.confirm_requirements(token, request("A", "alice")) == "pip ok\n"
    command, folder = pip_runs.commands[0]
    assert command[-1] == "atelier-demo-req>=1" and folder == tab.services.paths.user_extensions_dir / NEEDS
    with pytest.warns(UserWarning, match="already used"):
        assert refused(tab.confirm_requirements(token, request("A", "alice")), pip_runs, runs_before=1)


def test_a_newer_question_replaces_the_older_one(tab: Tab, pip_runs: PipRuns) -> None:
    _text, first = tab.ask_requirements(NEEDS, request("A"))
    _text, second = tab.ask_requirements(NEEDS, request("A"))
    with pytest.warns(UserWarning, match="replaced by a newer question"):
        assert refused(tab.confirm_requirements(first, request("A")), pip_runs)
    assert tab.confirm_requirements(second, request("A")) == "pip ok\n"


def test_an_expired_token_is_refused(services: Any, pip_runs: PipRuns) -> None:
    now = [1000.0]
    installer = ExtensionInstaller(services.paths.user_extensions_dir, confirm_ttl_s=120.0, clock=lambda: now[0])
    tab = Tab(dataclasses.replace(services, installer=installer))
    text, token = tab.ask_requirements(NEEDS, request("A"))
    assert "within 2 minutes" in text
    now[0] += 121.0
    with pytest.warns(UserWarning, match="expired"):
        assert refused(tab.confirm_requirements(token, request("A")), pip_runs)


def test_unconfirmed_questions_do_not_pile_up(services: Any, pip_runs: PipRuns) -> None:
    tab = Tab(services)
    tokens = [tab.ask_requirements(NEEDS, request(f"forged-{i}"))[1] for i in range(500)]
    with pytest.warns(UserWarning, match="Nothing to confirm"):  # the oldest were dropped
        assert refused(tab.confirm_requirements(tokens[0], request("forged-0")), pip_runs)
    assert tab.confirm_requirements(tokens[-1], request("forged-499")) == "pip ok\n"


# --- tied to the exact extension on disk -----------------------------------------------------------

@pytest.mark.parametrize(("version", "requirements", "why"), [
    ("1.1.0", ("atelier-demo-req>=1",), "it is now needs 1.1.0"),
    ("1.0.0", ("atelier-demo-req>=1", "evil-package"), "changed on disk"),
])
def test_a_token_for_one_version_is_refused_once_the_extension_changed(tab: Tab, pip_runs: PipRuns, version: str,
                                                                      requirements: tuple[str, ...], why: str) -> None:
    folder = tab.services.paths.user_extensions_dir / NEEDS
    _text, token = tab.ask_requirements(NEEDS, request("A"))
    write_extension(folder, NEEDS, version, requirements)
    with pytest.warns(UserWarning, match=why):
        assert refused(tab.confirm_requirements(token, request("A")), pip_runs)
    text, fresh = tab.ask_requirements(NEEDS, request("A"))  # the new version, asked about afresh
    assert f"needs {version}" in text and ", ".join(requirements) in text
    assert tab.confirm_requirements(fresh, request("A")) == "pip ok\n"
    assert pip_runs.commands[0][0][-len(requirements):] == list(requirements)


def test_a_token_is_refused_once_the_extension_is_gone(tab: Tab, pip_runs: PipRuns) -> None:
    _text, token = tab.ask_requirements(NEEDS, request("A"))
    shutil.rmtree(tab.services.paths.user_extensions_dir / NEEDS)
    with pytest.warns(UserWarning, match="changed since you asked"):
        assert refused(tab.confirm_requirements(token, request("A")), pip_runs)


# --- --listen, and the marks the request guard reads ---------------------------------------------

def test_listen_refuses_asking_and_the_tab_says_why(services: Any, pip_runs: PipRuns) -> None:
    locked = ExtensionInstaller(services.paths.user_extensions_dir, network_exposed=True)
    tab = Tab(dataclasses.replace(services, installer=locked))
    for elem_id, args in ((ASK_REQUIREMENTS, (NEEDS,)), ("extensions_install", ("https://host/x.git", "")),
                          ("extensions_update", (NEEDS,))):
        with pytest.warns(UserWarning, match="--enable-insecure-extension-access"):
            text, token, _button = tab.handler(elem_id)(*args, request("A"))
        assert "refused while Atelier serves the network" in text and token == ""
    assert pip_runs.count == 0


def test_every_handler_that_changes_the_server_is_marked(tab: Tab) -> None:
    marked = ["extensions_apply", "extensions_install", "extensions_install_confirm", "extensions_update",
              "extensions_update_confirm", ASK_REQUIREMENTS, CONFIRM_REQUIREMENTS,
              "extensions_check_updates"]  # git fetch writes into the extension's .git
    for elem_id in marked:
        assert effect_of(tab.handler(elem_id)) is Effect.SERVER, elem_id
    # Showing a list, or forgetting a question on the page, changes nothing on the server.
    assert effect_of(tab.handler("extensions_requirements_for", "change")) is Effect.OWN
    assert effect_of(tab.handler("extensions_install_url", "input")) is Effect.OWN


# --- the whole flow, with real git ---------------------------------------------------------------

def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def published(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """(bare repository, working copy that pushes to it) of an extension with one requirement."""
    work = write_extension(tmp_path / f"{name}-work", name, requirements=("atelier-demo-req",))
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    bare = tmp_path / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp_path)
    git("remote", "add", "origin", str(bare), cwd=work)
    return bare, work


def publish(work: Path, name: str, version: str) -> None:
    write_extension(work, name, version, ("atelier-demo-req",))
    git("commit", "-q", "-am", version, cwd=work)
    git("push", "-q", "origin", "main", cwd=work)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_install_update_and_requirements_work_end_to_end(tab: Tab, pip_runs: PipRuns, tmp_path: Path) -> None:
    bare, work = published(tmp_path, "fresh")
    folder = tab.services.paths.user_extensions_dir / "fresh"
    me = request("A", "alice")

    text, token, button = tab.handler("extensions_install")(str(bare), "", me)
    assert "fresh.git" in text and button["visible"] is True and not folder.exists()  # asking clones nothing
    text, cleared, hidden, table, _targets, requirements = tab.handler("extensions_install_confirm")(token, me)
    assert text.startswith("Installed fresh 1.0.0") and cleared == "" and hidden["visible"] is False
    assert "fresh" in table and requirements["value"] == "fresh" and (folder / "main.py").is_file()

    publish(work, "fresh", "1.1.0")
    text, token, _button = tab.handler("extensions_update")("fresh", me)
    assert "fresh 1.0.0" in text and "version 1.1.0" in text
    assert read_manifest(folder).version == "1.0.0"
    text = tab.handler("extensions_update_confirm")(token, me)[0]
    assert "Updated fresh to 1.1.0" in text and read_manifest(folder).version == "1.1.0"

    _text, token = tab.ask_requirements("fresh", me)
    assert tab.confirm_requirements(token, me) == "pip ok\n"
    assert pip_runs.commands == [([*pip_runs.commands[0][0][:-1], "atelier-demo-req"], folder)]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_an_update_token_is_refused_once_the_extension_moved_on(tab: Tab, pip_runs: PipRuns, tmp_path: Path) -> None:
    bare, work = published(tmp_path, "moving")
    me = request("A")
    tab.handler("extensions_install_confirm")(tab.handler("extensions_install")(str(bare), "", me)[1], me)
    folder = tab.services.paths.user_extensions_dir / "moving"
    publish(work, "moving", "1.1.0")
    _text, token, _button = tab.handler("extensions_update")("moving", me)
    write_extension(folder, "moving", "1.0.1", ("atelier-demo-req",))  # changed by hand in between
    git("commit", "-q", "-am", "local", cwd=folder)
    head = git("rev-parse", "HEAD", cwd=folder)
    with pytest.warns(UserWarning, match="it is now moving 1.0.1"):
        text = tab.handler("extensions_update_confirm")(token, me)[0]
    assert text.startswith("Not done:") and git("rev-parse", "HEAD", cwd=folder) == head


# --- through Gradio's own protocol ---------------------------------------------------------------

class GradioWire:
    """Raw ``POST /gradio_api/queue/join`` by fn_index, as any page or script can send them."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        config = client.get("/config").json()
        elem_ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
        self.fn_index = {(elem_ids.get(target), event): dep.get("id", i)
                         for i, dep in enumerate(config["dependencies"]) for target, event in dep["targets"]}

    def click(self, elem_id: str, data: list[Any], session: str) -> dict[str, Any]:
        """The finished event's message (its output data, or its error), and any warning it raised."""
        body = {"data": data, "fn_index": self.fn_index[(elem_id, "click")], "session_hash": session,
                "event_data": None, "trigger_id": None}
        joined = self.client.post("/gradio_api/queue/join", json=body)
        assert joined.status_code == 200, joined.text
        done: dict[str, Any] = {"warnings": []}
        with self.client.stream("GET", f"/gradio_api/queue/data?session_hash={session}") as stream:
            for line in stream.iter_lines():  # to the end: the server closes it after the last event
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") == "log":
                    done["warnings"].append(message["log"])
                if message.get("msg") == "process_completed":
                    done.update(message)
        return done


def test_forged_events_through_gradios_queue_install_nothing(data_dir: Path, tmp_path: Path,
                                                              pip_runs: PipRuns) -> None:
    import app as app_module
    from modules.cmd_args import parse_flags
    from modules.web.credentials import load_auth

    flags = parse_flags([], {})
    services = make_services(data_dir, tmp_path / "no-models")
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    try:
        with TestClient(app_module._build_app(flags, services, auth), base_url="http://127.0.0.1") as client:
            wire = GradioWire(client)
            for forged in (["True"], [True], ["trust"], [None]):  # a "trust" value in place of a token
                done = wire.click(CONFIRM_REQUIREMENTS, forged, "attacker")
                assert done["output"]["data"][0].startswith("Not done:") and done["warnings"]
            # The ask itself takes no "trust": extra values change nothing, and nothing is installed.
            asked = wire.click(ASK_REQUIREMENTS, [NEEDS, True, "trust"], "victim")["output"]["data"]
            assert "needs 1.0.0" in asked[0] and pip_runs.count == 0
            stolen = asked[1]
            done = wire.click(CONFIRM_REQUIREMENTS, [stolen], "attacker")
            assert "another browser session" in done["output"]["data"][0] and pip_runs.count == 0

            token = wire.click(ASK_REQUIREMENTS, [NEEDS], "victim")["output"]["data"][1]
            assert wire.click(CONFIRM_REQUIREMENTS, [token], "victim")["output"]["data"][0] == "pip ok\n"
            assert wire.click(CONFIRM_REQUIREMENTS, [token], "victim")["output"]["data"][0].startswith("Not done:")
            assert pip_runs.count == 1
    finally:
        services.close()
