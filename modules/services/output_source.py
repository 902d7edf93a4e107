"""Which tab made an output image: by the folder it was saved in, else by its parameters."""

from __future__ import annotations

from modules.infotext import parse_infotext

_FOLDER_TABS = (("txt2img-", "txt2img"), ("img2img-", "img2img"), ("extras-", "extras"))


def source_tab(folder: str, infotext: str) -> str:
    """The tab an output came from: by A1111's folder (``txt2img-images``, ``img2img-grids``,
    ``extras-images``, ...), else by its infotext (Extras' "Postprocess" keys; img2img's "Denoising
    strength" without hires fix; other generation parameters: txt2img); "" when neither says."""
    for prefix, tab in _FOLDER_TABS:
        if folder.lower().startswith(prefix):
            return tab
    params = parse_infotext(infotext).params if infotext else {}
    if any(key.startswith("Postprocess") for key in params):
        return "extras"
    if "Denoising strength" in params and "Hires upscale" not in params:
        return "img2img"
    return "txt2img" if "Steps" in params else ""
