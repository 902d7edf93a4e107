"""A1111's Extras routes: ``POST /sdapi/v1/extra-single-image`` and ``/extra-batch-images``.

Bodies in A1111's field names and defaults; replies ``{html_info, image}`` / ``{html_info,
images}``, the images as raw base64 in ``samples_format`` (as A1111's API encodes them): PNG
carrying the source's ``parameters`` and what was done under ``postprocessing``, JPEG/WebP both in
EXIF UserComment. As in A1111's API, results are returned, not saved. A body with only an
image does nothing to it and returns it.
"""

from __future__ import annotations

import asyncio
import base64
import html
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from modules.api.convert import decode_base64_image, parse_body
from modules.api.schemas import LenientBool, LenientFloat, LenientInt
from modules.errors import FieldError, ValidationError
from modules.services.extras import ExtrasResult, ExtrasService
from modules.services.extras_request import ExtrasImage, ExtrasRequest, ResizeMode

JsonBody = Callable[[Request], Awaitable[Any]]


class ExtrasBaseBody(BaseModel):
    """A1111's ExtrasBaseRequest; ranges are checked by the service, which names them."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: LenientInt = 0
    show_extras_results: LenientBool = True
    gfpgan_visibility: LenientFloat = 0.0
    codeformer_visibility: LenientFloat = 0.0
    codeformer_weight: LenientFloat = 0.0
    upscaling_resize: LenientFloat = 2.0
    upscaling_resize_w: LenientInt = 512
    upscaling_resize_h: LenientInt = 512
    upscaling_crop: LenientBool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: LenientFloat = 0.0
    upscale_first: LenientBool = False


class ExtrasSingleBody(ExtrasBaseBody):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchBody(ExtrasBaseBody):
    imageList: list[FileData] = Field(default_factory=list)  # noqa: N815 - A1111's field name


class ExtrasSingleReply(BaseModel):
    html_info: str
    image: str


class ExtrasBatchReply(BaseModel):
    html_info: str
    images: list[str]


def plaintext_to_html(text: str) -> str:
    """A1111's html_info: the infotext escaped, in one paragraph, line breaks kept."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def to_extras_request(body: ExtrasBaseBody, images: tuple[ExtrasImage, ...]) -> ExtrasRequest:
    """The body's values as a request; A1111 fields with no meaning here are refused, not ignored."""
    if body.resize_mode not in (0, 1):
        raise ValidationError([FieldError("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {body.resize_mode}")])
    if not body.show_extras_results:
        raise ValidationError([FieldError("show_extras_results", "false only applies to the Extras tab's batch from a "
                                                                 "folder; the API always returns the images it made")])
    return ExtrasRequest(
        images=images, resize_mode=ResizeMode(body.resize_mode), upscaling_resize=body.upscaling_resize,
        upscaling_resize_w=body.upscaling_resize_w, upscaling_resize_h=body.upscaling_resize_h,
        upscaling_crop=body.upscaling_crop, upscaler_1=body.upscaler_1 or "None", upscaler_2=body.upscaler_2 or "None",
        upscaler_2_visibility=body.extras_upscaler_2_visibility, gfpgan_visibility=body.gfpgan_visibility,
        codeformer_visibility=body.codeformer_visibility, codeformer_weight=body.codeformer_weight,
        upscale_first=body.upscale_first, save=False)


async def _run(service: ExtrasService, request: ExtrasRequest, owner: str | None) -> ExtrasResult:
    job = await asyncio.to_thread(service.submit, request, owner)  # reads every image: off the event loop
    await asyncio.wrap_future(job.future)
    return service.finish(request, job)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def register(r: APIRouter, service: ExtrasService, json_body: JsonBody, user: Callable[[Request], str | None]) -> None:
    """Add the two Extras routes to ``r`` (the /sdapi/v1 router)."""

    @r.post("/extra-single-image", response_model=ExtrasSingleReply)
    async def extra_single_image(request: Request) -> ExtrasSingleReply:
        """Upscale and/or restore faces of one image (A1111's Extras tab, single image)."""
        body = parse_body(ExtrasSingleBody, await json_body(request))
        if not body.image.strip():
            raise ValidationError([FieldError("image", "is missing: send a base64-encoded image")])
        images = (ExtrasImage(decode_base64_image(body.image, "image")),)
        result = await _run(service, to_extras_request(body, images), user(request))
        if not result.outputs:
            raise ValidationError([FieldError("image", "the job was interrupted before it finished")])
        return ExtrasSingleReply(html_info=plaintext_to_html(result.infotext), image=_b64(result.encoded[0]))

    @r.post("/extra-batch-images", response_model=ExtrasBatchReply)
    async def extra_batch_images(request: Request) -> ExtrasBatchReply:
        """The same for several images (``imageList``: ``[{data, name}]``), in order."""
        body = parse_body(ExtrasBatchBody, await json_body(request))
        if not body.imageList:
            raise ValidationError([FieldError("imageList", "is empty: send at least one {data, name} image")])
        images = tuple(ExtrasImage(decode_base64_image(item.data, f"imageList.{i}.data"), item.name)
                       for i, item in enumerate(body.imageList))
        result = await _run(service, to_extras_request(body, images), user(request))
        return ExtrasBatchReply(html_info=plaintext_to_html(result.infotext),
                                images=[_b64(data) for data in result.encoded])
