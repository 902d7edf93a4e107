"""Filling a tab from an image's parameters text: the fields, extensions' panels (through their
infotext readers), and the checkpoint it names."""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import replace
from typing import Any

from modules.errors import AtelierError
from modules.infotext import parse_infotext
from modules.infotext_request import request_from_infotext
from modules.services.container import Services
from modules.ui.form_fields import values_from_request
from modules.ui.override_settings import OVERRIDE_FIELD, box_update, override_entries


def values_from_infotext(text: str, services: Services) -> dict[str, Any]:
    """What "send to" and "paste" put in a form, by field name, for an image's parameters text.
    The refiner shows as the title of the checkpoint it names when that one is here."""
    request, _warnings = request_from_infotext(parse_infotext(text), upscaler_models=services.upscalers.names())
    if request.refiner is not None:
        found = services.registry.find(request.refiner.checkpoint)
        if found is not None:
            request = replace(request, refiner=replace(request.refiner, checkpoint=found.title))
    return values_from_request(request)


def extension_values(text: str, services: Services) -> dict[str, dict[str, Any]]:
    """Each enabled extension's param values that an image's parameters text gives back, by extension
    and param name (its infotext readers, see ``ExtensionManager.read_infotext``)."""
    return services.extensions.read_infotext(parse_infotext(text).params)


def override_values(text: str, declared: Container[str], services: Services) -> dict[str, Any]:
    """The "Override settings" box for an image's parameters text: the options it names that the
    form (its ``declared`` field names) has no control for and whose value is not the server's."""
    entries = override_entries(parse_infotext(text).params, declared, services.options.get())
    return {OVERRIDE_FIELD: box_update(entries)}


def find_checkpoint(services: Services, params: Mapping[str, str]) -> str | None:
    """The title of the checkpoint an infotext names (by hash first, then by name), if present here."""
    wanted_hash, wanted_name = params.get("Model hash", "").lower(), params.get("Model", "")
    for info in services.registry.all():
        if wanted_hash and info.shorthash == wanted_hash:
            return info.title
    for info in services.registry.all():
        if wanted_name and wanted_name in (info.model_name, info.name):
            return info.title
    remote = services.remote.find(wanted_name)  # "Model: openai/dall-e-3"
    return remote.title if remote is not None else None


def switch_to_checkpoint_of(services: Services, params: Mapping[str, str]) -> str | None:
    """Load the infotext's checkpoint when it is here; a warning for the user when it is not."""
    if "Model" not in params and "Model hash" not in params:
        return None
    title = find_checkpoint(services, params)
    if title is None:
        named = params.get("Model") or params.get("Model hash")
        return f"The image was made with checkpoint {named!r}, which is not here; the current one stays."
    current = services.models.current()
    if (current is not None and current.title == title and services.remote.selected() is None) \
            or services.remote.selected_title() == title:
        return None
    try:
        services.generation.switch_model(title).future.result()
    except AtelierError as exc:
        return f"Could not switch to {title}: {exc}"
    return None
