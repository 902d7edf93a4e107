"""Atelier's composition root: parse flags, load settings, build services, mount the UI, serve.

Run ``./webui.sh`` (which installs what is needed) or ``python app.py --help``.
``python app.py worker --join HOST:PORT`` starts a GPU host's workers instead (docs/scale-out.md).
``python app.py users add NAME --role admin|user`` (and ``list``, ``remove``, ``passwd``) manages the
accounts (docs/accounts.md).
``python app.py test-extension FOLDER [pytest args...]`` runs an extension's tests inside a real
Atelier on a tiny model (:mod:`modules.devtools.extension_testing`).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules import __version__

if TYPE_CHECKING:
    from concurrent.futures import Future

    from modules.cmd_args import Flags
    from modules.engine.devices import DeviceInfo
    from modules.services.container import Services
    from modules.services.engine_slot import Engine
    from modules.services.scaleout.front import ScaleOut
    from modules.web.credentials import AuthConfig
    from modules.web.hosts import HostPolicy
    from modules.web.sessions import SessionTable

log = logging.getLogger("atelier")
MAX_UPLOAD = "50mb"  # larger uploads are refused by Gradio with a message, before they fill the disk


def _quiet_network_environment() -> None:
    # Nothing calls home at startup: no Gradio analytics, no hub telemetry. Set before those imports.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DISABLE_TELEMETRY", "1")


def _choose_device(flags: Flags) -> DeviceInfo:
    """The device the flags ask for; imports torch, so it runs on the engine's thread."""
    from modules.engine.devices import choose_device
    from modules.services.device_flags import device_policy

    return choose_device(device_policy(flags))


def _load_startup_model(engine: Engine, wanted: str | None) -> None:
    """Load the startup model as the worker's first job, before the engine is handed to anyone: a
    request that needs the engine (a generation, the API's options) waits for it, so it finds the
    model loaded, or the reason it is not in the log and the UI."""
    from modules.errors import ModelNotFoundError

    registry = engine.models.registry
    available = registry.all()
    if not available:
        log.warning("No checkpoint found in %s; the UI will say how to add one",
                    ", ".join(str(p) for p in registry.folders))
        return
    target = wanted or available[0].name
    try:
        engine.generation.switch_model(target).future.result()
    except ModelNotFoundError as exc:
        log.error("--ckpt: %s", exc)
    except Exception as exc:  # noqa: BLE001  # a broken file, or a bug the worker logged with its traceback
        log.error("Startup model not loaded: %s", exc)


def _engine_built(engine: Engine, wanted: str | None) -> None:
    """The startup's imports are done: hand their objects to the cyclic GC's permanent generation
    (it never walks them again) and turn it back on; then load the startup model (collectable)."""
    gc.freeze()
    gc.enable()
    _load_startup_model(engine, wanted)


def _serve(server: Any, engine: Future[Engine]) -> int:
    """Run the server until it stops; 2 when the engine could not be built (bad device flags, as a bad
    setting stops startup), 1 for any other failure of the build."""
    from modules.errors import ConfigError

    def stop_on_failure(built: Future[Engine]) -> None:
        exc = built.exception()
        if exc is None:
            return
        if isinstance(exc, ConfigError):
            log.error("%s", exc)
        else:
            log.error("Atelier could not start its engine", exc_info=exc)
        server.should_exit = True

    engine.add_done_callback(stop_on_failure)
    server.run()
    if engine.done() and engine.exception() is not None:
        return 2 if isinstance(engine.exception(), ConfigError) else 1
    return 0


def _scale_out(flags: Flags, configured: str) -> ScaleOut | None:
    """Ray workers when ``--ray-address`` (or ``ray_address`` in config.yaml) names a cluster."""
    address = flags.ray_address or configured
    if not address:
        return None
    from modules.services.scaleout.front import ScaleOut

    return ScaleOut(address, allow_public=flags.ray_allow_public)


