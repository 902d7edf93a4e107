"""Bringing users' extensions in: ``git clone``, ``git pull`` and ``pip install`` of their requirements.

This module owns every command that puts outside code into Atelier. A clone lands in a hidden
staging folder inside the user extensions folder, is checked (its manifest must read), and only then
is renamed into place, so a half-cloned or invalid extension is never picked up at the next start.
Commands run from argument lists, never through a shell; a URL is checked before git sees it and is
passed after ``--``. While Atelier serves the network (``--listen``/``--share``) all of it is refused
unless ``--enable-insecure-extension-access`` was given: anyone who reaches the page could otherwise
run code on this machine.
"""

from __future__ import annotations

import enum
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

from modules.errors import ExtensionError
from modules.services.extension_manifest import MANIFEST, Manifest, read_manifest

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 300.0
PIP_TIMEOUT_S = 1800.0
STAGING_PREFIX = ".installing-"  # hidden: the extension manager skips folders starting with "."
_REMOTE_SCHEMES = frozenset({"https", "http", "git", "ssh"})
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._~-]+@[A-Za-z0-9][A-Za-z0-9.-]*:[^\s]+$")  # git@host:owner/repo.git
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class Operation(enum.Enum):
    """What the network rule refuses, in the words of its message."""

    INSTALL = "Installing extensions"
    UPDATE = "Updating extensions"
    REQUIREMENTS = "Installing extension requirements"
    ANY = "Installing and updating extensions"


def refusal_message(operation: Operation) -> str:
    return (f"{operation.value} is refused while Atelier serves the network (--listen/--share); "
            "start it with --enable-insecure-extension-access to allow it.")


def checked_url(url: str) -> str:
    """``url`` as git will get it: a remote URL, ``user@host:path``, or a local folder as a file:// URL."""
    url = (url or "").strip()
    if not url:
        raise ExtensionError("Give the extension's git URL.")
    if url.startswith("-"):
        raise ExtensionError(f"Not a git URL: {url!r} (it looks like a command-line option)")
    if any(c.isspace() for c in url) or any(ord(c) < 32 for c in url):
        raise ExtensionError(f"Not a git URL: {url!r} (it contains spaces or line breaks)")
    if "://" in url:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme == "file":
            if not parts.path:
                raise ExtensionError(f"Not a git URL: {url!r} (no path)")
            return url
        if scheme not in _REMOTE_SCHEMES:
            raise ExtensionError(f"Not a git URL: {url!r}; use https://, http://, git://, ssh://, "
                                 "git@host:path, file:// or a local folder")
        if not parts.hostname or parts.hostname.startswith("-"):
            raise ExtensionError(f"Not a git URL: {url!r} (no valid host)")
        return url
    if _SCP_LIKE.match(url):
        return url
    local = Path(url).expanduser()
    if local.is_dir():
        # As a file:// URL: git cannot read a "name:path" folder as an ssh address, and --depth applies.
        return local.resolve().as_uri()
    raise ExtensionError(f"Not a git URL or an existing folder: {url!r}")


def _checked_branch(branch: str | None) -> str | None:
    branch = (branch or "").strip()
    if not branch:
        return None
    if not _BRANCH.match(branch) or ".." in branch or branch.endswith((".", "/", ".lock")):
        raise ExtensionError(f"Not a branch or tag name: {branch!r}")
    return branch


def _checked_folder(name: str | None) -> str | None:
    name = (name or "").strip()
    if name and not _FOLDER.match(name):
        raise ExtensionError(f"Folder name {name!r} may use letters, digits, '_', '-' and '.'")
    return name or None


def _redacted(url: str) -> str:
    """``url`` without a password or token, for logs and messages."""
    return re.sub(r"://[^/@\s]*@", "://***@", url)


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a leftover hidden staging folder is harmless; say so and go on
        log.warning("Could not remove %s: %s", path, exc)


def _extension_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
                   and (p / MANIFEST).exists()), key=lambda p: p.name.lower())


