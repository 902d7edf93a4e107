"""Installing, updating and equipping extensions from real (local, bare) git repositories, offline.

Everything goes through the installer's two steps (ask, then confirm with the token); what a forged
or mismatched confirmation cannot do is in tests/reliability/test_install_confirmation.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from modules.errors import ExtensionError
from modules.extension_api import Hook
from modules.services import extension_install, git_sources
from modules.services.extension_install import ExtensionInstaller
from modules.services.extension_manifest import read_manifest
from modules.services.extensions import ExtensionState
from modules.services.install_confirmation import Requester
from tests.conftest import make_services

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

MAIN = "from modules.extension_api import Hook\n\ndef setup(ext):\n    ext.on(Hook.APP_STARTED, lambda ctx: None)\n"
ME = Requester("session-me")


def install(installer: ExtensionInstaller, url: str, branch: str | None = None,
            folder_name: str | None = None) -> Path:
    """Ask, then confirm in the same session: the new extension's folder."""
    confirmation = installer.ask_install(url, ME, branch, folder_name)
    return installer.confirm(confirmation.token, ME).manifest.folder


def update(installer: ExtensionInstaller, name: str) -> str:
    return installer.confirm(installer.ask_update(name, ME).token, ME).output


def install_requirements(installer: ExtensionInstaller, name: str) -> str:
    return installer.confirm(installer.ask_requirements(name, ME).token, ME).output


