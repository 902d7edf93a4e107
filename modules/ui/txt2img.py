"""The txt2img tab, with A1111's labels and elem_ids (users' CSS, scripts and habits rely on them)."""

from __future__ import annotations

from modules.services.container import Services
from modules.ui.form_fields import request_from_values
from modules.ui.generation_form import GenerationForm, build_form, wire_generation
from modules.ui.hires_refiner import build_hires

PREFIX = "txt2img"


def build_tab(services: Services) -> GenerationForm:
    """The txt2img controls and their events; call inside a ``gr.Tab``."""
    form = build_form(PREFIX, services, send_to=(("img2img", "img2img"), ("inpaint", "inpaint"), ("extras", "extras")),
                      below=lambda: build_hires(PREFIX, services))
    # The request is the shared fields alone: the hires fix is one of their groups (``hires.*``).
    wire_generation(form, services, request_from_values)
    return form
