"""The :class:`Services` object: built once by the composition root and handed to the faces.

It comes in two halves. The front (settings, files, styles, add-ons, extensions, the job queue) is
built at once and imports no torch. The engine (:mod:`modules.services.engine_slot`: the device,
the models, the generation front, A1111's options, downloads) needs torch, diffusers and
transformers, seconds of imports: :func:`start_services` leaves it to a background thread, so the
server answers while it is built, and whoever asks for one of its parts first waits for it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from modules.config import Settings
from modules.paths import AppPaths
from modules.services.accounts import AccountStore
from modules.services.addon_library import AddonLibrary
from modules.services.addons import AddonKind, AddonRegistry
from modules.services.checkpoint_registry import CheckpointRegistry
from modules.services.engine_slot import Engine, EngineSlot
from modules.services.extension_files import ExtensionFiles
from modules.services.extension_host import ExtensionHost
from modules.services.extension_install import ExtensionInstaller
from modules.services.extensions import ExtensionManager
from modules.services.extras import ExtrasService
from modules.services.extras_run import ExtrasWorker
from modules.services.face_restorers import FaceRestorers
from modules.services.gallery import Gallery
from modules.services.hashing import HashCache
from modules.services.images import ImageSaver
from modules.services.job_store import JobStore
from modules.services.jobs import Executor, JobQueue
from modules.services.model_downloads import ModelFetcher, upscaler_aliases
from modules.services.outputs import OutputStore
from modules.services.queue_contract import JobQueueContract, QueueMode
from modules.services.queue_view import QueueView
from modules.services.remote.access_file import FILE_NAME as ACCESS_FILE_NAME
from modules.services.remote.access_file import AccessFile
from modules.services.remote.engines import RemoteEngines
from modules.services.settings_store import SettingsStore
from modules.services.studio_db import StudioDb, db_path, open_studio_db
from modules.services.styles import StyleStore
from modules.services.upscaler_library import TileOptions, UpscalerLibrary

if TYPE_CHECKING:
    from modules.engine.devices import DeviceInfo
    from modules.engine.face_detection import FaceDetector
    from modules.services.downloads import ModelDownloader
    from modules.services.generation import GenerationService
    from modules.services.models import ModelManager
    from modules.services.scaleout.front import ScaleOut
    from modules.services.server_options import ServerOptions


@dataclass(frozen=True)
class Services:
    paths: AppPaths
    settings: Settings  # as loaded at startup (limits, queue size)
    options: SettingsStore  # the settings in force, changeable at run time
    registry: CheckpointRegistry
    outputs: OutputStore  # the front's store: saving hooks, files, grids
    queue: JobQueueContract  # the in-process worker, or Ray workers (scaleout)
    styles: StyleStore
    gallery: Gallery
    addons: AddonLibrary  # LoRAs, embeddings, VAEs
    upscalers: UpscalerLibrary  # upscaler models (models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT, ScuNET)
    face_restorers: FaceRestorers  # CodeFormer and GFPGAN (models/Codeformer, models/GFPGAN)
    extras: ExtrasService  # the Extras tab's and API's upscales and face restoration, queued
    fetcher: ModelFetcher  # the standard upscaler and face restorer models, downloaded on request
    extensions: ExtensionManager
    installer: ExtensionInstaller  # git clone/pull and pip for users' extensions
    engine: EngineSlot  # the parts below; reading one waits until the engine is built
    db: StudioDb  # accounts and jobs (data dir / atelier.db)
    accounts: AccountStore  # users, roles, limits, API tokens
    jobs: JobStore  # every accepted job, its files, the history (the queue's journal)
    queue_view: QueueView  # the queue and history as each viewer may see them (panel and routes)
    remote: RemoteEngines  # hosted models (openai/..., google/...): providers, keys, models, prices
    on_close: Callable[[], None] | None = None  # scale-out: stop the Ray head this process started

    @property
    def device(self) -> DeviceInfo:
        return self.engine.get().device

    @property
    def models(self) -> ModelManager:
        return self.engine.get().models

    @property
    def generation(self) -> GenerationService:
        """The front: every face submits jobs through it."""
        return self.engine.get().generation

    @property
    def server_options(self) -> ServerOptions:
        """The settings in force as A1111's option names (GET/POST /options)."""
        return self.engine.get().server_options

    @property
    def downloads(self) -> ModelDownloader:
        return self.engine.get().downloads

    def close(self, timeout: float | None = 10.0) -> None:
        self.queue.stop(timeout)
        if self.on_close is not None:
            self.on_close()
        self.db.close()


