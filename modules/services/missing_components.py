"""What the faces tell a user whose checkpoint needs a part it does not bundle (a text encoder, a VAE,
a tokenizer): the file to put where, and for the parts Atelier can fetch itself (the T5 / LLM
tokenizers), the download to offer. The API's JSON answer and the UI's download button both read it.
"""

from __future__ import annotations

from typing import Any

from modules.engine.tokenizer_files import TOKENIZERS
from modules.errors import MissingComponentError
from modules.services.tokenizer_downloads import COMPONENT_PREFIX

DOWNLOAD_ROUTE = "/sdapi/v1/download-component"


def downloadable(error: MissingComponentError) -> str | None:
    """The component name ``POST /sdapi/v1/download-component`` takes for the missing part (e.g.
    ``tokenizer:t5xxl``), or None when Atelier cannot download it (the user puts the file in place)."""
    known = {COMPONENT_PREFIX + source.name for source in TOKENIZERS}
    return error.component if error.component in known else None


def missing_component_body(error: MissingComponentError) -> dict[str, Any]:
    """The API's fields for a missing part, beside ``detail`` (the whole message) and ``error``."""
    component = downloadable(error)
    download = {"method": "POST", "route": DOWNLOAD_ROUTE, "body": {"component": component}} if component else None
    return {"checkpoint": error.path, "component": error.component, "file": error.file_hint, "folder": error.folder,
            "url": error.url, "download": download}
