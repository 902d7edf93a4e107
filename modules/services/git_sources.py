"""What git is given when an extension is installed: a checked URL, branch and folder name, and a
URL without its credentials for logs and messages.

Nothing here runs git. A URL that could be read as a command-line option, a transport that runs
commands (``ext::``), or a name with a path in it is refused with a message that says why.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from modules.errors import ExtensionError

_REMOTE_SCHEMES = frozenset({"https", "http", "git", "ssh"})
_SCP_LIKE = re.compile(r"^[A-Za-z0-9._~-]+@[A-Za-z0-9][A-Za-z0-9.-]*:[^\s]+$")  # git@host:owner/repo.git
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


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


def checked_branch(branch: str | None) -> str | None:
    branch = (branch or "").strip()
    if not branch:
        return None
    if not _BRANCH.match(branch) or ".." in branch or branch.endswith((".", "/", ".lock")):
        raise ExtensionError(f"Not a branch or tag name: {branch!r}")
    return branch


def checked_folder(name: str | None) -> str | None:
    name = (name or "").strip()
    if name and not _FOLDER.match(name):
        raise ExtensionError(f"Folder name {name!r} may use letters, digits, '_', '-' and '.'")
    return name or None


def redacted(url: str) -> str:
    """``url`` without a password or token, for logs and messages."""
    return re.sub(r"://[^/@\s]*@", "://***@", url)
