"""Extension-built UI makes no public Gradio API: every event an extension's UI creates is private.

Gradio makes an event public (listed by ``/gradio_api/info``, callable by ``gradio_client`` and
``/gradio_api/call/<name>``) unless it is created with ``api_visibility="private"``; extensions'
builders (UI_PANEL, UI_TABS, SETTINGS_SECTION) are not trusted to say so. Two steps cover every kind:

- :func:`extension_build` wraps a builder's call: the events created meanwhile become private, and
  the components created meanwhile are marked as the extension's;
- :func:`seal`, once the whole Blocks is built, makes private every event that reads, writes or is
  triggered by a marked component: this catches the events Gradio only creates when the outermost
  Blocks closes (a component's ``value=lambda: ...`` and its ``every=`` timer).

Atelier's own events that read extensions' controls (Generate, "send to") are private already;
the browser runs private events as it runs every event (by index, through the queue).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gradio.context import Context

PRIVATE = "private"
_MARK = "_atelier_extension"  # on a component an extension's builder created: the extension's name


@contextmanager
def extension_build(name: str) -> Iterator[None]:
    """Around an extension's UI builder: what it creates is marked as ``name``'s, its events private."""
    root = Context.root_block
    if root is None:  # not inside a Blocks: nothing to follow
        yield
        return
    blocks_before, fns_before = set(root.blocks), set(root.fns)
    try:
        yield
    finally:
        for key, block in list(root.blocks.items()):
            if key not in blocks_before:
                setattr(block, _MARK, name)
        for key, fn in list(root.fns.items()):
            if key not in fns_before:
                fn.api_visibility = PRIVATE


def seal(blocks: Any) -> int:
    """Make private every event of the built ``blocks`` that touches an extension-built component;
    how many were public before."""
    marked = {key for key, block in blocks.blocks.items() if getattr(block, _MARK, None) is not None}
    changed = 0
    for fn in blocks.fns.values():
        touched = {getattr(c, "_id", None) for c in (*fn.inputs, *fn.outputs)} | {t[0] for t in fn.targets}
        if touched & marked and fn.api_visibility != PRIVATE:
            fn.api_visibility = PRIVATE
            changed += 1
    return changed
