"""The remote engines as the rest of Atelier sees them: which providers are configured (and how),
which models they offer, what those cost, and the client that calls each provider.

A provider is configured when it has a key. Its key and base URL come from, in order: what an admin
saved in the UI (:mod:`.access_file`), config.yaml (``openai_api_key``, ``google_api_key``, ...),
then the environment the official clients read (``OPENAI_API_KEY``, ``OPENAI_BASE_URL``,
``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``). Its models are the built-in table's plus the image models
its server lists (asked on refresh, kept until the next). An admin can switch them all off.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from modules.config import Settings
from modules.errors import ForbiddenError, ModelNotFoundError, ProviderError
from modules.remote_prices import merged_prices, price_per_image
from modules.services.job_types import Job, JobContext, JobStatus, ModelSwitch
from modules.services.remote.access_file import AccessFile
from modules.services.remote.calls import ProviderAccess, ProviderClient
from modules.services.remote.catalog import (
    KNOWN_MODELS,
    Provider,
    RemoteModel,
    listed_model,
    looks_like_image_model,
    split_title,
)

log = logging.getLogger(__name__)

KEY_VARIABLES: Mapping[Provider, tuple[str, ...]] = {Provider.OPENAI: ("OPENAI_API_KEY",),
                                                     Provider.GOOGLE: ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
BASE_URL_VARIABLES: Mapping[Provider, tuple[str, ...]] = {Provider.OPENAI: ("OPENAI_BASE_URL",),
                                                          Provider.GOOGLE: ("GOOGLE_VERTEX_BASE_URL",)}
SWITCHED_OFF = "Remote engines are switched off on this server (an admin's setting remote_engines)."


class KeySource(enum.Enum):
    SAVED = "saved in the UI"
    CONFIG = "config.yaml"
    ENVIRONMENT = "environment"


@dataclass(frozen=True)
class ProviderStatus:
    """What the UI may say about a provider: never its key."""

    provider: Provider
    key_source: KeySource | None  # None: no key, so not configured
    base_url: str | None

    @property
    def configured(self) -> bool:
        return self.key_source is not None


def default_client(provider: Provider, access: ProviderAccess) -> ProviderClient:
    """The official package's client for ``provider`` (imported on first use: none is needed to start)."""
    if provider is Provider.OPENAI:
        from modules.services.remote.openai_provider import OpenAIProvider

        return OpenAIProvider(access)
    from modules.services.remote.google_provider import GoogleProvider

    return GoogleProvider(access)


