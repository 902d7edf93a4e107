"""The Google provider: Atelier's :class:`ImageCall` as an Imagen call through the official
``google-genai`` client, and every failure of it as a :class:`ProviderError`.

``generate_images`` answers only in the client's Vertex mode; with an API key that is Vertex
"express mode" (``POST {base}/v1beta1/publishers/google/models/{model}:predict``, the key in the
``x-goog-api-key`` header). Imagen takes an aspect ratio, not a size, so only the sizes of
:data:`IMAGEN_ASPECTS` can be asked for; it makes no edits here. Retries (408, 429, 5xx, timeouts,
refused connections) are the client's own, with exponential backoff; it does not read Retry-After.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import httpx
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from modules.errors import ProviderError, ProviderFailure
from modules.services.remote.calls import CallResult, ImageCall, ProviderAccess, scrub
from modules.services.remote.catalog import IMAGEN_ASPECTS, Provider

try:  # the client's transport: httpx2 (httpx's fork) in recent releases, httpx itself in older ones
    import httpx2
except ImportError:  # pragma: no cover - depends on the installed client
    httpx2 = None

_NAME = Provider.GOOGLE.value
_RETRY_STATUSES = [408, 429, 500, 502, 503, 504]
_TIMEOUTS = tuple(module.TimeoutException for module in (httpx, httpx2) if module is not None)
_TRANSPORT = tuple(module.TransportError for module in (httpx, httpx2) if module is not None)


class GoogleProvider:
    """Images from Google's Imagen; see the module docstring.

    ``retry_delay``: the first backoff in seconds (it doubles per retry, with up to as much again of
    jitter); tests make it small, since the client does not honour the server's Retry-After."""

    provider = Provider.GOOGLE

    def __init__(self, access: ProviderAccess, *, retry_delay: float = 1.0) -> None:
        if not access.api_key:  # without one the client would fall back to the environment's credentials
            raise ProviderError(_NAME, ProviderFailure.BAD_KEY, "no API key is set")
        self._key = access.api_key
        self._timeout = access.timeout_seconds
        retry = types.HttpRetryOptions(attempts=access.max_retries + 1, initial_delay=retry_delay,
                                       max_delay=max(30.0, retry_delay), jitter=retry_delay,
                                       http_status_codes=_RETRY_STATUSES)
        # HttpOptions.timeout is in milliseconds (0 would mean none); it bounds each attempt.
        options = types.HttpOptions(base_url=access.base_url or None, retry_options=retry,
                                    timeout=max(1, round(access.timeout_seconds * 1000)))
        self._client = genai.Client(vertexai=True, api_key=access.api_key, http_options=options)

    def __repr__(self) -> str:
        return "GoogleProvider()"

    def generate(self, call: ImageCall) -> CallResult:
        if call.init_image is not None:
            raise ProviderError(_NAME, ProviderFailure.BAD_REQUEST, "edits are not offered")
        aspect = IMAGEN_ASPECTS.get((call.width, call.height))
        if aspect is None:
            sizes = ", ".join(f"{w}x{h}" for w, h in IMAGEN_ASPECTS)
            raise ProviderError(_NAME, ProviderFailure.BAD_REQUEST,
                                f"{call.width}x{call.height} is not one of Imagen's sizes ({sizes})")
        config = types.GenerateImagesConfig(
            number_of_images=call.count, aspect_ratio=aspect,
            include_rai_reason=True,  # so a filtered answer says why
            negative_prompt=call.negative_prompt if call.negative_prompt.strip() else None)
        try:
            with warnings.catch_warnings():  # generate_images is deprecated in favour of Gemini image models
                warnings.simplefilter("ignore", genai_errors.ExperimentalWarning)
                answer = self._client.models.generate_images(model=call.model, prompt=call.prompt, config=config)
        except (genai_errors.APIError, ValueError, *_TRANSPORT) as error:
            raise self._failure(error) from None
        return self._result(answer)

    def list_models(self) -> list[str]:
        """The publisher models the server lists (``GET {base}/v1beta1/publishers/google/models``),
        by their short ids; every page is read."""
        try:
            names = [model.name for model in self._client.models.list() if model.name]
        except (genai_errors.APIError, ValueError, *_TRANSPORT) as error:
            raise self._failure(error) from None
        return [name.rsplit("/", 1)[-1] for name in names]

    def _result(self, answer: types.GenerateImagesResponse) -> CallResult:
        images: list[bytes] = []
        prompts: list[str | None] = []
        reasons: list[str] = []
        for generated in answer.generated_images or []:
            data = generated.image.image_bytes if generated.image is not None else None
            if data:
                images.append(data)
                prompts.append(generated.enhanced_prompt or None)
            elif generated.rai_filtered_reason and generated.rai_filtered_reason not in reasons:
                reasons.append(generated.rai_filtered_reason)
        if not images:  # Imagen's safety filter drops images, and says why only when asked
            detail = "; ".join(reasons) or "no images came back (filtered by the safety system)"
            raise ProviderError(_NAME, ProviderFailure.CONTENT_POLICY, scrub(detail, self._key))
        return CallResult(tuple(images), tuple(prompts))

    def _failure(self, error: Exception) -> ProviderError:
        """The ProviderError an exception of the client stands for."""
        if isinstance(error, _TIMEOUTS):
            return ProviderError(_NAME, ProviderFailure.TIMEOUT, f"no answer within {self._timeout:g} s")
        if isinstance(error, _TRANSPORT):
            return ProviderError(_NAME, ProviderFailure.NETWORK, scrub(str(error) or type(error).__name__, self._key))
        if not isinstance(error, genai_errors.APIError):  # an answer the client could not read
            return ProviderError(_NAME, ProviderFailure.SERVER, scrub(f"unexpected answer: {error}", self._key))
        status = error.code
        detail = scrub(error.message or error.status or "", self._key)
        if status in (401, 403) or _key_refused(error.details):
            failure = ProviderFailure.BAD_KEY
        elif status == 429:
            failure = ProviderFailure.RATE_LIMIT
        elif status == 408:
            failure = ProviderFailure.TIMEOUT
        elif isinstance(error, genai_errors.ServerError) or (status or 0) >= 500:
            failure = ProviderFailure.SERVER
        else:
            failure = ProviderFailure.BAD_REQUEST
        return ProviderError(_NAME, failure, detail, status or None)


def _key_refused(details: Any) -> bool:
    """Whether an error names a refused key: Google answers a wrong key with 400 INVALID_ARGUMENT and
    the reason API_KEY_INVALID, not with 401 or 403."""
    try:
        text = json.dumps(details)
    except (TypeError, ValueError):
        text = str(details)
    return "API_KEY_INVALID" in text