def build_services(paths: AppPaths, settings: Settings, device: DeviceInfo, extensions: bool = True,
                   network_exposed: bool = False, insecure_extensions: bool = False,
                   scale_out: ScaleOut | None = None, face_detector: FaceDetector | None = None) -> Services:
    """Wire the services together, load the extensions (``extensions=False``: none, as
    ``--disable-all-extensions``) and start the worker (or, with ``scale_out``, the dispatch to Ray
    workers), the engine included. No model is loaded yet. Installing extensions is refused when
    ``network_exposed`` unless ``insecure_extensions``. ``face_detector``: where faces are found
    (None: OpenCV's Haar cascade)."""
    services = start_services(paths, settings, lambda: device, extensions, network_exposed, insecure_extensions,
                              scale_out, face_detector=face_detector)
    services.engine.build_now()
    return services


def start_services(paths: AppPaths, settings: Settings, choose_device: Callable[[], DeviceInfo],
                   extensions: bool = True, network_exposed: bool = False, insecure_extensions: bool = False,
                   scale_out: ScaleOut | None = None, on_engine: Callable[[Engine], None] | None = None,
                   face_detector: FaceDetector | None = None) -> Services:
    """As :func:`build_services`, but the engine is built when ``services.engine.start()`` (or its first
    reader) asks: ``choose_device`` first, ``on_engine`` last, before anyone else sees it. With
    ``scale_out`` the engine is built now: the Ray queue dispatches over the front's models."""
    hashes = HashCache(paths.hash_cache)
    registry = CheckpointRegistry(paths.checkpoint_dirs, hashes)
    addons = AddonLibrary(AddonRegistry(AddonKind.LORA, paths.lora_dirs, hashes),
                          AddonRegistry(AddonKind.EMBEDDING, paths.embedding_dirs, hashes),
                          AddonRegistry(AddonKind.VAE, paths.vae_dirs, hashes))
    manager = ExtensionManager(paths.builtin_extensions_dir, paths.user_extensions_dir, paths.extension_state_file,
                               enabled=extensions)
    options = SettingsStore(paths.config_file, settings)
    db = open_studio_db(db_path(paths.data_dir), server_start=True)  # a damaged file stops the start (ConfigError), never reset
    accounts, job_store = AccountStore(db), JobStore(db)

    def admins(name: str) -> bool:  # the accounts' admins see and steer every job (--api-auth logins: their own)
        found = accounts.identity(name)
        return found is not None and found.is_admin

    remote = RemoteEngines(options.get, AccessFile(paths.data_dir / ACCESS_FILE_NAME), os.environ)
    outputs = OutputStore(ImageSaver(paths.outputs_dir, settings=options.get, data_dir=paths.data_dir), manager,
                          ledger=job_store)
    upscalers = UpscalerLibrary(paths.upscaler_dirs, lambda: _tiles(options.get()), upscaler_aliases(),
                                lambda: options.get().upscaler_extra_architectures)
    face_restorers = FaceRestorers(paths.gfpgan_dirs, paths.codeformer_dirs, face_detector)
    # 1. The engine, over the front built below; the in-process worker's executor as soon as it is made.
    made: tuple[DeviceInfo, ModelManager] | None = None  # with Ray: the device and models its queue needs
    executor: Future[Executor] = Future()

    def build() -> Engine:
        device, models = made if made is not None else _models(paths, settings, registry, choose_device())
        built = _build_engine(services, device, models, executor, on_engine)
        # Jobs accepted before a restart go back in line once the startup model is loaded (on_engine),
        # so one that names no checkpoint runs on the model the server starts with, as it would have.
        job_queue.recover(recovered)
        return built

    engine = EngineSlot(build)
    engine.future.add_done_callback(lambda built: _fail_executor(executor, built))
    # 2. The queue and its workers: the renderer runs here (its jobs wait for the engine), or on Ray workers.
    job_queue: JobQueueContract
    on_close = None
    if scale_out is None:
        job_queue = JobQueue(lambda spec, context: executor.result()(spec, context), settings.queue_limit,
                             shared=settings.shared_jobs, describe=engine.describe)
    else:
        from modules.services.scaleout.front import build_ray_queue

        made = _models(paths, settings, registry, choose_device())
        front_device = made[0].device  # Extras jobs run on the front, on its device
        job_queue, on_close = build_ray_queue(made[1], outputs, settings.queue_limit, settings.shared_jobs, scale_out,
                                              ExtrasWorker(upscalers, face_restorers, lambda: front_device), remote)
    extras = ExtrasService(job_queue, upscalers, face_restorers, outputs.saver, lambda: options.get().max_image_size,
                           (paths.inputs_dir, paths.outputs_dir))
    services = Services(paths=paths, settings=settings, options=options,
                        registry=registry, outputs=outputs, queue=job_queue, styles=StyleStore(paths.styles_file),
                        gallery=Gallery(paths.outputs_dir, paths.cache_dir), addons=addons,
                        upscalers=upscalers, extras=extras, fetcher=ModelFetcher(paths.models_dir), extensions=manager,
                        installer=ExtensionInstaller(paths.user_extensions_dir, network_exposed, insecure_extensions,
                                                     builtin_dir=paths.builtin_extensions_dir),
                        face_restorers=face_restorers, engine=engine, db=db, accounts=accounts, jobs=job_store,
                        queue_view=QueueView(job_queue, job_store, lambda: services.generation, paths.outputs_dir,
                                             admins=admins),
                        remote=remote, on_close=on_close)
    # 3. The extensions, whose hosts submit through the generation front once it is there.
    files = ExtensionFiles(paths, hashes)
    manager.load_all(lambda name: ExtensionHost(
        name, lambda: services.generation, manager, registry, paths.extension_settings_dir, outputs.saver,
        services.upscalers.names, services.extras.upscale, files, remote.titles))
    # 4. The job store: jobs accepted before a restart are read now and put back in line by build().
    job_queue.set_journal(job_store, admins=admins)
    recovered = job_store.unfinished()
    job_queue.start()
    # 5. The providers' own model lists (an OpenAI-compatible server's models), read in the background.
    if any(status.configured for status in remote.status()):
        threading.Thread(target=remote.refresh, name="remote-model-lists", daemon=True).start()
    if scale_out is not None:
        engine.build_now()
    return services


