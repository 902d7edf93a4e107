"""The txt2img tab, with A1111's labels and elem_ids (users' CSS, scripts and habits rely on them)."""

from __future__ import annotations

from modules.params import GenerationRequest
from modules.services.container import Services
from modules.ui.generation_form import (
    FormValues,
    GenerationForm,
    build_form,
    wire_generation,
)

PREFIX = "txt2img"


def build_tab(services: Services) -> GenerationForm:
    """The txt2img controls and their events; call inside a ``gr.Tab``."""
    form = build_form(PREFIX, services, send_to=(("img2img", "img2img"), ("inpaint", "inpaint")))

    def make_request(values: FormValues) -> GenerationRequest:
        return values.to_request()

    wire_generation(form, services, [], make_request)
    return form
