"""The engine a Ray worker runs: the renderer alone, the same one the in-process worker runs.

:class:`EngineConfig` is what a worker host passes to its actors (folders, device policy, cache
size); each actor builds its :class:`RenderEngine` from it, in its own process, on the GPU Ray gave
it. The engine keeps checkpoints loaded (and in its RAM cache) between jobs and saves nothing: the
front stores the PNG bytes it returns. It loads the same extensions as the front, from the worker's
own folders, and runs their worker-side hooks (JOB_START, MODEL_CALL, DENOISED, AFTER_CFG,
STEP_END, INFOTEXT); the front runs the rest.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch

from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.loader import LoadedModel
from modules.params import GenerationRequest
from modules.paths import resolve_paths
from modules.services.addon_library import AddonLibrary
from modules.services.addons import AddonKind, AddonRegistry
from modules.services.extension_files import ExtensionFiles
from modules.services.extension_host import WorkerHost
from modules.services.extensions import ExtensionManager
from modules.services.face_restorers import FaceRestorers
from modules.services.hashing import HashCache
from modules.services.job_hooks import job_hooks_for
from modules.services.job_types import JobContext
from modules.services.model_downloads import upscaler_aliases
from modules.services.models import CheckpointInfo, CheckpointRegistry, ModelManager, component_dirs
from modules.services.preview_decoders import PreviewDecoders
from modules.services.renderer import EncodingSink, Renderer
from modules.services.upscaler_library import UpscalerLibrary

log = logging.getLogger(__name__)


class WorkerEngine(Protocol):
    """What a worker actor drives: the real engine, or a fake one in tests and benchmarks."""

    def run(self, spec: Any, context: JobContext) -> Any: ...

    def device(self) -> str: ...

    def checkpoints(self) -> tuple[str, ...]: ...

    def model(self) -> tuple[str | None, str | None]:
        """(name, title) of the checkpoint held."""

    def loads(self) -> int: ...

    def unload(self) -> None: ...

    def refresh(self) -> None: ...


class EngineFactory(Protocol):
    """Picklable recipe for a worker's engine, built inside the actor's process."""

    def build(self) -> WorkerEngine: ...


@dataclass(frozen=True)
class EngineConfig:
    """A worker host's folders and device settings (its own models folder, as on the front)."""

    data_dir: Path | None = None
    models_dir: Path | None = None
    ckpt_dir: Path | None = None
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    vae_dir: Path | None = None
    model_folders: tuple[tuple[str, Path], ...] = ()  # --esrgan-models-path etc.
    policy: DevicePolicy = DevicePolicy()
    checkpoint_cache: int = 1
    fast_path: bool = False
    torch_threads: int | None = None  # None: torch's default (Ray sets one thread per CPU it grants)
    extensions: bool = True  # False: --disable-all-extensions

    def build(self) -> RenderEngine:
        return RenderEngine(self)


class RenderEngine:
    """Checkpoints, add-ons and the renderer, built once per worker."""

    def __init__(self, config: EngineConfig) -> None:
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        paths = resolve_paths(config.data_dir, config.models_dir, config.ckpt_dir, lora_dir=config.lora_dir,
                              embeddings_dir=config.embeddings_dir, vae_dir=config.vae_dir,
                              model_folders=dict(config.model_folders))
        self._device = choose_device(config.policy)
        hashes = HashCache(paths.hash_cache)
        self._registry = CheckpointRegistry(paths.checkpoint_dirs, hashes)
        self._models = ModelManager(self._registry, self._device, paths.config_cache, config.checkpoint_cache,
                                    config.fast_path, components=component_dirs(paths))
        self._lock = threading.Lock()
        self._loaded: list[tuple[str, str]] = []
        self._load_count = 0
        self._models.on_loaded = self._on_loaded
        addons = AddonLibrary(AddonRegistry(AddonKind.LORA, paths.lora_dirs, hashes),
                              AddonRegistry(AddonKind.EMBEDDING, paths.embedding_dirs, hashes),
                              AddonRegistry(AddonKind.VAE, paths.vae_dirs, hashes))
        # Extensions for the hooks that run where the job renders; BEFORE_GENERATE, PLAN_IMAGES and
        # the saving hooks ran (or run) on the front.
        self._extensions = ExtensionManager(paths.builtin_extensions_dir, paths.user_extensions_dir,
                                            paths.extension_state_file, enabled=config.extensions)
        files = ExtensionFiles(paths, hashes)
        self._extensions.load_all(lambda name: WorkerHost(name, self._registry, paths.extension_settings_dir, files))
        self._renderer = Renderer(self._models, addons, PreviewDecoders(paths.taesd_dir),
                                  UpscalerLibrary(paths.upscaler_dirs, aliases=upscaler_aliases()),
                                  FaceRestorers(paths.gfpgan_dirs, paths.codeformer_dirs))
        log.info("Worker engine on %s; checkpoints in %s", self._device.describe(),
                 ", ".join(str(p) for p in paths.checkpoint_dirs))

    def _on_loaded(self, info: CheckpointInfo, model: LoadedModel) -> None:
        report = self._models.last_switch
        with self._lock:
            self._loaded.append((info.title, model.arch.label))
            if report is None or not report.from_cache:
                self._load_count += 1

    def run(self, spec: Any, context: JobContext) -> Any:
        if not isinstance(spec, GenerationRequest):
            raise TypeError(f"a worker renders generation requests, not {type(spec).__name__}")
        with self._lock:
            self._loaded.clear()
        sink = EncodingSink()
        hooks = job_hooks_for(self._extensions, context.job_id, spec)
        rendered = sink.rendered(self._renderer.render(spec, context, sink, hooks))
        with self._lock:
            loads = tuple(self._loaded)
        return replace(rendered, model_loads=loads)

    def device(self) -> str:
        return self._device.describe()

    def checkpoints(self) -> tuple[str, ...]:
        return tuple(info.name for info in self._registry.all())

    def model(self) -> tuple[str | None, str | None]:
        info = self._models.current()
        return (info.name, info.title) if info is not None else (None, None)

    def loads(self) -> int:
        with self._lock:
            return self._load_count

    def unload(self) -> None:
        self._models.unload()

    def refresh(self) -> None:
        self._registry.refresh()
