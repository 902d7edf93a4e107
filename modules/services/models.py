"""Checkpoints: discovering them, naming them as A1111 does, and keeping one loaded.

Names follow A1111 so that API clients and saved infotexts keep working: ``name`` is the path
relative to its checkpoint folder, ``title`` is ``name [shorthash]``, ``model_name`` is the stem.
A failed load never replaces the model that is loaded: the new one is built first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from modules.engine.checkpoint_files import CHECKPOINT_SUFFIXES
from modules.engine.devices import DeviceInfo
from modules.engine.loader import LoadedModel, load_model
from modules.engine.memory import apply_fast_path, park, release_memory, unpark
from modules.engine.vae import load_vae, swap_vae
from modules.errors import ModelLoadError, ModelNotFoundError, NoModelLoadedError
from modules.services.addons import AddonFile
from modules.services.hashing import SHORT_HASH_LENGTH, HashCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint on disk, by A1111's naming."""

    path: Path
    name: str
    model_name: str
    sha256: str | None = None

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:SHORT_HASH_LENGTH] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    def matches(self, query: str) -> bool:
        q = query.strip()
        if q in (self.title, self.name, self.model_name, str(self.path)):
            return True
        if q.split(" [")[0] == self.name:  # a title whose hash we have not computed yet
            return True
        return bool(self.sha256 and len(q) >= 8 and self.sha256.startswith(q.lower()))


def _is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() and (path / "unet").is_dir()


def _scan_dir(root: Path) -> list[Path]:
    found: list[Path] = []
    if not root.is_dir():
        return found
    pending = [root]
    while pending:
        folder = pending.pop()
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                (found if _is_diffusers_folder(entry) else pending).append(entry)
            elif entry.suffix.lower() in CHECKPOINT_SUFFIXES:
                found.append(entry)
    return found


class CheckpointRegistry:
    """The checkpoints found in the configured folders; rescanned on :meth:`refresh`."""

    def __init__(self, folders: tuple[Path, ...], hashes: HashCache) -> None:
        self._folders = folders
        self._hashes = hashes
        self._lock = threading.Lock()
        self._items: tuple[CheckpointInfo, ...] | None = None

    @property
    def folders(self) -> tuple[Path, ...]:
        return self._folders

    def refresh(self) -> tuple[CheckpointInfo, ...]:
        items = []
        for root in self._folders:
            for path in _scan_dir(root):
                name = path.relative_to(root).as_posix()
                stem = path.name if path.is_dir() else path.stem
                items.append(CheckpointInfo(path=path, name=name, model_name=stem, sha256=self._hashes.cached(path)))
        items.sort(key=lambda i: i.name.lower())
        with self._lock:
            self._items = tuple(items)
        log.info("Found %d checkpoint(s) in %s", len(items), ", ".join(str(f) for f in self._folders))
        return self._items

    def all(self) -> tuple[CheckpointInfo, ...]:
        with self._lock:
            items = self._items
        return items if items is not None else self.refresh()

    def find(self, query: str) -> CheckpointInfo | None:
        for info in self.all():
            if info.matches(query):
                return info
        return None

    def require(self, query: str) -> CheckpointInfo:
        info = self.find(query)
        if info is None:
            raise ModelNotFoundError(query, [i.title for i in self.all()])
        return info

    def hashed(self, info: CheckpointInfo) -> CheckpointInfo:
        """``info`` with its sha256, computing it once; the registry's entry is updated too."""
        if info.sha256:
            return info
        full = replace(info, sha256=self._hashes.sha256(info.path))
        with self._lock:
            if self._items is not None:
                self._items = tuple(full if i.path == info.path else i for i in self._items)
        return full


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
                 fast_path: bool = False) -> None:
        self.registry = registry
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
        self.on_loaded: Callable[[CheckpointInfo, LoadedModel], None] | None = None  # extensions' MODEL_LOADED

    @property
    def last_error(self) -> str | None:
        """Why the most recent load failed, until a load succeeds; shown next to the model list."""
        with self._lock:
            return self._last_error

    def last_loaded(self) -> CheckpointInfo | None:
        """The checkpoint loaded most recently, even if it has since been unloaded."""
        with self._lock:
            return self._last_loaded

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
            unpark(model)
        else:
            try:
                model = load_model(info.path, self.device, self._config_cache)  # the old model stays untouched
            except ModelLoadError as exc:
                with self._lock:
                    self._last_error = str(exc)
                raise
            if self._fast_path:
                apply_fast_path(model)
            info = self.registry.hashed(info)
        self._make_current(model, info)
        self.last_switch = SwitchReport(info.title, cached is not None, time.perf_counter() - started)
        log.info("Checkpoint %s %s in %.2f s", info.title, "taken from the RAM cache" if cached else "loaded",
                 self.last_switch.seconds)
        if self.on_loaded is not None:
            self.on_loaded(info, model)
        return info

    def _make_current(self, model: LoadedModel, info: CheckpointInfo) -> None:
        """``model`` becomes the loaded one; the previous one goes to the RAM cache (or is freed)."""
        with self._lock:
            previous, self._loaded, self._last_error = self._loaded, (model, info), None
            self._last_loaded = info
            vae_state, self._vae = self._vae, None
        if previous is None:
            return
        if vae_state is not None and vae_state.model is previous[0]:  # cached with its own VAE back in
            swap_vae(previous[0].pipeline, vae_state.own)  # type: ignore[arg-type]
        evicted = []
        if self._cache_size > 0:
            park(previous[0])
            with self._lock:
                self._cache[previous[1].path] = previous
                while len(self._cache) > self._cache_size:
                    evicted.append(self._cache.popitem(last=False)[1])
        del previous, evicted
        release_memory(self.device.device)

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
        """Give back memory after a failed job (an out-of-memory error leaves dead tensors behind)."""
        release_memory(self.device.device)

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
        model = load_model(info.path, self.device, self._config_cache)
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
        vae = own if file is None else load_vae(file.path, model.arch, self.device, self._config_cache)
        swap_vae(model.pipeline, vae)  # type: ignore[arg-type]
        with self._lock:
            self._vae = _VaeInUse(model, file, own)
        log.info("VAE: %s", file.name if file else "the checkpoint's own")