@pytest.fixture(autouse=True)
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in (("GIT_AUTHOR_NAME", "Test"), ("GIT_AUTHOR_EMAIL", "test@example.invalid"),
                       ("GIT_COMMITTER_NAME", "Test"), ("GIT_COMMITTER_EMAIL", "test@example.invalid"),
                       ("GIT_CONFIG_GLOBAL", "/dev/null"), ("GIT_CONFIG_NOSYSTEM", "1")):
        monkeypatch.setenv(key, value)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def write_extension(folder: Path, name: str, version: str = "1.0.0", requirements: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"name: {name}", f"version: {version}", "api_version: 1", "entry: main.py"]
    if requirements:
        lines.append("requirements: [" + ", ".join(f"'{r}'" for r in requirements) + "]")
    (folder / "extension.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "main.py").write_text(MAIN, encoding="utf-8")
    return folder


def bare_repo(tmp: Path, name: str, with_manifest: bool = True) -> tuple[Path, Path]:
    """(bare repository, working copy that pushes to it)."""
    work = tmp / f"{name}-work"
    if with_manifest:
        write_extension(work, name)
    else:
        work.mkdir(parents=True)
        (work / "main.py").write_text(MAIN, encoding="utf-8")
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    bare = tmp / f"{name}.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=tmp)
    git("remote", "add", "origin", str(bare), cwd=work)
    return bare, work


def test_install_from_a_path_and_a_file_url(tmp_path: Path) -> None:
    bare, _ = bare_repo(tmp_path, "hello")
    installer = ExtensionInstaller(tmp_path / "extensions")
    confirmation = installer.ask_install(str(bare), ME)
    assert str(bare.name) in confirmation.summary and not (tmp_path / "extensions" / "hello").exists()
    folder = installer.confirm(confirmation.token, ME).manifest.folder
    assert folder == tmp_path / "extensions" / "hello"
    manifest = read_manifest(folder)
    assert (manifest.name, manifest.version) == ("hello", "1.0.0")
    assert (folder / "main.py").is_file() and (folder / ".git").exists()
    assert [p.name for p in (tmp_path / "extensions").iterdir()] == ["hello"]  # no staging folder left

    with pytest.raises(ExtensionError, match="already"):
        install(installer, bare.as_uri())
    with pytest.raises(ExtensionError, match="already installed"):
        install(installer, bare.as_uri(), folder_name="hello-again")
    with pytest.raises(ExtensionError, match="already exists"):  # refused when asking, before any clone
        installer.ask_install(bare.as_uri(), ME, folder_name="hello")
    assert [p.name for p in (tmp_path / "extensions").iterdir()] == ["hello"]

    other = ExtensionInstaller(tmp_path / "other")
    assert install(other, bare.as_uri(), branch="main", folder_name="renamed").name == "renamed"


def test_a_repository_without_manifest_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    bare, _ = bare_repo(tmp_path, "plain", with_manifest=False)
    installer = ExtensionInstaller(tmp_path / "extensions")
    with pytest.raises(ExtensionError, match="(?s)not an Atelier extension.*no extension.yaml"):
        install(installer, str(bare))
    assert list((tmp_path / "extensions").iterdir()) == []


def test_a_failed_clone_says_what_git_said(tmp_path: Path) -> None:
    bare, _ = bare_repo(tmp_path, "hello")
    installer = ExtensionInstaller(tmp_path / "extensions")
    with pytest.raises(ExtensionError, match="(?s)git clone failed.*no-such-branch"):
        install(installer, str(bare), branch="no-such-branch")
    assert list((tmp_path / "extensions").iterdir()) == []


def test_update_moves_to_exactly_the_commit_it_asked_about(tmp_path: Path) -> None:
    bare, work = bare_repo(tmp_path, "hello")
    installer = ExtensionInstaller(tmp_path / "extensions")
    folder = install(installer, bare.as_uri())
    assert "up to date" in installer.check_for_updates("hello")
    with pytest.raises(ExtensionError, match="up to date"):
        installer.ask_update("hello", ME)

    write_extension(work, "hello", version="1.1.0")
    git("commit", "-q", "-am", "second", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    asked_about = git("rev-parse", "HEAD", cwd=work).strip()
    assert "1 new commit" in installer.check_for_updates("hello")
    confirmation = installer.ask_update("hello", ME)
    assert "hello 1.0.0" in confirmation.summary and "version 1.1.0, 1 new commit" in confirmation.summary
    assert read_manifest(folder).version == "1.0.0"  # asking changes nothing

    write_extension(work, "hello", version="1.2.0")  # pushed after the ask: not what was confirmed
    git("commit", "-q", "-am", "third", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    outcome = installer.confirm(confirmation.token, ME)
    assert "Fast-forward" in outcome.output or "extension.yaml" in outcome.output
    assert outcome.manifest.version == read_manifest(folder).version == "1.1.0"
    assert git("rev-parse", "HEAD", cwd=folder).strip() == asked_about
    assert "version 1.2.0" in installer.ask_update("hello", ME).summary


def test_update_refuses_folders_git_does_not_own_and_built_ins(tmp_path: Path) -> None:
    user, builtin = tmp_path / "extensions", tmp_path / "builtin"
    write_extension(user / "handmade", "handmade")
    write_extension(builtin / "shipped", "shipped")
    installer = ExtensionInstaller(user, builtin_dir=builtin)
    with pytest.raises(ExtensionError, match="not installed with git"):
        installer.ask_update("handmade", ME)
    with pytest.raises(ExtensionError, match="built in"):
        installer.ask_update("shipped", ME)
    with pytest.raises(ExtensionError, match="No user extension"):
        installer.ask_update("missing", ME)


def test_network_exposed_refuses_unless_insecure_access_is_allowed(tmp_path: Path) -> None:
    bare, _ = bare_repo(tmp_path, "hello")
    exposed = ExtensionInstaller(tmp_path / "extensions", network_exposed=True)
    write_extension(tmp_path / "extensions" / "needs", "needs", requirements=["x"])
    assert exposed.locked_reason and "--enable-insecure-extension-access" in exposed.locked_reason
    for attempt in (lambda: exposed.ask_install(str(bare), ME), lambda: exposed.ask_update("hello", ME),
                    lambda: exposed.ask_requirements("needs", ME)):
        with pytest.raises(ExtensionError, match=r"refused while Atelier serves the network \(--listen/--share\)"):
            attempt()
    assert not (tmp_path / "extensions" / "hello").exists()
    allowed = ExtensionInstaller(tmp_path / "extensions", network_exposed=True, insecure_allowed=True)
    assert allowed.locked_reason is None
    assert install(allowed, str(bare)).is_dir()


@pytest.mark.parametrize("url", ["--upload-pack=touch x", "-u", "a b", "", "   ", "https://host/x\nmore",
                                 "ext::sh -c touch% /tmp/x", "ext::sh", "ftp://host/repo.git", "ssh://-oProxyCommand=x/y",
                                 "no-such-folder-here"])
def test_urls_that_are_not_git_addresses_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ExtensionError, match="git URL"):
        ExtensionInstaller(tmp_path / "extensions").ask_install(url, ME)
    assert not (tmp_path / "extensions").exists()


@pytest.mark.parametrize("url", ["https://github.com/owner/repo.git", "http://host:8080/r", "git://host/r",
                                 "ssh://git@host/r.git", "git@github.com:owner/repo.git", "file:///srv/repo.git"])
def test_git_addresses_are_accepted(url: str) -> None:
    assert git_sources.checked_url(url) == url


def test_credentials_in_a_url_are_not_repeated() -> None:
    assert git_sources.redacted("https://user:token@host/r.git") == "https://***@host/r.git"
    assert git_sources.redacted("git@host:r.git") == "git@host:r.git"


def test_bad_branch_names_are_refused(tmp_path: Path) -> None:
    bare, _ = bare_repo(tmp_path, "hello")
    for branch in ("--orphan", "a b", "x..y"):
        with pytest.raises(ExtensionError, match="branch"):
            ExtensionInstaller(tmp_path / "extensions").ask_install(str(bare), ME, branch=branch)


def tiny_wheel(folder: Path) -> Path:
    """A pure-Python wheel pip installs offline without building anything."""
    wheel = folder / "atelier_tinyreq-0.1-py3-none-any.whl"
    info = "atelier_tinyreq-0.1.dist-info"
    files = {"atelier_tinyreq/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: atelier-tinyreq\nVersion: 0.1\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return wheel


def test_requirements_install_offline_into_a_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # pip reads its options from the environment too: install into a scratch folder, never the venv.
    target = tmp_path / "site"
    for key, value in (("PIP_TARGET", str(target)), ("PIP_NO_INDEX", "1"), ("PIP_DISABLE_PIP_VERSION_CHECK", "1")):
        monkeypatch.setenv(key, value)
    wheel = tiny_wheel(tmp_path)
    installer = ExtensionInstaller(tmp_path / "extensions")
    write_extension(tmp_path / "extensions" / "needs", "needs", requirements=[str(wheel)])
    output = install_requirements(installer, "needs")
    assert "Successfully installed atelier-tinyreq-0.1" in output
    assert (target / "atelier_tinyreq" / "__init__.py").is_file()

    write_extension(tmp_path / "extensions" / "needs2", "needs2", requirements=["atelier-no-such-pkg-xyz"])
    with pytest.raises(ExtensionError, match="(?s)pip could not install.*atelier-no-such-pkg-xyz"):
        install_requirements(installer, "needs2")


def test_requirements_command_and_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        assert "shell" not in kwargs
        seen.append(command)
        return subprocess.CompletedProcess(command, 0, stdout="ok\n")

    monkeypatch.setattr(extension_install.subprocess, "run", fake_run)
    user = tmp_path / "extensions"
    installer = ExtensionInstaller(user)
    write_extension(user / "needs", "needs", requirements=["numpy>=1.0", "pillow"])
    confirmation = installer.ask_requirements("needs", ME)
    assert "needs 1.0.0" in confirmation.summary and "numpy>=1.0, pillow" in confirmation.summary
    assert seen == []  # asking runs nothing
    assert installer.confirm(confirmation.token, ME).output == "ok\n"
    assert seen == [[sys.executable, "-m", "pip", "install", "numpy>=1.0", "pillow"]]
    write_extension(user / "e", "e")
    with pytest.raises(ExtensionError, match="nothing to install"):
        installer.ask_requirements("e", ME)
    write_extension(user / "opt", "opt", requirements=["--index-url=http://evil/"])
    with pytest.raises(ExtensionError, match="pip options are refused"):
        installer.ask_requirements("opt", ME)
    with pytest.raises(ExtensionError, match="No extension called"):
        installer.ask_requirements("missing", ME)
    assert len(seen) == 1


def test_a_disabled_extension_stays_disabled_after_a_restart(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    folder = write_extension(tmp_path / "data" / "extensions" / "counter", "counter")
    (folder / "main.py").write_text(
        "from pathlib import Path\n\nfrom modules.extension_api import Hook\n\n"
        "def started(ctx):\n"
        f"    path = Path({str(calls)!r})\n"
        "    path.write_text((path.read_text() if path.exists() else '') + 'started\\n')\n\n"
        "def setup(ext):\n"
        "    ext.on(Hook.APP_STARTED, started)\n",
        encoding="utf-8")
    checkpoints = tmp_path / "checkpoints"  # no model is needed to load extensions
    checkpoints.mkdir()
    services = make_services(tmp_path / "data", checkpoints)
    try:
        assert services.extensions.get("counter").state is ExtensionState.ENABLED
        services.extensions.app_started()
        services.extensions.set_enabled("counter", False)
    finally:
        services.close()
    assert calls.read_text() == "started\n"

    again = make_services(tmp_path / "data", checkpoints)
    try:
        record = again.extensions.get("counter")
        assert record is not None and record.state is ExtensionState.DISABLED
        assert again.extensions.handlers(Hook.APP_STARTED) == []
        again.extensions.app_started()
    finally:
        again.close()
    assert calls.read_text() == "started\n"
