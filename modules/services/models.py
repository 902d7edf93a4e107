"""Checkpoints in use: keeping one loaded (and a refiner), the RAM cache, the VAE swapped in.

The checkpoint files themselves are found and named in :mod:`modules.services.checkpoint_registry`
(re-exported here). A failed load never replaces the model that is loaded: the new one is built
first, and placed on the device only once the previous one has left it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from modules.engine.devices import DeviceInfo, MemoryMode
from modules.engine.families.base import ComponentDirs
from modules.engine.fast_path import apply_fast_path
from modules.engine.loader import LoadedModel, load_model
from modules.engine.memory import free_device_bytes, on_device_bytes, park, release_memory, unpark, weights_bytes
from modules.engine.placement import effective_mode, offload_idle, place, place_component, replace_mode
from modules.engine.vae import load_vae, swap_vae
from modules.errors import ModelLoadError, NoModelLoadedError
from modules.paths import AppPaths
from modules.services.addons import AddonFile
from modules.services.checkpoint_registry import CheckpointInfo, CheckpointRegistry
from modules.services.model_families_found import FamilyFinder

__all__ = ["CheckpointInfo", "CheckpointRegistry", "ModelManager", "SwitchReport", "component_dirs"]

log = logging.getLogger(__name__)

GIB = 1024**3
# What a job needs beyond the weights when two checkpoints share the GPU (activations, the VAE decode).
_ROOM_FOR_A_JOB = 2 * GIB


def component_dirs(paths: AppPaths) -> ComponentDirs:
    """Where a checkpoint's missing text encoders, VAE and tokenizers are looked for (Forge's folders)."""
    return ComponentDirs(text_encoders=paths.text_encoder_dirs, vaes=paths.vae_dirs, tokenizers=paths.tokenizers_dir)


@dataclass(frozen=True)
class SwitchReport:
    """How the latest checkpoint switch went (shown in logs, checked by tests and benchmarks)."""

    title: str
    from_cache: bool
    seconds: float


@dataclass(frozen=True)
class _VaeInUse:
    """Which VAE the loaded model's pipeline holds, and the checkpoint's own to put back."""

    model: LoadedModel
    file: AddonFile | None  # None: the checkpoint's own
    own: object


class ModelManager:
    """Holds the loaded checkpoint (and a refiner, when jobs ask for one). Loads run on the job
    worker, so they never race a generation."""

    def __init__(self, registry: CheckpointRegistry, device: DeviceInfo, config_cache: Path, cache_size: int = 1,
                 fast_path: bool = False, components: ComponentDirs | None = None) -> None:
        self.registry = registry
        self.components = components or ComponentDirs()
        self.families = FamilyFinder(self.loaded_family)  # each checkpoint's family, for lists and the UI
        self.device = device
        self._config_cache = config_cache
        self._cache_size = cache_size
        self._fast_path = fast_path
        # Checkpoints kept in RAM besides the loaded one, least recently used first.
        self._cache: OrderedDict[Path, tuple[LoadedModel, CheckpointInfo]] = OrderedDict()
        self.last_switch: SwitchReport | None = None
        self._lock = threading.Lock()
        self._loaded: tuple[LoadedModel, CheckpointInfo] | None = None
        self._last_error: str | None = None
        self._last_loaded: CheckpointInfo | None = None
        self._refiner: tuple[LoadedModel, CheckpointInfo] | None = None
        # The server's checkpoint: what jobs naming none run on, what the UI and GET /options show. Only
        # a switch (the UI's choice, POST /options, the startup load) changes it; a job that names
        # another checkpoint (an override) loads that one for itself and leaves the selection alone.
        self._selected: CheckpointInfo | None = None
        self._vae: _VaeInUse | None = None
        self._full_precision_vaes: set[Path] = set()  # external VAEs that overflowed in half precision
        self.on_loaded: Callable[[CheckpointInfo, LoadedModel], None] | None = None  # extensions' MODEL_LOADED

    @property
    def fast_path(self) -> bool:
        """Whether models get the fast path (compiled UNet, LoRAs merged into the weights)."""
        return self._fast_path

    @property
    def last_error(self) -> str | None:
        """Why the most recent load failed, until a load succeeds; shown next to the model list."""
        with self._lock:
            return self._last_error

    def last_loaded(self) -> CheckpointInfo | None:
        """The checkpoint loaded most recently, even if it has since been unloaded."""
        with self._lock:
            return self._last_loaded

    def loaded_family(self, path: Path) -> str | None:
        """The family key of ``path`` when it is loaded, the refiner or in the RAM cache (no file read)."""
        with self._lock:
            slots = [self._loaded, self._refiner, *self._cache.values()]
        return next((model.arch.value for model, info in filter(None, slots) if info.path == path), None)

    def loaded_model(self) -> LoadedModel | None:
        with self._lock:
            return self._loaded[0] if self._loaded else None

    def current(self) -> CheckpointInfo | None:
        """The server's selected checkpoint (before any selection: the loaded one)."""
        with self._lock:
            return self._selected or (self._loaded[1] if self._loaded else None)

    def select(self, query: str) -> CheckpointInfo:
        """Make ``query`` the checkpoint that jobs naming none will use, without loading it here:
        the front process of a scale-out setup, whose workers load it."""
        info = self.registry.hashed(self.registry.require(query))
        with self._lock:
            self._selected, self._last_loaded, self._last_error = info, info, None
        log.info("Checkpoint %s selected for the workers", info.title)
        return info

    def switch(self, query: str) -> CheckpointInfo:
        """Load ``query`` and make it the server's checkpoint (a switch, not a job's override)."""
        info = self.load(query)
        with self._lock:
            self._selected = info
        return info

    def load(self, query: str) -> CheckpointInfo:
        """Make ``query`` the loaded checkpoint, from the RAM cache when it is there. On any error
        the previous one stays loaded."""
        info = self.registry.require(query)
        started = time.perf_counter()
        with self._lock:
            if self._loaded and self._loaded[1].path == info.path:
                return self._loaded[1]
            cached = self._cache.pop(info.path, None)
        if cached is not None:
            model, info = cached
        else:
            try:  # read into RAM; the old model stays untouched
                model = load_model(info.path, self.device, self._config_cache, placed=False,
                                   components=self.components)
            except ModelLoadError as exc:
                with self._lock:
                    self._last_error = str(exc)
                raise
            info = self.registry.hashed(info)
        self._make_current(model, info, fresh=cached is None)
        self.last_switch = SwitchReport(info.title, cached is not None, time.perf_counter() - started)
        log.info("Checkpoint %s %s in %.2f s", info.title, "taken from the RAM cache" if cached else "loaded",
                 self.last_switch.seconds)
        if self.on_loaded is not None:
            self.on_loaded(info, model)
        return info

    def _make_current(self, model: LoadedModel, info: CheckpointInfo, fresh: bool) -> None:
        """``model`` becomes the loaded one. The previous one leaves the device first (to the RAM cache,
        or freed), unless the GPU has room for both, so a switch never needs two models' memory."""
        with self._lock:
            previous, vae_state = self._loaded, self._vae
        # 1. The previous model, with its own VAE back in, leaves the device.
        if previous is not None:
            if vae_state is not None and vae_state.model is previous[0]:
                self._swap_in(previous[0], vae_state.own)
            self._retire(previous, model)
        # 2. The new one takes its place; if that fails, the previous one comes back.
        try:
            self._place(model, fresh)
        except Exception as exc:
            if previous is not None:
                self._take_back(previous)
            with self._lock:
                self._last_error = f"{info.name}: {exc}"
            raise ModelLoadError(str(info.path), f"could not be placed on {self.device.device}: {exc}") from exc
        with self._lock:
            self._loaded, self._last_error, self._last_loaded = (model, info), None, info
            self._vae = None

    def _place(self, model: LoadedModel, fresh: bool) -> None:
        if not fresh:
            unpark(model)
            return
        place(model.pipeline, model.arch, model.device)
        if self._fast_path:
            apply_fast_path(model)

    def _room_for_both(self, incoming: LoadedModel) -> bool:
        """Whether the GPU can hold the incoming model beside the parked one, with room for a job."""
        free = free_device_bytes(self.device.device)
        if free is None or effective_mode(self.device, incoming.arch) is not MemoryMode.FULL:
            return False
        needed = weights_bytes(incoming) - on_device_bytes(incoming) + _ROOM_FOR_A_JOB
        return free >= needed

    def _retire(self, previous: tuple[LoadedModel, CheckpointInfo], incoming: LoadedModel) -> None:
        """The previous model goes to the RAM cache (kept on the GPU when there is room), or is freed."""
        evicted = []
        if self._cache_size > 0:
            if not self._room_for_both(incoming):
                park(previous[0])
            with self._lock:
                self._loaded = None
                self._cache[previous[1].path] = previous
                while len(self._cache) > self._cache_size:
                    evicted.append(self._cache.popitem(last=False)[1])
        else:
            with self._lock:
                self._loaded = None
        dropped = bool(evicted) or self._cache_size == 0
        del previous, evicted
        release_memory(self.device.device, collect=dropped)

    def _take_back(self, previous: tuple[LoadedModel, CheckpointInfo]) -> None:
        with self._lock:
            self._cache.pop(previous[1].path, None)
            self._loaded = previous
        unpark(previous[0])

    def make_room(self) -> None:
        """Park cached models still on the GPU (a job needs their memory), then free what is unused."""
        with self._lock:
            cached = [model for model, _info in self._cache.values()]
        for model in cached:
            if on_device_bytes(model):
                park(model)
        release_memory(self.device.device)  # after a failed job: its dead tensors too

    def use_mode(self, model: LoadedModel, mode: MemoryMode) -> LoadedModel:
        """``model`` in memory mode ``mode`` for a job (the memory plan's choice); the manager keeps
        the re-placed model, so the next job starts from it."""
        if effective_mode(model.device, model.arch) is mode:
            return model
        device = replace(model.device, memory=mode)
        replace_mode(model.pipeline, model.arch, device)
        moved = replace(model, device=device)
        with self._lock:
            if self._loaded is not None and self._loaded[0] is model:
                self._loaded = (moved, self._loaded[1])
            if self._vae is not None and self._vae.model is model:
                self._vae = replace(self._vae, model=moved)
        return moved

    def job_done(self, model: LoadedModel) -> None:
        """After a job: under model offload, every component back to RAM until the next one; an
        external VAE that had to fall back to float32 is remembered, so it loads in float32 next time."""
        offload_idle(model.pipeline, model.arch, model.device)
        with self._lock:
            state = self._vae if self._vae is not None and self._vae.model is model else None
            if state is not None and state.file is not None and model.pipeline.vae.dtype != self.device.vae:
                self._full_precision_vaes.add(state.file.path)

    def cached_titles(self) -> list[str]:
        """Checkpoints waiting in RAM, least recently used first."""
        with self._lock:
            return [info.title for _model, info in self._cache.values()]

    def unload(self) -> None:
        """Free every model: the loaded one, the refiner and the RAM cache."""
        with self._lock:
            self._loaded = self._refiner = self._vae = self._selected = None
            self._cache.clear()
        release_memory(self.device.device)

    def release(self) -> None:
        """Give back memory after a failed job (an out-of-memory error leaves dead tensors behind),
        with any cached model still on the GPU parked in RAM."""
        self.make_room()

    def acquire(self, query: str | None) -> tuple[LoadedModel, CheckpointInfo]:
        """The model a job should use: the one asked for, else the server's selected one, else the
        loaded one, else the first found (which then becomes the selection)."""
        with self._lock:
            selected = self._selected
        wanted = query or (selected.name if selected is not None else None)
        if wanted:
            self.load(wanted)
        with self._lock:
            loaded = self._loaded
        if loaded is None:
            available = self.registry.all()
            if not available:
                folders = ", ".join(str(f) for f in self.registry.folders)
                raise NoModelLoadedError(f"No checkpoint found. Put a .safetensors file or a diffusers folder in {folders} "
                                         "and press the refresh button next to the checkpoint list.")
            self._load_first_that_works(available)
            with self._lock:
                loaded = self._loaded
            assert loaded is not None
        return loaded

    def _load_first_that_works(self, available: tuple[CheckpointInfo, ...]) -> None:
        """With nothing loaded and nothing asked for: the first checkpoint that loads (a broken file
        first in the list must not stop every job); the first error when none does."""
        first_error: ModelLoadError | None = None
        for info in available:
            try:
                self.switch(info.name)
                return
            except ModelLoadError as exc:
                log.warning("Skipping %s: %s", info.name, exc.reason)
                first_error = first_error or exc
        assert first_error is not None
        raise first_error

    def acquire_refiner(self, query: str) -> tuple[LoadedModel, CheckpointInfo]:
        """The refiner a job names, kept loaded beside the main model for the next job."""
        info = self.registry.require(query)
        with self._lock:
            for slot in (self._loaded, self._refiner):
                if slot is not None and slot[1].path == info.path:
                    return slot
        model = load_model(info.path, self.device, self._config_cache, components=self.components)
        info = self.registry.hashed(info)
        with self._lock:
            self._refiner = (model, info)
        return model, info

    def use_vae(self, model: LoadedModel, file: AddonFile | None) -> None:
        """Give ``model`` the VAE in ``file`` (None: its own). A VAE that fails to load raises
        AddonLoadError and leaves the one in use in place."""
        with self._lock:
            state = self._vae if self._vae is not None and self._vae.model is model else None
        if state is not None and state.file == file:
            return
        own = state.own if state is not None else model.pipeline.vae
        if state is None and file is None:
            return  # nothing swapped yet: the checkpoint's own is in place
        vae = own if file is None else load_vae(file.path, model.arch, model.device, self._config_cache)
        if file is not None and file.path in self._full_precision_vaes:
            vae.to(dtype=torch.float32)  # it overflowed in half precision before
        self._swap_in(model, vae)
        with self._lock:
            self._vae = _VaeInUse(model, file, own)
        log.info("VAE: %s", file.name if file else "the checkpoint's own")

    def _swap_in(self, model: LoadedModel, vae: object) -> object:
        """Put ``vae`` into the model under its memory scheme; the one it replaces waits in RAM."""
        old = swap_vae(model.pipeline, vae)  # type: ignore[arg-type]
        place_component(model.pipeline, model.arch, model.device, vae)  # type: ignore[arg-type]
        if old is not vae and effective_mode(model.device, model.arch) is MemoryMode.FULL:
            old.to("cpu")
        return old
