"""Atelier's composition root: parse flags, load settings, build services, mount the UI, serve.

Run ``./webui.sh`` (which installs what is needed) or ``python app.py --help``.
``python app.py worker --join HOST:PORT`` starts a GPU host's workers instead (docs/scale-out.md).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import webbrowser
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from modules import __version__

if TYPE_CHECKING:
    from modules.api.auth import AuthConfig
    from modules.cmd_args import Flags
    from modules.services.container import Services
    from modules.services.scaleout.front import ScaleOut

log = logging.getLogger("atelier")
MAX_UPLOAD = "50mb"  # larger uploads are refused by Gradio with a message, before they fill the disk


def _quiet_network_environment() -> None:
    # Nothing calls home at startup: no Gradio analytics, no hub telemetry. Set before those imports.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DISABLE_TELEMETRY", "1")


def _load_startup_model(services: Services, wanted: str | None) -> None:
    """Queue the startup model load, so the UI serves at once and the first job waits for it."""
    from modules.errors import ModelNotFoundError

    available = services.registry.all()
    if not available:
        log.warning("No checkpoint found in %s; the UI will say how to add one",
                    ", ".join(str(p) for p in services.paths.checkpoint_dirs))
        return
    target = wanted or available[0].name
    try:
        job = services.generation.switch_model(target)
    except ModelNotFoundError as exc:
        log.error("--ckpt: %s", exc)
        return
    job.future.add_done_callback(
        lambda f: f.exception() and log.error("Startup model not loaded: %s", f.exception()))


def _scale_out(flags: Flags, configured: str) -> ScaleOut | None:
    """Ray workers when ``--ray-address`` (or ``ray_address`` in config.yaml) names a cluster."""
    from modules.services.scaleout.front import ScaleOut

    address = flags.ray_address or configured
    return ScaleOut(address, allow_public=flags.ray_allow_public) if address else None


def _build_app(flags: Flags, services: Services, auth: AuthConfig) -> Any:
    """FastAPI app: API routes first (they must precede Gradio's catch-all mount), then the UI."""
    import gradio as gr
    from fastapi import FastAPI
    from fastapi.middleware.cors import CORSMiddleware

    from modules.api import routes
    from modules.api.auth import AuthMiddleware
    from modules.ui.app_ui import build_ui, open_paths
    from modules.ui.common import CSS, HEAD
    from modules.ui.session import gradio_session_check

    docs = flags.serves_api
    app = FastAPI(title="Atelier API", version=__version__, docs_url="/docs" if docs else None,
                  redoc_url=None, openapi_url="/openapi.json" if docs else None)
    if flags.serves_api:
        routes.install(app, services, flags, auth.enabled)
    if not flags.nowebui:
        app = gr.mount_gradio_app(app, build_ui(services), path=flags.subpath or "/", css=CSS, head=HEAD,
                                  theme=gr.themes.Default(), auth=auth.ui.as_gradio() if auth.ui else None,
                                  show_error=True, max_file_size=MAX_UPLOAD, enable_monitoring=False)
    if flags.cors_allow_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(flags.cors_allow_origins), allow_methods=["*"],
                           allow_headers=["*"], allow_credentials=True)
    api_paths = (routes.PREFIX, "/docs", "/openapi.json")
    gradio_app = next((r.app for r in app.routes if hasattr(getattr(r, "app", None), "tokens")), None)
    return AuthMiddleware(app, auth, is_gradio=lambda path: gradio_app is not None and not path.startswith(api_paths),
                          allow=open_paths(flags.subpath) if gradio_app is not None else lambda path: False,
                          has_session=gradio_session_check(gradio_app) if gradio_app is not None else lambda s: False)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_network_environment()
    from modules.cmd_args import parse_flags

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["worker"]:
        from modules.services.scaleout.worker_cli import worker_main

        return worker_main(args[1:], os.environ)
    flags = parse_flags(args, os.environ)
    logging.basicConfig(level=flags.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if flags.exit:
        log.info("--exit: installation checked, not starting the server")
        return 0
    if flags.share:
        log.error("--share is refused: Atelier does not open public tunnels. Use --listen with --gradio-auth "
                  "on a network you trust, or a reverse proxy with TLS.")
        return 2

    import uvicorn

    from modules.api.auth import load_auth
    from modules.config import load_settings
    from modules.engine.devices import choose_device, device_policy
    from modules.errors import ConfigError
    from modules.paths import resolve_paths
    from modules.services.container import build_services

    paths = resolve_paths(flags.data_dir, flags.models_dir, flags.ckpt_dir, lora_dir=flags.lora_dir,
                          embeddings_dir=flags.embeddings_dir, vae_dir=flags.vae_dir)
    try:  # bad settings, logins, device flags, or a refused or unreachable Ray address
        settings = load_settings(paths.config_file)
        auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
        device = choose_device(device_policy(flags))
        services = build_services(paths, settings, device, extensions=not flags.disable_all_extensions,
                                  network_exposed=flags.listen or flags.share,
                                  insecure_extensions=flags.enable_insecure_extension_access,
                                  scale_out=_scale_out(flags, settings.ray_address))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    _load_startup_model(services, flags.ckpt)
    app = _build_app(flags, services, auth)
    services.extensions.app_started()

    scheme = "https" if flags.tls_certfile else "http"
    url = f"{scheme}://{'localhost' if flags.listen else '127.0.0.1'}:{flags.port}{flags.subpath}"
    if flags.listen and not auth.enabled:
        log.warning("--listen without --gradio-auth/--api-auth: anyone on the network can use Atelier. "
                    "Settings changes from the network are refused; add a password to allow them.")
    if flags.autolaunch:
        threading.Timer(2.0, webbrowser.open, args=(url,)).start()
    log.info("Running on local URL: %s%s", url, "  (API: /sdapi/v1, docs: /docs)" if flags.serves_api else "")
    try:
        uvicorn.run(app, host=flags.host, port=flags.port, log_level="warning",
                    ssl_keyfile=str(flags.tls_keyfile) if flags.tls_keyfile else None,
                    ssl_certfile=str(flags.tls_certfile) if flags.tls_certfile else None)
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
