"""The txt2img tab, with A1111's labels and elem_ids (users' CSS, scripts and habits rely on them)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from modules.params import GenerationRequest
from modules.services.container import Services
from modules.ui.generation_form import (
    FormValues,
    GenerationForm,
    build_form,
    wire_generation,
)
from modules.ui.hires_refiner import HiresControls, build_hires

PREFIX = "txt2img"


def build_tab(services: Services) -> GenerationForm:
    """The txt2img controls and their events; call inside a ``gr.Tab``."""
    parts: dict[str, HiresControls] = {}

    def below() -> None:
        parts["hires"] = build_hires(PREFIX, services)

    form = build_form(PREFIX, services, send_to=(("img2img", "img2img"), ("inpaint", "inpaint")), below=below)
    form.hires = parts["hires"]

    def make_request(values: FormValues, *hires_values: Any) -> GenerationRequest:
        return replace(values.to_request(), hires=HiresControls.to_hires(*hires_values))

    wire_generation(form, services, form.hires.components(), make_request)
    return form