class RemoteEngines:
    """Providers, their models and prices, and clients; ``settings`` are the settings in force."""

    def __init__(self, settings: Callable[[], Settings], saved: AccessFile, environ: Mapping[str, str],
                 make_client: Callable[[Provider, ProviderAccess], ProviderClient] = default_client) -> None:
        self._settings = settings
        self.saved = saved
        self._environ = dict(environ)  # read once: a key exported later needs a restart, as for the clients
        self._make_client = make_client
        self._lock = threading.Lock()
        self._listed: dict[Provider, tuple[str, ...]] = {}  # model ids each server listed at the last refresh
        self._selected: str | None = None  # the server's selected model when it is a remote one

    # --- configuration ---------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        return self._settings().remote_engines

    def access(self, provider: Provider) -> ProviderAccess:
        """The key and base URL in force for ``provider``, with the settings' timeout and retries."""
        key, _ = self._key(provider)
        settings = self._settings()
        return ProviderAccess(api_key=key, base_url=self._base_url(provider), timeout_seconds=settings.remote_timeout,
                              max_retries=settings.remote_retries)

    def status(self) -> tuple[ProviderStatus, ...]:
        return tuple(ProviderStatus(p, self._key(p)[1], self._base_url(p)) for p in Provider)

    def _key(self, provider: Provider) -> tuple[str | None, KeySource | None]:
        saved = self.saved.read().get(provider, {}).get("api_key")
        if saved:
            return saved, KeySource.SAVED
        configured = getattr(self._settings(), f"{provider.value}_api_key")
        if configured:
            return configured, KeySource.CONFIG
        found = next((self._environ[v] for v in KEY_VARIABLES[provider] if self._environ.get(v)), None)
        return (found, KeySource.ENVIRONMENT) if found else (None, None)

    def _base_url(self, provider: Provider) -> str | None:
        saved = self.saved.read().get(provider, {}).get("base_url")
        configured = getattr(self._settings(), f"{provider.value}_base_url")
        from_env = next((self._environ[v] for v in BASE_URL_VARIABLES[provider] if self._environ.get(v)), None)
        return saved or configured or from_env or None

    # --- models ------------------------------------------------------------------------------------

    def models(self) -> tuple[RemoteModel, ...]:
        """The configured providers' models (none while switched off): the table's, then listed ones."""
        if not self.enabled:
            return ()
        configured = {s.provider for s in self.status() if s.configured}
        known = [m for m in KNOWN_MODELS if m.provider in configured]
        titles = {m.title for m in known}
        with self._lock:
            listed = [listed_model(p, name) for p, names in self._listed.items() if p in configured for name in names]
        return tuple(known + [m for m in listed if m.title not in titles])

    def titles(self) -> list[str]:
        return [m.title for m in self.models()]

    def find(self, title: str | None) -> RemoteModel | None:
        """The remote model ``title`` names, if it is one on offer now."""
        if not title:
            return None
        wanted = title.strip().lower()
        return next((m for m in self.models() if m.title.lower() == wanted), None)

    def require(self, title: str) -> RemoteModel:
        """The model ``title`` names; why not, when it is not on offer (switched off, no key, unknown)."""
        parts = split_title(title)
        if parts is None:
            raise ModelNotFoundError(title, self.titles())
        if not self.enabled:
            raise ForbiddenError(SWITCHED_OFF, limit="remote_engines")
        provider, _ = parts
        if not self.access(provider).configured:
            names = " or ".join(KEY_VARIABLES[provider])
            raise ModelNotFoundError(f"{title} ({provider.label} is not configured: set {names}, "
                                     f"{provider.value}_api_key in config.yaml, or a key in Settings)", self.titles())
        found = self.find(title)
        if found is None:
            raise ModelNotFoundError(title, self.titles())
        return found

    def selected(self) -> RemoteModel | None:
        """The remote model an admin selected as the server's checkpoint (None: a local one is), while
        it is on offer; jobs that name no checkpoint run on it."""
        with self._lock:
            title = self._selected
        return self.find(title)

    def selected_title(self) -> str | None:
        model = self.selected()
        return model.title if model is not None else None

    def select(self, title: str | None) -> RemoteModel | None:
        """Make ``title`` (a remote model on offer) the server's selection; None goes back to the local one."""
        model = self.require(title) if title is not None else None
        with self._lock:
            self._selected = model.title if model is not None else None
        return model

    def refresh(self) -> None:
        """Ask each configured provider's server for its models; one that does not answer keeps the table's."""
        for status in self.status():
            if not status.configured or not self.enabled:
                continue
            try:
                names = self.client(status.provider).list_models()
            except ProviderError as exc:
                log.warning("The model list of %s was not read: %s", status.provider.label, exc)
                continue
            kept = tuple(sorted(n for n in names if looks_like_image_model(status.provider, n)))
            with self._lock:
                self._listed[status.provider] = kept

    # --- calls and prices --------------------------------------------------------------------------

    def client(self, provider: Provider) -> ProviderClient:
        return self._make_client(provider, self.access(provider))

    def price(self, model: RemoteModel, width: int, height: int, quality: str | None) -> float | None:
        """Dollars per image, from the built-in table and config.yaml's ``remote_prices``."""
        table = merged_prices(self._settings().remote_prices)
        return price_per_image(table, model.title, width, height, quality or (model.qualities or (None,))[0])


def selected_job(model: RemoteModel | None) -> Job:
    """A finished job for a remote model's selection (what a checkpoint switch's caller waits on)."""
    future: Future[Any] = Future()
    future.set_result(model)
    job = Job(id=f"select-{model.title if model else 'none'}", spec=ModelSwitch(model.title if model else ""),
              future=future, context=JobContext(), submitted_at=time.time(), status=JobStatus.FINISHED)
    return job
