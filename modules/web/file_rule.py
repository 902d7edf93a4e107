"""Who may fetch an output file through Gradio's file route (``/gradio_api/file=<path>``).

Gradio serves any file under the outputs folder to whoever is signed in (the folder is one of its
static paths). On a shared server that would show one user another's pictures, so the request
guard asks :func:`file_rule` first: a non-admin asking for a file under ``outputs/<another
user>/``, or for a file another user's job saved, is answered 404 (as a file that does not exist:
it never says the file is there). Everything else is for Gradio's own checks to decide.

No services here: the guard passes ``owner_of`` (the account a saved file, or an
``outputs/<name>`` folder, belongs to; None when nobody's) and ``per_user`` (the setting
``outputs_per_user`` in force).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote

from modules.identity import Identity, is_admin

FILE_ROUTE = "/gradio_api/file="


def file_route_target(path: str, subpath: str) -> str | None:
    """The file a request path asks Gradio's file route for (None: not that route). Leading or
    doubled slashes and the letter case of the route's name do not hide it."""
    rest = "/" + path.lstrip("/")
    prefix = "/" + subpath.strip("/") if subpath.strip("/") else ""
    if prefix:
        if not (rest == prefix or rest.startswith(prefix + "/")):
            return None
        rest = "/" + rest[len(prefix):].lstrip("/")
    head, equals, target = rest.partition("=")
    if not equals or "/".join(p for p in head.split("/") if p).lower() != "gradio_api/file":
        return None
    return target


def _relative_to(root: Path, target: str) -> Path | None:
    """``target`` (absolute, or relative to the working folder as Gradio takes it) relative to
    ``root`` once links are followed; None when it lies elsewhere or is no usable path."""
    try:
        resolved = Path(os.path.abspath(target)).resolve()
        return resolved.relative_to(root)
    except (OSError, ValueError, RuntimeError):  # NUL bytes, link loops, another tree
        return None


def file_rule(outputs_dir: Path, subpath: str, owner_of: Callable[[Path], str | None],
              per_user: Callable[[], bool]) -> Callable[[str, Identity | None], bool]:
    """A check ``allowed(request_path, identity)``: False when ``identity`` (a non-admin) asks
    Gradio's file route, under ``subpath``, for a file under the outputs folder that belongs to
    another user (under ``outputs/<them>/`` while outputs go per user, or saved by their job);
    True for everything else."""
    root = Path(os.path.abspath(outputs_dir)).resolve()

    def belongs_to_another(target: str, me: str) -> bool:
        relative = _relative_to(root, target)
        if relative is None or not relative.parts:
            return False
        path = root / relative
        owner = owner_of(path)
        if owner is not None and owner.casefold() != me:
            return True
        if per_user() and len(relative.parts) > 1 and relative.parts[0].casefold() != me:
            folder_owner = owner_of(root / relative.parts[0])
            return folder_owner is not None and folder_owner.casefold() != me
        return False

    def allowed(request_path: str, identity: Identity | None) -> bool:
        if is_admin(identity):
            return True
        assert identity is not None
        me = identity.name.casefold()
        # The path as it came and percent-decoded once more: a refusal of either spelling stands.
        for spelling in dict.fromkeys((request_path, unquote(request_path))):
            target = file_route_target(spelling, subpath)
            if target is not None and target and belongs_to_another(target, me):
                return False
        return True

    return allowed
