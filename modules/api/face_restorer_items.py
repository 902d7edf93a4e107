"""A1111's face restorer list: GET /sdapi/v1/face-restorers."""

from __future__ import annotations

from typing import Any

from modules.services.face_restorers import FaceRestorers


def face_restorer_items(restorers: FaceRestorers) -> list[dict[str, Any]]:
    """[{name, cmd_dir}] for CodeFormer and GFPGAN, always both (as A1111 lists them); ``cmd_dir`` is
    the folder holding the model file the restorer runs, null while none is installed."""
    items: list[dict[str, Any]] = []
    for name in restorers.names():
        found = restorers.model_file(name)
        items.append({"name": name, "cmd_dir": str(found.path.parent) if found is not None else None})
    return items
