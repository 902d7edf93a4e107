"""The engine half of the services, built once, on a background thread at startup.

What needs torch and its libraries (the device, the models, the generation front that validates
against them, A1111's options, downloads) is an :class:`Engine`. Importing torch, diffusers and
transformers takes seconds, so the composition root serves the UI and the API first and builds the
engine behind them; whoever asks for it before it is there waits (:meth:`EngineSlot.get`), and a
build that failed raises its error to every reader instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modules.engine.devices import DeviceInfo
    from modules.services.downloads import ModelDownloader
    from modules.services.generation import GenerationService
    from modules.services.models import ModelManager
    from modules.services.server_options import ServerOptions

STARTING = "starting…"  # the device's description while the engine is still being built


@dataclass(frozen=True)
class Engine:
    device: DeviceInfo
    models: ModelManager
    generation: GenerationService  # the front: every face submits jobs through it
    server_options: ServerOptions  # the settings in force as A1111's option names (GET/POST /options)
    downloads: ModelDownloader


class EngineSlot:
    """One engine, built by ``build`` at most once: on a thread of its own (:meth:`start`, at startup)
    or on the caller's (:meth:`build_now`, tests and scale-out)."""

    def __init__(self, build: Callable[[], Engine]) -> None:
        self._build = build
        self._future: Future[Engine] = Future()
        self._lock = threading.Lock()
        self._claimed = False

    @property
    def future(self) -> Future[Engine]:
        """The engine or the build's error, once built (reading it starts nothing)."""
        return self._future

    def start(self) -> Future[Engine]:
        """Start the build in the background unless it has started; the future carries the engine or
        the build's error."""
        if self._claim():
            threading.Thread(target=self._run, name="atelier-engine-start", daemon=True).start()
        return self._future

    def build_now(self) -> Engine:
        """Build on this thread (a build already under way is waited for instead)."""
        if self._claim():
            self._run()
        return self._future.result()

    def get(self, timeout: float | None = None) -> Engine:
        """The engine, once built (the build starts now if nothing started it yet)."""
        return self.start().result(timeout)

    def peek(self) -> Engine | None:
        """The engine if it is built, without waiting."""
        future = self._future
        return future.result() if future.done() and future.exception() is None else None

    def describe(self) -> tuple[str, str | None]:
        """(device, loaded checkpoint title) for the workers panel, without waiting for the engine."""
        engine = self.peek()
        if engine is None:
            return STARTING, None
        current = engine.models.current()
        return engine.device.describe(), current.title if current is not None else None

    def _claim(self) -> bool:
        with self._lock:
            claimed, self._claimed = self._claimed, True
            return not claimed

    def _run(self) -> None:
        try:
            engine = self._build()
        except BaseException as exc:  # handed to every reader (and to the app, which stops on it)
            self._future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._future.set_result(engine)
