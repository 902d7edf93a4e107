"""One call to a provider, in Atelier's terms: what is asked (:class:`ImageCall`), what comes back
(:class:`CallResult`), and what a provider's client must do (:class:`ProviderClient`).

The clients (:mod:`.openai_provider`, :mod:`.google_provider`) turn these into the official packages'
calls and turn every failure into a :class:`modules.errors.ProviderError` naming the provider and
the reason; the key they are given never appears in a message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from modules.services.remote.catalog import Provider

DETAIL_LIMIT = 200  # characters of a provider's own message kept in ours
# What a provider's message may carry of a key: OpenAI's masked echo ("sk-ab****cd") and Google's
# keys ("AIza" and 35 more characters), scrubbed even when not the key we were given.
_KEY_TRACES = (re.compile(r"\S*\*{3,}\S*"), re.compile(r"AIza[0-9A-Za-z_\-]{35}"))


def scrub(text: str, key: str | None, limit: int = DETAIL_LIMIT) -> str:
    """A provider's message fit for ours: one line, short, with no trace of the key."""
    if key:
        text = text.replace(key, "<key>")
    for trace in _KEY_TRACES:
        text = trace.sub("<key>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class ProviderAccess:
    """How to reach a provider: its key (never shown, logged or echoed) and base URL (None: the
    provider's own). A provider is configured when it has a key; a base URL alone is not enough."""

    api_key: str | None = None
    base_url: str | None = None
    timeout_seconds: float = 120.0  # one HTTP attempt
    max_retries: int = 2  # on 429 and 5xx, with the client's backoff (Retry-After honoured)

    def __repr__(self) -> str:  # a repr in a log line or a traceback must not carry the key
        key = "set" if self.api_key else "none"
        return f"ProviderAccess(api_key=<{key}>, base_url={self.base_url!r})"

    @property
    def configured(self) -> bool:
        return bool(self.api_key)


@dataclass(frozen=True)
class ImageCall:
    """One provider call: ``count`` images of ``width`` x ``height``. ``init_image`` (PNG bytes, at
    the call's size) makes it an edit; ``mask`` (PNG, white = change, at the same size) limits it."""

    model: str  # the provider's id ("dall-e-3"), without the provider's prefix
    prompt: str
    width: int
    height: int
    count: int = 1
    negative_prompt: str = ""  # sent only to models that take one
    quality: str | None = None
    style: str | None = None
    init_image: bytes | None = None
    mask: bytes | None = None


@dataclass(frozen=True)
class CallResult:
    """The images a call made (encoded, as the provider sent them: PNG, JPEG or WebP bytes), and for
    each the prompt the provider says it used instead (None when it did not say)."""

    images: tuple[bytes, ...]
    revised_prompts: tuple[str | None, ...]


class ProviderClient(Protocol):
    """A provider's client: makes images, lists the server's models. Raises ProviderError only."""

    provider: Provider

    def generate(self, call: ImageCall) -> CallResult: ...

    def list_models(self) -> list[str]: ...
