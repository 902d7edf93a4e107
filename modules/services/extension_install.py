"""Bringing users' extensions in: ``git clone``, ``git fetch`` + fast-forward, and ``pip install`` of
their requirements.

This module owns every command that puts outside code into Atelier. A clone lands in a hidden
staging folder inside the user extensions folder, is checked (its manifest must read), and only then
is renamed into place, so a half-cloned or invalid extension is never picked up at the next start.
Commands run from argument lists, never through a shell; a URL is checked before git sees it and is
passed after ``--``. While Atelier serves the network (``--listen``/``--share``) all of it is refused
unless ``--enable-insecure-extension-access`` was given: anyone who reaches the page could otherwise
run code on this machine.

Nothing is cloned, updated or pip-installed on a request's word. A user first asks (``ask_*``: what
exactly, for whom), then confirms with the one-time token the server issued for that ask, in the same
session and as the same user, while the extension on disk is still the one asked about
(:mod:`modules.services.install_confirmation`); :meth:`ExtensionInstaller.confirm` is the only way in.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from modules.errors import ExtensionError
from modules.services.extension_manifest import MANIFEST, Manifest, read_manifest
from modules.services.git_sources import checked_branch, checked_folder, checked_url, redacted
from modules.services.install_confirmation import (
    CONFIRM_TTL_S,
    Action,
    Confirmation,
    ConfirmationLedger,
    Requester,
    Subject,
)

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 300.0
PIP_TIMEOUT_S = 1800.0
STAGING_PREFIX = ".installing-"  # hidden: the extension manager skips folders starting with "."


class Operation(enum.Enum):
    """What the network rule refuses, in the words of its message."""

    INSTALL = "Installing extensions"
    UPDATE = "Updating extensions"
    REQUIREMENTS = "Installing extension requirements"
    ANY = "Installing and updating extensions"


def refusal_message(operation: Operation) -> str:
    return (f"{operation.value} is refused while Atelier serves the network (--listen/--share); "
            "start it with --enable-insecure-extension-access to allow it.")


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # a leftover hidden staging folder is harmless; say so and go on
        log.warning("Could not remove %s: %s", path, exc)


def _check_requirement_lines(manifest: Manifest) -> None:
    for requirement in manifest.requirements:
        if requirement.startswith("-") or "\n" in requirement or "\r" in requirement:
            raise ExtensionError(f"{manifest.name}: {requirement!r} is not a requirement line "
                                 "(pip options are refused)")


@dataclass(frozen=True)
class Outcome:
    """What a confirmed install, update or requirements install did."""

    action: Action
    manifest: Manifest  # the extension as it is on disk now
    output: str  # git's or pip's output


def _extension_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
                   and (p / MANIFEST).exists()), key=lambda p: p.name.lower())


class ExtensionInstaller:
    """Installs, updates and equips users' extensions, each only once confirmed; one command at a time."""

    def __init__(self, user_dir: Path, network_exposed: bool = False, insecure_allowed: bool = False, *,
                 builtin_dir: Path | None = None, git_timeout_s: float = GIT_TIMEOUT_S,
                 pip_timeout_s: float = PIP_TIMEOUT_S, confirm_ttl_s: float = CONFIRM_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.user_dir = user_dir
        self.builtin_dir = builtin_dir
        self._locked = network_exposed and not insecure_allowed
        self._git_timeout_s = git_timeout_s
        self._pip_timeout_s = pip_timeout_s
        self._lock = threading.Lock()  # two clones or pip runs at once would race on the same folders
        self._confirmations = ConfirmationLedger(confirm_ttl_s, clock)

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
        """Folder names of the user extensions (what :meth:`ask_update` takes)."""
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

    # --- asking: what would be installed, recorded for this requester ---------------------------

    def ask_install(self, url: str, requester: Requester, branch: str | None = None,
                    folder_name: str | None = None) -> Confirmation:
        """A confirmation to clone ``url`` (``branch`` when given) into the user extensions folder as
        ``folder_name`` (default: the manifest's name); nothing is cloned until it is confirmed."""
        self._check_allowed(Operation.INSTALL)
        source, branch, folder_name = checked_url(url), checked_branch(branch), checked_folder(folder_name)
        self._refuse_folder(folder_name)
        return self._issue(Subject(Action.INSTALL, source, folder=folder_name or "", target=branch or ""), requester)

    def ask_update(self, name_or_folder: str, requester: Requester) -> Confirmation:
        """Fetch a user extension's remote and ask to move it to the commit fetched, exactly."""
        self._check_allowed(Operation.UPDATE)
        folder = self._git_folder(name_or_folder)
        manifest = read_manifest(folder)
        with self._lock:
            self._git(["-C", str(folder), "fetch", "--quiet"])
            revision, digest = self._state_of(folder)
            target = self._git(["-C", str(folder), "rev-parse", "@{upstream}"]).strip()
            behind = self._git(["-C", str(folder), "rev-list", "--count", f"HEAD..{target}"]).strip()
        if behind in ("", "0"):
            raise ExtensionError(f"{manifest.name} is up to date: there is nothing to update.")
        note = f" (version {self._version_at(folder, target)}, {behind} new commit(s))"
        return self._issue(Subject(Action.UPDATE, manifest.name, str(folder), manifest.version, revision, digest,
                                   target, manifest.requirements, note), requester)

    def ask_requirements(self, name: str, requester: Requester) -> Confirmation:
        """A confirmation to ``pip install`` the requirements of the extension called ``name``."""
        self._check_allowed(Operation.REQUIREMENTS)
        manifest = self._manifest_named(name)
        if not manifest.requirements:
            raise ExtensionError(f"{manifest.name} declares no requirements: there is nothing to install.")
        _check_requirement_lines(manifest)
        revision, digest = self._state_of(manifest.folder)
        return self._issue(Subject(Action.REQUIREMENTS, manifest.name, str(manifest.folder), manifest.version,
                                   revision, digest, requirements=manifest.requirements), requester)

    def _issue(self, subject: Subject, requester: Requester) -> Confirmation:
        token = self._confirmations.issue(subject, requester)
        shown = redacted(subject.name) if subject.action is Action.INSTALL else subject.name
        return Confirmation(token, subject.summary(shown), self._confirmations.ttl_s)

    def _refuse_folder(self, folder_name: str | None) -> None:
        if folder_name and (self.user_dir / folder_name).exists():  # known before cloning anything
            raise ExtensionError(f"A folder called {folder_name!r} already exists in {self.user_dir}")

    def _manifest_named(self, name: str) -> Manifest:
        wanted = (name or "").strip()
        if not wanted:
            raise ExtensionError("Choose an extension first.")
        roots = [(self.user_dir, False), *([(self.builtin_dir, True)] if self.builtin_dir is not None else [])]
        for root, builtin in roots:
            for folder in _extension_folders(root):
                try:
                    manifest = read_manifest(folder, builtin)
                except ExtensionError:
                    continue
                if manifest.name == wanted:
                    return manifest
        raise ExtensionError(f"No extension called {wanted!r}")

    def _state_of(self, folder: Path) -> tuple[str, str]:
        """(git commit or "" outside git, sha256 of the manifest): what a confirmation is tied to."""
        try:
            digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
        except OSError as exc:
            raise ExtensionError(f"{folder}: cannot read its {MANIFEST} ({exc})") from exc
        # Its own repository only: in a plain folder git would report an enclosing one.
        revision = self._git(["-C", str(folder), "rev-parse", "HEAD"]).strip() if (folder / ".git").exists() else ""
        return revision, digest

    def _version_at(self, folder: Path, commit: str) -> str:
        """The manifest version at ``commit`` (for the summary only), or "unknown"."""
        try:
            data = yaml.safe_load(self._git(["-C", str(folder), "show", f"{commit}:{MANIFEST}"]))
        except (ExtensionError, yaml.YAMLError):
            return "unknown"
        return str(data.get("version", "unknown")) if isinstance(data, dict) else "unknown"

    # --- confirming: the one way anything is installed -------------------------------------------

    def confirm(self, token: str, requester: Requester) -> Outcome:
        """Do what ``token`` was issued for, if ``requester`` asked for it, it has not expired or been
        used, and the extension on disk is still the one it names; ExtensionError saying why not."""
        subject = self._confirmations.redeem(token, requester)
        self._check_allowed(Operation[subject.action.name])
        if subject.action is Action.INSTALL:
            return self._install(subject)
        if subject.action is Action.UPDATE:
            return self._update(subject)
        return self._install_requirements(subject)

    def _unchanged(self, subject: Subject) -> Manifest:
        """The extension ``subject`` names, as on disk now; ExtensionError when it changed since the ask."""
        folder = Path(subject.folder)
        try:
            manifest = read_manifest(folder)
            revision, digest = self._state_of(folder)
        except ExtensionError as exc:
            raise ExtensionError(f"{subject.name} changed since you asked ({exc}). Ask again.") from exc
        if (manifest.name, manifest.version) != (subject.name, subject.version):
            raise ExtensionError(f"{subject.name} {subject.version} changed since you asked: it is now "
                                 f"{manifest.name} {manifest.version}. Ask again.")
        if (revision, digest) != (subject.revision, subject.digest):
            raise ExtensionError(f"{subject.name} {subject.version} changed on disk since you asked. Ask again.")
        return manifest

    def _install(self, subject: Subject) -> Outcome:
        """Clone, check the manifest, and move the clone into place whole."""
        source, branch, folder_name = subject.name, subject.target or None, subject.folder or None
        self._refuse_folder(folder_name)
        with self._lock:
            self.user_dir.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.user_dir))
            try:
                clone = staging / "clone"
                output = self._git(["clone", "--quiet", "--depth", "1", *(["--branch", branch] if branch else []),
                                    "--", source, str(clone)])
                manifest = self._checked_clone(clone, source)
                target = self.user_dir / (folder_name or manifest.name)
                self._refuse_existing(manifest.name, target)
                clone.rename(target)  # same filesystem: the extension appears whole or not at all
            finally:
                _remove(staging)
        log.info("Installed extension %s %s from %s into %s", manifest.name, manifest.version, redacted(source),
                 target)
        return Outcome(Action.INSTALL, read_manifest(target), output)

    def _update(self, subject: Subject) -> Outcome:
        """Fast-forward to exactly the commit the user saw, if the extension is still as it was."""
        with self._lock:
            folder = Path(self._unchanged(subject).folder)
            output = self._git(["-C", str(folder), "merge", "--ff-only", subject.target])
        manifest = read_manifest(folder)
        log.info("Updated extension %s in %s to %s (%s)", subject.name, folder, manifest.version, subject.target)
        return Outcome(Action.UPDATE, manifest, output)

    def _install_requirements(self, subject: Subject) -> Outcome:
        """``pip install`` the requirements the user saw, if the extension is still as it was."""
        with self._lock:
            manifest = self._unchanged(subject)
            _check_requirement_lines(manifest)
            command = [sys.executable, "-m", "pip", "install", *manifest.requirements]
            # In the extension's folder, so relative paths in its requirements mean its own files.
            code, output = self._run(command, self._pip_timeout_s, "pip install", cwd=manifest.folder)
        if code != 0:
            raise ExtensionError(f"pip could not install the requirements of {manifest.name} "
                                 f"(exit {code}):\n{output}")
        log.info("Installed the requirements of extension %s: %s", manifest.name, ", ".join(manifest.requirements))
        return Outcome(Action.REQUIREMENTS, manifest, output)

    # --- what the commands share ----------------------------------------------------------------

    def _checked_clone(self, clone: Path, source: str) -> Manifest:
        try:
            manifest = read_manifest(clone)
        except ExtensionError as exc:
            raise ExtensionError(f"{redacted(source)} is not an Atelier extension: {exc}") from exc
        if not manifest.entry_file.is_file():
            raise ExtensionError(f"{redacted(source)} is not an Atelier extension: its {MANIFEST} names "
                                 f"{manifest.entry_file.name}, which it does not contain")
        return manifest

    def _refuse_existing(self, name: str, target: Path) -> None:
        if target.exists():
            raise ExtensionError(f"A folder called {target.name!r} already exists in {self.user_dir}; "
                                 "remove it first or update that extension instead")
        in_use = self._names_in_use().get(name)
        if in_use is not None:
            raise ExtensionError(f"An extension called {name!r} is already installed ({in_use})")

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
