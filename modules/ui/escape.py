"""Text from users and files (style names, prompts, infotext, model and extension names, error
messages that quote them), made inert before the browser renders it.

Gradio renders a toast's message (``gr.Info``/``gr.Warning``/``gr.Error``) and a ``gr.HTML`` value
as HTML, through a sanitizer that strips scripts but keeps links and images. ``gr.Markdown`` goes
further: Markdown links, images, bare URLs and ``$$`` blocks become live, so escaping HTML is not
enough there. Labels, dropdown choices, textboxes, gallery captions, ``gr.Dataset`` textbox samples
and ``gr.Dataframe`` cells of the default ``"str"`` type are escaped by Gradio itself.
"""

from __future__ import annotations

import html
import string

# Every ASCII punctuation character may be backslash-escaped in CommonMark; the ones that HTML
# needs are written as entities instead (Markdown decodes those back to the character).
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"}
_MARKDOWN = str.maketrans({c: _HTML_ENTITIES.get(c, "\\" + c) for c in string.punctuation})


def text(value: object) -> str:
    """``value`` as HTML text, for a toast message or a ``gr.HTML`` fragment: no tag is live."""
    return html.escape(str(value), quote=True)


def markdown(value: object) -> str:
    """``value`` as ``gr.Markdown`` text, shown as written: no tag, link, image, bare URL, emphasis,
    code span or math forms (``:`` and ``.`` are escaped too, which stops GFM's autolinks)."""
    return str(value).translate(_MARKDOWN)
