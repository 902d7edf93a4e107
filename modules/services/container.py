"""The :class:`Services` object: built once by the composition root and handed to the faces."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modules.config import Settings
from modules.engine.devices import DeviceInfo
from modules.paths import AppPaths
from modules.services.addon_library import AddonLibrary
from modules.services.addons import AddonKind, AddonRegistry
from modules.services.downloads import ModelDownloader
from modules.services.extension_host import ExtensionHost
from modules.services.extension_install import ExtensionInstaller
from modules.services.extensions import ExtensionManager
from modules.services.gallery import Gallery
from modules.services.generation import GenerationService
from modules.services.in_process import InProcessExecutor
from modules.services.hashing import HashCache
from modules.services.images import ImageSaver
from modules.services.jobs import JobQueue
from modules.services.models import CheckpointInfo, CheckpointRegistry, ModelManager
from modules.services.outputs import OutputStore
from modules.services.queue_contract import JobQueueContract
from modules.services.renderer import Renderer
from modules.services.scaleout.front import ScaleOut, build_ray_queue
from modules.services.server_options import ServerOptions
from modules.services.settings_store import SettingsStore
from modules.services.styles import StyleStore


@dataclass(frozen=True)
class Services:
    paths: AppPaths
    settings: Settings  # as loaded at startup (limits, queue size)
    options: SettingsStore  # the settings in force, changeable at run time
    server_options: ServerOptions  # the same, as A1111's option names (GET/POST /options)
    device: DeviceInfo
    registry: CheckpointRegistry
    models: ModelManager
    generation: GenerationService  # the front: every face submits jobs through it
    outputs: OutputStore  # the front's store: saving hooks, files, grids
    queue: JobQueueContract  # the in-process worker, or Ray workers (scaleout)
    downloads: ModelDownloader
    styles: StyleStore
    gallery: Gallery
    addons: AddonLibrary  # LoRAs, embeddings, VAEs
    extensions: ExtensionManager
    installer: ExtensionInstaller  # git clone/pull and pip for users' extensions
    on_close: Callable[[], None] | None = None  # scale-out: stop the Ray head this process started

    def close(self, timeout: float | None = 10.0) -> None:
        self.queue.stop(timeout)
        if self.on_close is not None:
            self.on_close()


def build_services(paths: AppPaths, settings: Settings, device: DeviceInfo, extensions: bool = True,
                   network_exposed: bool = False, insecure_extensions: bool = False,
                   scale_out: ScaleOut | None = None) -> Services:
    """Wire the services together, load the extensions (``extensions=False``: none, as
    ``--disable-all-extensions``) and start the worker (or, with ``scale_out``, the dispatch to Ray
    workers). No model is loaded yet. Installing extensions is refused when ``network_exposed``
    unless ``insecure_extensions``."""
    hashes = HashCache(paths.hash_cache)
    registry = CheckpointRegistry(paths.checkpoint_dirs, hashes)
    models = ModelManager(registry, device, paths.config_cache, settings.checkpoint_cache, settings.fast_path)
    styles = StyleStore(paths.styles_file)
    addons = AddonLibrary(AddonRegistry(AddonKind.LORA, paths.lora_dirs, hashes),
                          AddonRegistry(AddonKind.EMBEDDING, paths.embedding_dirs, hashes),
                          AddonRegistry(AddonKind.VAE, paths.vae_dirs, hashes))
    manager = ExtensionManager(paths.builtin_extensions_dir, paths.user_extensions_dir, paths.extension_state_file,
                               enabled=extensions)
    options = SettingsStore(paths.config_file, settings)
    outputs = OutputStore(ImageSaver(paths.outputs_dir), manager, settings.save_grid)
    # 1. The queue and its workers: the renderer runs here, or on Ray workers (scale-out).
    job_queue: JobQueueContract
    on_close = None
    if scale_out is None:
        job_queue = JobQueue(InProcessExecutor(Renderer(models, addons), outputs, manager), settings.queue_limit,
                             shared=settings.shared_jobs, describe=lambda: (device.describe(), _title(models.current())))
    else:
        job_queue, on_close = build_ray_queue(models, outputs, settings.queue_limit, settings.shared_jobs, scale_out)
    # 2. The front, which every face submits through; then the extensions, whose host submits through it too.
    generation = GenerationService(models, styles, settings.limits, addons, manager, options, job_queue)
    models.on_loaded = lambda info, model: manager.model_loaded(info.title, model.arch.label)
    manager.load_all(lambda name: ExtensionHost(name, generation, registry, paths.extension_settings_dir,
                                                outputs.saver))
    job_queue.start()
    return Services(paths=paths, settings=settings, options=options,
                    server_options=ServerOptions(options, models, addons, generation.switch_model), device=device,
                    registry=registry, models=models,
                    generation=generation, outputs=outputs, queue=job_queue, downloads=ModelDownloader(paths.default_checkpoint_dir),
                    styles=styles, gallery=Gallery(paths.outputs_dir, paths.cache_dir), addons=addons,
                    extensions=manager,
                    installer=ExtensionInstaller(paths.user_extensions_dir, network_exposed, insecure_extensions,
                                                 builtin_dir=paths.builtin_extensions_dir),
                    on_close=on_close)


def _title(info: CheckpointInfo | None) -> str | None:
    return info.title if info is not None else None
