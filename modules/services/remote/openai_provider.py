"""The OpenAI provider: Atelier's :class:`ImageCall` as a call to OpenAI's images API (or a server
that answers it), through the official ``openai`` client.

It owns the request (``images.generate``, or ``images.edit`` when the call has an init image, with
our white-means-change mask turned into OpenAI's transparent-means-change one), reading the answer
(base64 images, or URLs some compatible servers answer instead) and turning every failure into a
:class:`ProviderError`. Retries on 408/409/429/5xx are the client's own, with its backoff and the
server's Retry-After honoured.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import httpx
import openai
from PIL import Image, UnidentifiedImageError

from modules.errors import ProviderError, ProviderFailure
from modules.services.remote.calls import CallResult, ImageCall, ProviderAccess, scrub
from modules.services.remote.catalog import Provider

_NAME = Provider.OPENAI.value
_POLICY_CODES = ("content_policy_violation", "moderation_blocked")


def is_gpt_image(model: str) -> bool:
    """GPT image models always answer base64 and refuse ``response_format``."""
    return model.lower().startswith("gpt-image")


def openai_mask(mask_png: bytes) -> bytes:
    """Our mask (white = change, black = keep) as OpenAI's: a PNG whose transparent pixels change."""
    with Image.open(io.BytesIO(mask_png)) as mask:
        change = mask.convert("L").point(lambda value: 0 if value > 127 else 255)
    out = Image.new("RGBA", change.size, (0, 0, 0, 255))
    out.putalpha(change)
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()


class OpenAIProvider:
    """Images from OpenAI's images API; see the module docstring."""

    provider = Provider.OPENAI

    def __init__(self, access: ProviderAccess) -> None:
        if not access.api_key:  # without one the client would read OPENAI_API_KEY: ours is the only source
            raise ProviderError(_NAME, ProviderFailure.BAD_KEY, "no API key is set")
        self._key = access.api_key
        self._timeout = access.timeout_seconds
        self._client = openai.OpenAI(api_key=access.api_key, base_url=access.base_url or None,
                                     timeout=access.timeout_seconds, max_retries=access.max_retries)

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={str(self._client.base_url)!r})"

    def generate(self, call: ImageCall) -> CallResult:
        try:
            answer = self._edit(call) if call.init_image is not None else self._generate(call)
        except openai.OpenAIError as error:
            # from None: the client's exception may quote the server's message with a masked key.
            raise self._failure(error) from None
        items = list(answer.data or [])
        if not items:
            raise ProviderError(_NAME, ProviderFailure.SERVER, "the answer held no images")
        images = tuple(self._image_bytes(item) for item in items)
        return CallResult(images, tuple(item.revised_prompt or None for item in items))

    def list_models(self) -> list[str]:
        try:
            return [model.id for model in self._client.models.list()]
        except openai.OpenAIError as error:
            raise self._failure(error) from None

    def _generate(self, call: ImageCall) -> Any:
        options: dict[str, Any] = {}
        if call.quality:
            options["quality"] = call.quality
        if call.style:
            options["style"] = call.style
        if not is_gpt_image(call.model):  # DALL-E answers URLs unless asked; GPT image refuses the parameter
            options["response_format"] = "b64_json"
        return self._client.images.generate(model=call.model, prompt=call.prompt, n=call.count,
                                            size=f"{call.width}x{call.height}", **options)

    def _edit(self, call: ImageCall) -> Any:
        assert call.init_image is not None
        options: dict[str, Any] = {}
        if call.mask is not None:
            try:
                options["mask"] = ("mask.png", openai_mask(call.mask), "image/png")
            except (UnidentifiedImageError, OSError):
                raise ProviderError(_NAME, ProviderFailure.BAD_REQUEST, "the mask is not an image") from None
        if call.quality:
            options["quality"] = call.quality
        if not is_gpt_image(call.model):
            options["response_format"] = "b64_json"
        return self._client.images.edit(image=("image.png", call.init_image, "image/png"), prompt=call.prompt,
                                        model=call.model, n=call.count, size=f"{call.width}x{call.height}",
                                        **options)

    def _image_bytes(self, item: Any) -> bytes:
        if item.b64_json:
            try:
                return base64.b64decode(item.b64_json, validate=True)
            except (binascii.Error, ValueError):
                raise ProviderError(_NAME, ProviderFailure.SERVER, "an image in the answer was not base64") from None
        if item.url:
            return self._fetch(item.url)
        raise ProviderError(_NAME, ProviderFailure.SERVER, "an answer item held neither an image nor a URL")

    def _fetch(self, url: str) -> bytes:
        """An image the answer linked to. No key is sent: the URL is signed, and may be another host."""
        try:
            response = httpx.get(url, timeout=self._timeout, follow_redirects=True)
            response.raise_for_status()
        except httpx.TimeoutException:
            raise ProviderError(_NAME, ProviderFailure.TIMEOUT, "fetching an image the answer linked to") from None
        except httpx.HTTPStatusError as error:  # the URL is left out: signed URLs carry a token
            raise ProviderError(_NAME, ProviderFailure.NETWORK, "could not fetch an image the answer linked to",
                                error.response.status_code) from None
        except httpx.HTTPError as error:
            raise ProviderError(_NAME, ProviderFailure.NETWORK,
                                scrub(f"could not fetch an image the answer linked to: {error}", self._key)) from None
        return response.content

    def _failure(self, error: openai.OpenAIError) -> ProviderError:
        """The ProviderError an exception of the client stands for."""
        if isinstance(error, openai.APITimeoutError):  # before its base class, APIConnectionError
            return ProviderError(_NAME, ProviderFailure.TIMEOUT, f"no answer within {self._timeout:g} s")
        if isinstance(error, openai.APIConnectionError):
            cause = error.__cause__ or error
            return ProviderError(_NAME, ProviderFailure.NETWORK, scrub(str(cause) or error.message, self._key))
        if not isinstance(error, openai.APIStatusError):  # an answer the client could not read
            return ProviderError(_NAME, ProviderFailure.SERVER, scrub(str(error), self._key))
        status = error.status_code
        body = error.body if isinstance(error.body, dict) else {}
        message = body.get("message") if isinstance(body.get("message"), str) else error.message
        detail = scrub(message or "", self._key)
        if status in (401, 403):
            failure = ProviderFailure.BAD_KEY
        elif status == 429:
            failure = ProviderFailure.RATE_LIMIT
        elif status == 408:
            failure = ProviderFailure.TIMEOUT
        elif status >= 500:
            failure = ProviderFailure.SERVER
        elif error.code in _POLICY_CODES or "safety system" in detail.lower():
            failure = ProviderFailure.CONTENT_POLICY
        else:
            failure = ProviderFailure.BAD_REQUEST
        return ProviderError(_NAME, failure, detail, status)