def _build_app(flags: Flags, services: Services, auth: AuthConfig) -> Any:
    """The whole server behind one request guard: API routes first (they must precede Gradio's
    catch-all mount), then the UI; the guard in front of both. The ``--gradio-auth`` users are
    seeded into the accounts first (as admins)."""
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    from modules.api import extension_routes, routes
    from modules.api.route_effects import ApiRouteEffects
    from modules.ui.sign_in import file_rule_for, seed_admins
    from modules.web.guard import Faces, GuardConfig, RequestGuard

    seed_admins(services.accounts, auth)
    docs = flags.serves_api
    app = FastAPI(title="Atelier API", version=__version__, docs_url="/docs" if docs else None,
                  redoc_url=None, openapi_url="/openapi.json" if docs else None)
    extension_api = extension_routes.MountedRoutes()
    if flags.serves_api:
        routes.install(app, services, flags)
        # Extensions' routes are API routes: served with --api, under the same guard rules as /sdapi/v1.
        extension_api = extension_routes.install(app, services.extensions,
                                                 reserved=[flags.subpath.strip("/").split("/")[0]])
    effects: list[Any] = [ApiRouteEffects(app.router.routes)]
    ui: MountedUi | None = None
    if not flags.nowebui:
        app, ui = _mount_ui(app, flags, services, auth)
        effects.append(ui.effects)
    if flags.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(flags.cors_allow_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)
    api_paths = (*routes.API_PREFIXES, "/docs", "/openapi.json")
    faces = Faces(
        is_ui=lambda path: ui is not None and not path.startswith(api_paths) and not extension_api.covers(path),
        is_open=ui.is_open if ui is not None else lambda path: False,
        session_user=ui.session_user if ui is not None else lambda scope: None,
        login_route=lambda path: (flags.subpath + "/login" if ui is not None
                                  and _route_key(path, flags.subpath) == "/login" else None),
        effects=tuple(effects), may_read=file_rule_for(flags.subpath, services))
    config = GuardConfig(auth=auth, accounts=services.accounts, listen=flags.listen,
                         hosts=_host_policy(flags),
                         cors_origins=frozenset(o.rstrip("/").lower() for o in flags.cors_allow_origins))
    return RequestGuard(app, config, faces)


@dataclass(frozen=True)
class MountedUi:
    """The Gradio UI as the request guard sees it."""

    effects: Any  # GradioEventEffects: which events change the server
    is_open: Callable[[str], bool]  # paths open before a login
    session_user: Callable[[dict[str, Any]], str | None]  # the user of a request's live Gradio login
    sessions: SessionTable  # Gradio's login sessions, which expire and end when an account changes


def _mount_ui(app: Any, flags: Flags, services: Services, auth: AuthConfig) -> tuple[Any, MountedUi]:
    """``app`` with the Gradio UI mounted on it (Gradio, a few seconds of imports, only comes in here)."""
    import gradio as gr

    from modules.ui import private_events
    from modules.ui.app_ui import build_ui, open_paths
    from modules.ui.common import CSS, HEAD
    from modules.ui.event_effects import GradioEventEffects
    from modules.ui.session import gradio_session_user, trust_the_guard
    from modules.ui.sign_in import sign_in_for_gradio

    blocks = build_ui(services)
    private_events.seal(blocks)  # extensions' UI events (value=lambda, every=) stay off the public API
    app = gr.mount_gradio_app(app, blocks, path=flags.subpath or "/", css=CSS, head=HEAD,
                              theme=gr.themes.Default(), auth=None,  # set below, and as accounts come and go
                              show_error=True, max_file_size=MAX_UPLOAD, enable_monitoring=False,
                              footer_links=[], run_history=False)  # the Settings tab replaces Gradio's panel
    # Gradio checks that a file an event names was uploaded (or is one the server hands out)
    # only once its Blocks count as launched, which mounting never marks: without this, any
    # path on the machine could be sent as an image input and read back from the cache.
    blocks.has_launched = True
    gradio_app = next(r.app for r in app.routes if hasattr(getattr(r, "app", None), "tokens"))
    sessions = sign_in_for_gradio(gradio_app, services.accounts, auth, services.settings.session_hours)
    trust_the_guard(gradio_app)
    return app, MountedUi(effects=GradioEventEffects(blocks, flags.subpath), is_open=open_paths(flags.subpath),
                          session_user=gradio_session_user(gradio_app), sessions=sessions)


def _route_key(path: str, subpath: str) -> str:
    """A path as routing would see it under any spelling: one slash between parts, none at the end,
    lower case, without the UI's subpath."""
    key = "/" + "/".join(part for part in path.lower().split("/") if part)
    prefix = subpath.lower()
    if prefix and (key == prefix or key.startswith(prefix + "/")):
        return key[len(prefix):] or "/"
    return key


def _host_policy(flags: Flags) -> HostPolicy:
    from modules.web.hosts import HostPolicy, machine_names, parse_allowed_hosts

    patterns = parse_allowed_hosts(",".join(flags.allowed_hosts))
    return HostPolicy(listen=flags.listen, machine_names=machine_names() if flags.listen else frozenset(),
                      patterns=patterns)


