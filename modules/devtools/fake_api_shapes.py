"""The request checks and answer shapes of the offline fake image APIs
(:mod:`modules.devtools.fake_image_apis`): what each call is recorded as, the checks the real
services make that are cheap to copy, multipart bodies, and the fake's flat PNGs."""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
from typing import Any

from PIL import Image

from modules.services.remote.catalog import KNOWN_MODELS, Provider, RemoteModel, listed_model


class Refusal(Exception):
    """An error answer, rendered in the calling API's shape."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def fake_png(width: int, height: int, prompt: str, index: int = 0, edited: bool = False) -> bytes:
    """A flat PNG whose colour depends on the prompt and index; an edit has a square mark."""
    r, g, b = hashlib.sha256(f"{prompt}\0{index}".encode()).digest()[:3]
    image = Image.new("RGB", (width, height), (r, g, b))
    if edited:  # so an edit never equals the generation of the same prompt
        side = max(1, min(width, height) // 8)
        image.paste((255 - r, 255 - g, 255 - b), (0, 0, side, side))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def openai_model(model: str) -> RemoteModel:
    known = {m.model: m for m in KNOWN_MODELS if m.provider is Provider.OPENAI}
    return known.get(model) or listed_model(Provider.OPENAI, model)


def openai_record(path: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"api": "openai", "path": path, "model": str(fields.get("model") or "dall-e-2"),
            "prompt": str(fields.get("prompt") or ""), "n": int(fields.get("n") or 1), "size": fields.get("size"),
            "quality": fields.get("quality"), "style": fields.get("style"),
            "response_format": fields.get("response_format"), "image": fields.get("image"),
            "mask": fields.get("mask")}


def google_record(path: str, model: str, request: dict[str, Any]) -> dict[str, Any]:
    instance = (request.get("instances") or [{}])[0]
    parameters = request.get("parameters") or {}
    return {"api": "google", "path": path, "model": model, "prompt": str(instance.get("prompt") or ""),
            "n": int(parameters.get("sampleCount") or 1), "aspect_ratio": parameters.get("aspectRatio", "1:1"),
            "negative_prompt": parameters.get("negativePrompt"), "parameters": parameters}


def check_openai(call: dict[str, Any], fields: dict[str, Any], edit: bool) -> tuple[int, int]:
    """The checks the real API makes that are cheap to copy; the size asked for."""
    model = openai_model(call["model"])
    if not call["prompt"]:
        raise Refusal(400, "Missing required parameter: 'prompt'.", "missing_required_parameter", "prompt")
    if model.model.startswith("gpt-image") and "response_format" in fields:
        raise Refusal(400, "Unknown parameter: 'response_format'.", "unknown_parameter", "response_format")
    if not 1 <= call["n"] <= model.max_images:
        message = "You must provide n=1 for this model." if model.max_images == 1 else "n must be 1 to 10."
        raise Refusal(400, message, None, "n")
    if call["quality"] and call["quality"] not in model.qualities + ("standard",):
        raise Refusal(400, f"Invalid quality {call['quality']!r} for {model.model}.", "invalid_value", "quality")
    if call["style"] and call["style"] not in model.styles:
        raise Refusal(400, f"Invalid style {call['style']!r} for {model.model}.", "invalid_value", "style")
    if edit:
        return check_edit(call, model)
    size = call["size"] or "1024x1024"
    width, _, height = str(size).partition("x")
    if not (width.isdigit() and height.isdigit() and model.supports_size(int(width), int(height))):
        raise Refusal(400, f"Invalid size '{size}'. Supported sizes are {model.size_text()}.", "invalid_size", "size")
    return int(width), int(height)


def check_edit(call: dict[str, Any], model: RemoteModel) -> tuple[int, int]:
    if not model.edits:
        raise Refusal(400, f"{model.model} does not support image edits.", "invalid_value", "model")
    if not call["image"]:
        raise Refusal(400, "Missing required parameter: 'image'.", "missing_required_parameter", "image")
    try:
        size = Image.open(io.BytesIO(call["image"])).size
        mask = Image.open(io.BytesIO(call["mask"])) if call["mask"] else None
    except OSError:
        raise Refusal(400, "Invalid image file or mode for image or mask.", "invalid_image", "image") from None
    if mask is not None and (mask.size != size or "A" not in mask.getbands()):
        raise Refusal(400, "The mask must be a PNG with an alpha channel, the image's size.", "invalid_image", "mask")
    if not call["size"]:  # the answer has the image's size
        return size
    width, _, height = str(call["size"]).partition("x")
    if not (width.isdigit() and height.isdigit() and model.supports_size(int(width), int(height))):
        raise Refusal(400, f"Invalid size '{call['size']}'. Supported sizes are {model.size_text()}.",
                       "invalid_size", "size")
    return int(width), int(height)


def multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """The fields of a multipart/form-data body: text as str, files (``image``, ``mask``) as bytes."""
    if not content_type.startswith("multipart/form-data"):
        raise ValueError("not multipart")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    fields: dict[str, Any] = {}
    for part in message.iter_parts():
        name = (part.get_param("name", header="content-disposition") or "").removesuffix("[]")
        payload = part.get_payload(decode=True) or b""
        fields.setdefault(name, payload if part.get_filename() else payload.decode())
    return fields