class ExtensionInstaller:
    """Installs, updates and equips users' extensions; one command at a time."""

    def __init__(self, user_dir: Path, network_exposed: bool = False, insecure_allowed: bool = False, *,
                 builtin_dir: Path | None = None, git_timeout_s: float = GIT_TIMEOUT_S,
                 pip_timeout_s: float = PIP_TIMEOUT_S) -> None:
        self.user_dir = user_dir
        self.builtin_dir = builtin_dir
        self._locked = network_exposed and not insecure_allowed
        self._git_timeout_s = git_timeout_s
        self._pip_timeout_s = pip_timeout_s
        self._lock = threading.Lock()  # two clones or pip runs at once would race on the same folders

    @property
    def locked_reason(self) -> str | None:
        """Why installing is refused in this run, or None when it is allowed."""
        return refusal_message(Operation.ANY) if self._locked else None

    def _check_allowed(self, operation: Operation) -> None:
        if self._locked:
            raise ExtensionError(refusal_message(operation))

    # --- what is on disk ----------------------------------------------------------------------

    def user_extensions(self) -> list[Manifest]:
        """The readable manifests in the user extensions folder, as they are on disk now."""
        manifests = []
        for folder in self._user_folders():
            try:
                manifests.append(read_manifest(folder))
            except ExtensionError:
                continue  # listed as failed by the extension manager, with the reason
        return manifests

    def user_folders(self) -> list[str]:
        """Folder names of the user extensions (what :meth:`update` takes)."""
        return [p.name for p in self._user_folders()]

    def _user_folders(self) -> list[Path]:
        if self.builtin_dir is not None and self.user_dir.resolve() == self.builtin_dir.resolve():
            return [p for p in _extension_folders(self.user_dir) if (p / ".git").exists()]
        return _extension_folders(self.user_dir)

    def _names_in_use(self) -> dict[str, Path]:
        names: dict[str, Path] = {}
        for root in (self.builtin_dir, self.user_dir):
            for folder in _extension_folders(root) if root is not None else []:
                try:
                    names.setdefault(read_manifest(folder).name, folder)
                except ExtensionError:
                    names.setdefault(folder.name, folder)
        return names

    # --- commands -----------------------------------------------------------------------------

    def install(self, url: str, branch: str | None = None, folder_name: str | None = None) -> Path:
        """Clone ``url`` (a shallow clone of ``branch`` when given) and move it into the user
        extensions folder as ``folder_name`` (default: the manifest's name); the new folder."""
        self._check_allowed(Operation.INSTALL)
        source, branch, folder_name = checked_url(url), _checked_branch(branch), _checked_folder(folder_name)
        if folder_name and (self.user_dir / folder_name).exists():  # known before cloning anything
            raise ExtensionError(f"A folder called {folder_name!r} already exists in {self.user_dir}")
        with self._lock:
            self.user_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.user_dir))
            try:
                clone = staging / "clone"
                self._git(["clone", "--quiet", "--depth", "1", *(["--branch", branch] if branch else []), "--", source,
                           str(clone)])
                manifest = self._checked_clone(clone, source)
                target = self.user_dir / (folder_name or manifest.name)
                self._refuse_existing(manifest.name, target)
                clone.rename(target)  # same filesystem: the extension appears whole or not at all
            finally:
                _remove(staging)
        log.info("Installed extension %s %s from %s into %s", manifest.name, manifest.version, _redacted(source),
                 target)
        return target

    def _checked_clone(self, clone: Path, source: str) -> Manifest:
        try:
            manifest = read_manifest(clone)
        except ExtensionError as exc:
            raise ExtensionError(f"{_redacted(source)} is not an Atelier extension: {exc}") from exc
        if not manifest.entry_file.is_file():
            raise ExtensionError(f"{_redacted(source)} is not an Atelier extension: its {MANIFEST} names "
                                 f"{manifest.entry_file.name}, which it does not contain")
        return manifest

    def _refuse_existing(self, name: str, target: Path) -> None:
        if target.exists():
            raise ExtensionError(f"A folder called {target.name!r} already exists in {self.user_dir}; "
                                 "remove it first or update that extension instead")
        in_use = self._names_in_use().get(name)
        if in_use is not None:
            raise ExtensionError(f"An extension called {name!r} is already installed ({in_use})")

    def update(self, name_or_folder: str) -> str:
        """``git pull --ff-only`` in a user extension's folder; git's output. Applies at the next start."""
        self._check_allowed(Operation.UPDATE)
        folder = self._git_folder(name_or_folder)
        with self._lock:
            output = self._git(["-C", str(folder), "pull", "--ff-only"])
        log.info("Updated extension in %s", folder)
        return output

    def check_for_updates(self, name_or_folder: str) -> str:
        """Fetch and say how many commits the extension's branch is behind its remote."""
        self._check_allowed(Operation.UPDATE)
        folder = self._git_folder(name_or_folder)
        with self._lock:
            self._git(["-C", str(folder), "fetch"])
            behind = self._git(["-C", str(folder), "rev-list", "--count", "HEAD..@{upstream}"]).strip()
        if behind in ("", "0"):
            return f"{folder.name} is up to date."
        return f"{folder.name}: {behind} new commit(s) available. Press Update to get them."

    def _git_folder(self, name_or_folder: str) -> Path:
        wanted = (name_or_folder or "").strip()
        if not wanted:
            raise ExtensionError("Choose an extension first.")
        folder = self._find_user_folder(wanted)
        if folder is None:
            if self._is_builtin(wanted):
                raise ExtensionError(f"{wanted} is built in: it is updated with Atelier itself")
            raise ExtensionError(f"No user extension called {wanted!r}")
        # Its own repository only: in a plain folder git would find and pull an enclosing one.
        if not (folder / ".git").exists():
            raise ExtensionError(f"{folder.name} was not installed with git, so it cannot be updated here")
        return folder

    def _is_builtin(self, wanted: str) -> bool:
        if self.builtin_dir is None:
            return False
        for folder in _extension_folders(self.builtin_dir):
            try:
                name = read_manifest(folder, builtin=True).name
            except ExtensionError:
                name = folder.name
            if wanted in (folder.name, name):
                return True
        return False

    def _find_user_folder(self, wanted: str) -> Path | None:
        """The user extension folder called ``wanted`` or holding the extension of that name."""
        folders = self._user_folders()
        by_folder = next((f for f in folders if f.name == wanted), None)
        if by_folder is not None:
            return by_folder
        return next((m.folder for m in self.user_extensions() if m.name == wanted), None)

    def install_requirements(self, manifest: Manifest) -> str:
        """``pip install`` the manifest's requirements into Atelier's Python; pip's output."""
        self._check_allowed(Operation.REQUIREMENTS)
        if not manifest.requirements:
            return f"{manifest.name} declares no requirements: nothing to install."
        for requirement in manifest.requirements:
            if requirement.startswith("-") or "\n" in requirement or "\r" in requirement:
                raise ExtensionError(f"{manifest.name}: {requirement!r} is not a requirement line "
                                     "(pip options are refused)")
        command = [sys.executable, "-m", "pip", "install", *manifest.requirements]
        with self._lock:
            # In the extension's folder, so relative paths in its requirements mean its own files.
            code, output = self._run(command, self._pip_timeout_s, "pip install", cwd=manifest.folder)
        if code != 0:
            raise ExtensionError(f"pip could not install the requirements of {manifest.name} "
                                 f"(exit {code}):\n{output}")
        log.info("Installed the requirements of extension %s: %s", manifest.name, ", ".join(manifest.requirements))
        return output

    # --- running commands ---------------------------------------------------------------------

    def _git(self, args: list[str]) -> str:
        """git's combined output; ExtensionError with it when git fails."""
        # ext:: would let a URL run any command; no terminal to ask for passwords on.
        what = "git " + (args[2] if args[0] == "-C" else args[0])
        code, output = self._run(["git", "-c", "protocol.ext.allow=never", *args], self._git_timeout_s, what)
        if code != 0:
            raise ExtensionError(f"{what} failed (exit {code}): {output.strip()}")
        return output

    @staticmethod
    def _run(command: list[str], timeout_s: float, what: str, cwd: Path | None = None) -> tuple[int, str]:
        """(exit code, stdout and stderr together) of ``command``; ExtensionError when it cannot run."""
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")  # never wait for a host-key question
        try:
            done = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout_s, check=False)
        except FileNotFoundError as exc:
            raise ExtensionError(f"{what}: {command[0]} is not installed or not on PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise ExtensionError(f"{what} took longer than {timeout_s:g} s and was stopped") from exc
        return done.returncode, done.stdout or ""