def _setup_process(flags: Flags, args: Sequence[str]) -> None:
    """Logging that no request can forge a line of, and passwords out of the process list."""
    from modules.cmd_args import SECRET_FLAGS, redacted_argv
    from modules.web.log_safety import EscapingFilter

    logging.basicConfig(level=flags.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(EscapingFilter())
    if any(getattr(flags, name) for name in SECRET_FLAGS):
        import setproctitle  # rewrites argv in place: /proc/<pid>/cmdline and ps no longer show the password

        setproctitle.setproctitle(" ".join([os.path.basename(sys.executable), "app.py", *redacted_argv(args)]))
    if flags.gradio_auth or flags.api_auth:
        log.warning("A password given on the command line can be seen by other users of this machine while "
                    "Atelier starts; prefer --gradio-auth-path FILE (a file only you can read).")


def _upload_folder(cache_dir: Path) -> Path | None:
    """This run's own folder for Gradio's uploads, unless GRADIO_TEMP_DIR names one: only files
    received by this server in this run can then be named by an event."""
    import tempfile

    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    cache_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="uploads-", dir=cache_dir))  # mode 0700
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def _warn_about_exposure(flags: Flags, auth: AuthConfig, accounts_exist: bool = False) -> None:
    if flags.listen and not auth.enabled and not accounts_exist:
        log.warning("--listen without --gradio-auth/--api-auth: anyone on the network can use Atelier. "
                    "Changes to settings, models, styles, files and extensions from the network are refused; "
                    "add a password to allow them.")
    if auth.api is not None and auth.ui is None and not flags.nowebui and not accounts_exist:
        log.warning("--api-auth protects the API only: the web UI (and its /config) is open to anyone who can "
                    "reach this server. Add --gradio-auth-path to protect the UI too.")
    if "*" in flags.allowed_hosts:
        log.warning("--allowed-hosts '*': any Host name is answered; DNS rebinding is not blocked.")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_network_environment()
    from modules.cmd_args import parse_flags

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        from modules.services.scaleout.worker_cli import worker_main

        return worker_main(args[1:], os.environ)
    if args[:1] == ["users"]:
        from modules.services.account_cli import accounts_main

        return accounts_main(args[1:], os.environ)
    if args[:1] == ["test-extension"]:
        from modules.devtools.extension_testing import run_extension_tests

        return run_extension_tests(args[1:])
    flags = parse_flags(args, os.environ)
    _setup_process(flags, args)
    if flags.exit:
        log.info("--exit: installation checked, not starting the server")
        return 0
    if flags.share:
        log.error("--share is refused: Atelier does not open public tunnels. Use --listen with --gradio-auth "
                  "on a network you trust, or a reverse proxy with TLS.")
        return 2

    # The imports from here on make a million objects, and the cyclic GC would walk all of them a
    # dozen times (~0.4 s each, a fifth of the startup): it stays off until the engine is built.
    gc.disable()
    import shutil

    from modules.config import load_settings
    from modules.errors import ConfigError
    from modules.paths import resolve_paths
    from modules.services.container import start_services
    from modules.web.credentials import load_auth

    paths = resolve_paths(flags.data_dir, flags.models_dir, flags.ckpt_dir, lora_dir=flags.lora_dir,
                          embeddings_dir=flags.embeddings_dir, vae_dir=flags.vae_dir,
                          model_folders=dict(flags.model_folders))
    try:  # bad settings or logins, or a refused or unreachable Ray address (with Ray: bad device flags too)
        settings = load_settings(paths.config_file)
        auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
        # The engine (torch, the device, the models) is built behind the server: see _serve.
        services = start_services(paths, settings, lambda: _choose_device(flags),
                                  extensions=not flags.disable_all_extensions,
                                  network_exposed=flags.listen or flags.share,
                                  insecure_extensions=flags.enable_insecure_extension_access,
                                  scale_out=_scale_out(flags, settings.ray_address),
                                  on_engine=lambda engine: _engine_built(engine, flags.ckpt))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    uploads = _upload_folder(paths.cache_dir)
    app = _build_app(flags, services, auth)
    services.extensions.app_started()

    scheme = "https" if flags.tls_certfile else "http"
    url = f"{scheme}://{'localhost' if flags.listen else '127.0.0.1'}:{flags.port}{flags.subpath}"
    _warn_about_exposure(flags, auth, services.accounts.sign_in_required())
    if flags.autolaunch:
        threading.Timer(2.0, webbrowser.open, args=(url,)).start()
    log.info("Running on local URL: %s%s", url, "  (API: /sdapi/v1, docs: /docs)" if flags.serves_api else "")
    try:
        # The engine starts once the server listens: its imports hold the GIL for seconds, and the
        # server's own start and first pages come first.
        return _serve(_server(app, flags, on_listening=services.engine.start), services.engine.future)
    finally:
        services.close()
        if uploads:
            shutil.rmtree(uploads, ignore_errors=True)


def _server(app: Any, flags: Flags, on_listening: Callable[[], object]) -> Any:
    """The uvicorn server for ``app`` as the flags say; ``on_listening`` is called once its socket is open."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[Any] | None = None) -> None:
            await super().startup(sockets)
            if self.started:  # False when the port could not be bound (the server then exits)
                on_listening()

    # Forwarded headers only from the proxies named: otherwise any local process could choose
    # the address that the login limiter and the network rule see.
    config = uvicorn.Config(app, host=flags.host, port=flags.port, log_level="warning",
                            log_config=None,  # uvicorn's messages go through our handlers and their escaping
                            proxy_headers=bool(flags.forwarded_allow_ips),
                            forwarded_allow_ips=list(flags.forwarded_allow_ips) or None,
                            ssl_keyfile=str(flags.tls_keyfile) if flags.tls_keyfile else None,
                            ssl_certfile=str(flags.tls_certfile) if flags.tls_certfile else None)
    return Server(config)


if __name__ == "__main__":
    sys.exit(main())