def _tiles(settings: Settings) -> TileOptions:
    return TileOptions(settings.esrgan_tile, settings.esrgan_tile_overlap)


def _fail_executor(executor: Future[Executor], built: Future[Engine]) -> None:
    """An engine that could not be built fails the jobs waiting for its executor with its error."""
    error = built.exception()
    if error is not None and not executor.done():
        executor.set_exception(error)


def _models(paths: AppPaths, settings: Settings, registry: CheckpointRegistry,
            device: DeviceInfo) -> tuple[DeviceInfo, ModelManager]:
    # Imported here, on the engine's thread: the models module imports torch, diffusers and transformers.
    from modules.services.models import ModelManager, component_dirs

    if settings.text_encoder_cpu and not device.text_encoders_on_cpu:  # config.yaml's text_encoder_cpu: true
        device = replace(device, text_encoders_on_cpu=True)
    return device, ModelManager(registry, device, paths.config_cache, settings.checkpoint_cache, settings.fast_path,
                                components=component_dirs(paths))


def _build_engine(services: Services, device: DeviceInfo, models: ModelManager, executor: Future[Executor],
                  on_engine: Callable[[Engine], None] | None) -> Engine:
    """The engine over the front's services and the models. The in-process worker can run jobs from
    here on, so ``on_engine`` (before any reader sees the engine) may queue one and wait for it."""
    from modules.services.downloads import ModelDownloader
    from modules.services.generation import GenerationService
    from modules.services.server_options import ServerOptions

    generation = GenerationService(models, services.styles, services.settings.limits, services.addons,
                                   services.extensions, services.options, services.queue, services.upscalers,
                                   services.face_restorers, account_limits=services.accounts.limits,
                                   recent_jobs=services.jobs.accepted_since, remote=services.remote,
                                   remote_images=services.jobs.remote_images_since)
    models.on_loaded = lambda info, model: services.extensions.model_loaded(info.title, model.arch.label)
    if services.queue.mode is QueueMode.LOCAL:
        executor.set_result(_in_process_executor(services, models))
    engine = Engine(device=device, models=models, generation=generation,
                    server_options=ServerOptions(services.options, models, services.addons, generation.switch_model,
                                                 services.remote.selected_title),
                    downloads=ModelDownloader(services.paths.default_checkpoint_dir))
    if on_engine is not None:
        on_engine(engine)
    return engine


def _in_process_executor(services: Services, models: ModelManager) -> Executor:
    from modules.services.in_process import InProcessExecutor
    from modules.services.preview_decoders import PreviewDecoders
    from modules.services.remote.remote_render import RemoteRenderer
    from modules.services.renderer import Renderer

    renderer = Renderer(models, services.addons, PreviewDecoders(services.paths.taesd_dir), services.upscalers,
                        services.face_restorers)
    extras = ExtrasWorker(services.upscalers, services.face_restorers, lambda: models.device.device)
    return InProcessExecutor(renderer, services.outputs, services.extensions, extras, RemoteRenderer(services.remote))
