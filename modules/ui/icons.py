"""Button glyphs that every system can draw: characters the common text fonts (DejaVu Sans, Arial,
Segoe UI) carry, written without the emoji variation selector, so a machine with no emoji font
shows the symbol, never an empty box. Each button that shows only a glyph also gets a tooltip."""

from __future__ import annotations

import json
from types import MappingProxyType

REFRESH = "\u21bb"  # ↻ clockwise open circle arrow
RANDOM = "\u2684"  # ⚄ die face-5
REUSE = "\u267b"  # ♻ recycling symbol, text presentation
PASTE = "\u2199"  # ↙ south west arrow
DELETE = "\u2715"  # ✕ multiplication x
WARNING = "\u26a0"  # ⚠ warning sign, text presentation

# What each glyph button does, shown as its tooltip (and read by screen readers): by element id where
# a glyph means something more specific there, else by the glyph itself.
TITLES_BY_GLYPH = MappingProxyType({
    REFRESH: "Refresh the list",
    RANDOM: "Use a random seed (-1)",
    REUSE: "Reuse the seed of the selected image",
    PASTE: "Read the generation parameters from the prompt box into the form",
    DELETE: "Delete",
})
TITLES_BY_ID = MappingProxyType({
    "refresh_sd_model_checkpoint": "Refresh the list of checkpoints",
    "refresh_sd_vae": "Refresh the list of VAEs",
})


def tooltip_script() -> str:
    """A page script that gives every glyph button its title, as the page builds and changes."""
    return ("<script>(() => {\n"
            f"  const byId = {json.dumps(dict(TITLES_BY_ID))}, byGlyph = {json.dumps(dict(TITLES_BY_GLYPH))};\n"
            "  let queued = false;\n"
            "  const title = (el, text) => { if (el && text && !el.title) { el.title = text;"
            " el.setAttribute('aria-label', text); } };\n"
            "  const apply = () => {\n"
            "    queued = false;\n"
            "    for (const [id, text] of Object.entries(byId)) title(document.getElementById(id), text);\n"
            "    for (const b of document.querySelectorAll('button')) title(b, byGlyph[b.textContent.trim()]);\n"
            "  };\n"
            "  new MutationObserver(() => { if (!queued) { queued = true; requestAnimationFrame(apply); } })\n"
            "    .observe(document.documentElement, {childList: true, subtree: true});\n"
            "})();</script>")
