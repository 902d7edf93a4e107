"""``/sdapi/v1/scripts`` and ``/sdapi/v1/script-info``: the scripts as A1111 lists them.

A1111 has two kinds of script: selectable ones (the Script dropdown, ``script_name``) and always-on
ones (``alwayson_scripts``). Atelier's selectable scripts are extensions' :class:`Script`\\ s; an
always-on script is an enabled extension that takes params or builds a UI panel, listed by its name
in lower case (the key clients send in ``alwayson_scripts``). Both lists are per tab, as in A1111.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from modules.api import schemas
from modules.extension_api import Hook, Param, ParamKind
from modules.services.extensions import ExtensionManager, ExtensionState

TABS = ("txt2img", "img2img")


def always_on(extensions: ExtensionManager) -> list[tuple[str, tuple[Param, ...]]]:
    """(extension name, its params) of every enabled extension with params or a UI panel."""
    found = []
    for record in extensions.records():
        setup = record.setup
        if record.state is not ExtensionState.ENABLED or setup is None:
            continue
        if setup.params or any(h.hook is Hook.UI_PANEL for h in setup.handlers):
            found.append((record.name, tuple(setup.params)))
    return found


def scripts_list(extensions: ExtensionManager) -> schemas.ScriptsList:
    """Selectable scripts, then always-on ones, per tab, in lower case."""
    on = [name.lower() for name, _params in always_on(extensions)]
    return schemas.ScriptsList(**{tab: [s.title.lower() for _n, s in extensions.scripts(tab)] + on for tab in TABS})


def _arg(param: Param, upscalers: list[str] | None) -> dict[str, Any]:
    """A1111's ScriptArg for one param: its label, default, range, step and choices."""
    choices: list[str] | None = None
    if param.kind is ParamKind.CHOICE:
        choices = list(param.choices)
    elif param.kind is ParamKind.UPSCALER:
        choices = upscalers
    default = list(param.default) if isinstance(param.default, tuple) else param.default
    return {"label": param.label or param.name, "value": default, "minimum": param.minimum,
            "maximum": param.maximum, "step": 1 if param.kind is ParamKind.INT else None, "choices": choices}


def script_info(extensions: ExtensionManager) -> list[dict[str, Any]]:
    """A1111's /script-info: one entry per script and tab it is in."""
    upscalers: list[str] | None = None

    def args(name: str, params: tuple[Param, ...]) -> list[dict[str, Any]]:
        nonlocal upscalers
        if upscalers is None and any(p.kind is ParamKind.UPSCALER for p in params):
            upscalers = extensions.host(name).upscaler_names()
        return [_arg(p, upscalers) for p in params]

    entries: list[dict[str, Any]] = []
    for tab in TABS:
        for name, script in extensions.scripts(tab):
            entries.append({"name": script.title.lower(), "is_alwayson": False, "is_img2img": tab == "img2img",
                            "args": args(name, script.params)})
        for name, params in always_on(extensions):
            entries.append({"name": name.lower(), "is_alwayson": True, "is_img2img": tab == "img2img",
                            "args": args(name, params)})
    return entries


def register(r: APIRouter, extensions: ExtensionManager) -> None:
    r.get("/scripts", response_model=schemas.ScriptsList)(lambda: scripts_list(extensions))
    r.get("/script-info")(lambda: script_info(extensions))
