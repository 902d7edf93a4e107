"""Atelier's composition root: parse flags, load settings, build services, mount the UI, serve.

Run ``./webui.sh`` (which installs what is needed) or ``python app.py --help``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import webbrowser
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modules.services.container import Services

log = logging.getLogger("atelier")


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


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_network_environment()
    from modules.cmd_args import parse_flags

    flags = parse_flags(sys.argv[1:] if argv is None else argv, os.environ)
    logging.basicConfig(level=flags.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if flags.exit:
        log.info("--exit: installation checked, not starting the server")
        return 0

    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    from modules.config import load_settings
    from modules.engine.devices import DevicePolicy, choose_device
    from modules.errors import ConfigError
    from modules.paths import resolve_paths
    from modules.services.container import build_services
    from modules.ui.app_ui import build_ui
    from modules.ui.common import CSS

    paths = resolve_paths(flags.data_dir, flags.models_dir, flags.ckpt_dir)
    try:
        settings = load_settings(paths.config_file)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    device = choose_device(DevicePolicy(use_cpu="all" in flags.use_cpu, device_id=flags.device_id,
                                        no_half=flags.no_half, precision=flags.precision))
    services = build_services(paths, settings, device)
    _load_startup_model(services, flags.ckpt)

    app = FastAPI(title="Atelier", docs_url=None, redoc_url=None, openapi_url=None)
    app = gr.mount_gradio_app(app, build_ui(services), path="/", css=CSS, theme=gr.themes.Default())
    url = f"http://{'127.0.0.1' if not flags.listen else 'localhost'}:{flags.port}"
    if flags.listen:
        log.warning("--listen: serving on all interfaces at port %d; anyone on the network can use this UI",
                    flags.port)
    if flags.autolaunch:
        threading.Timer(2.0, webbrowser.open, args=(url,)).start()
    log.info("Running on local URL: %s", url)
    try:
        uvicorn.run(app, host=flags.host, port=flags.port, log_level="warning")
    finally:
        services.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
