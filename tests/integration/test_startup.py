"""Startup: the front of the services (and the UI and API over it) comes up without torch; the engine
is built behind it, and whoever needs the engine before it is there waits for it."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

import app
from modules.config import Settings
from modules.engine.devices import DeviceInfo, DevicePolicy, choose_device
from modules.errors import ConfigError
from modules.params import GenerationRequest
from modules.paths import PROJECT_ROOT, resolve_paths
from modules.services.container import Services, start_services
from modules.services.engine_slot import STARTING, Engine

SMALL = GenerationRequest(prompt="a red cube", width=64, height=64, steps=2, seed=7, save_images=False)
STARTUP = "tiny-sd15.safetensors"


def gated_device(gate: threading.Event) -> Callable[[], DeviceInfo]:
    """A device choice that waits for ``gate``: the engine's build stands still until the test opens it."""
    device = choose_device(DevicePolicy(use_cpu=True))

    def choose() -> DeviceInfo:
        assert gate.wait(120), "the test never opened the gate"
        return device

    return choose


def started(tmp_path: Path, models: Path, choose: Callable[[], DeviceInfo]) -> Services:
    services = start_services(resolve_paths(data_dir=tmp_path, ckpt_dir=models), Settings(), choose,
                              on_engine=lambda engine: app._load_startup_model(engine, STARTUP))
    services.engine.start()
    return services


def test_a_job_sent_while_the_engine_is_built_waits_and_runs_on_the_startup_model(tiny_models, tmp_path: Path) -> None:
    gate = threading.Event()
    services = started(tmp_path, tiny_models.folder, gated_device(gate))
    try:
        results: list[object] = []
        job = threading.Thread(target=lambda: results.append(services.generation.generate(SMALL, 300)))
        job.start()
        job.join(1.0)
        # The front answers meanwhile: the queue, the workers panel, the checkpoint list.
        assert job.is_alive() and services.engine.peek() is None
        assert services.queue.workers()[0].device == STARTING and services.queue.pending_count() == 0
        assert STARTUP in [info.name for info in services.registry.all()]
        gate.set()
        job.join(300)
        assert not job.is_alive()
        (result,) = results
        assert len(result.images) == 1 and result.model_title.startswith(STARTUP)  # type: ignore[attr-defined]
        # The startup load was the worker's first job: the engine was handed out with it loaded.
        assert services.models.current().name == STARTUP  # type: ignore[union-attr]
        assert services.queue.workers()[0].device != STARTING
    finally:
        gate.set()
        services.close()


def test_a_failed_engine_build_reaches_every_reader_and_closing_does_not_hang(tiny_models, tmp_path: Path) -> None:
    def refuse() -> DeviceInfo:
        raise ConfigError("--lowvram moves models between a CUDA GPU and RAM")

    services = started(tmp_path, tiny_models.folder, refuse)
    with pytest.raises(ConfigError, match="--lowvram"):
        services.engine.future.result(120)
    with pytest.raises(ConfigError, match="--lowvram"):
        services.generation.generate(SMALL, 60)
    assert services.engine.peek() is None and services.queue.workers()[0].device == STARTING
    services.close(timeout=10)


def test_the_ui_and_the_api_are_built_without_importing_torch(tiny_models, tmp_path: Path) -> None:
    """What the server needs before it answers imports no torch, diffusers or transformers (seconds of
    imports that would delay the page): a fresh process builds the services' front, the API and the UI."""
    script = textwrap.dedent(f"""
        import sys
        import app
        from modules.cmd_args import parse_flags
        from modules.config import Settings
        from modules.paths import resolve_paths
        from modules.services.container import start_services
        from modules.web.credentials import load_auth

        def no_engine():
            raise AssertionError("the engine was built before the server answered")

        flags = parse_flags(["--api", "--data-dir", {str(tmp_path)!r}, "--ckpt-dir", {str(tiny_models.folder)!r}], {{}})
        services = start_services(resolve_paths(flags.data_dir, ckpt_dir=flags.ckpt_dir), Settings(), no_engine)
        app._build_app(flags, services, load_auth(None, None, None))
        services.extensions.app_started()
        heavy = sorted(name for name in ("torch", "diffusers", "transformers", "peft") if name in sys.modules)
        print("heavy:", heavy, "engine started:", services.engine.future.done())
        services.close()
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, "-c", script], check=False, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "heavy: [] engine started: False" in done.stdout, done.stdout + done.stderr[-3000:]


def test_once_the_engine_is_built_the_startup_objects_are_frozen_and_the_gc_is_back_on(tmp_path: Path) -> None:
    """app.py keeps the cyclic GC off while the imports run; the engine's arrival freezes what they made
    (never walked again) and turns the GC back on before the startup model loads."""
    empty = tmp_path / "no-models"
    empty.mkdir()
    services = start_services(resolve_paths(data_dir=tmp_path, ckpt_dir=empty), Settings(),
                              lambda: choose_device(DevicePolicy(use_cpu=True)))
    engine: Engine = services.engine.get(120)
    gc.disable()
    try:
        app._engine_built(engine, None)  # no checkpoint: nothing to load, only the GC's state changes
        assert gc.isenabled() and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()
        services.close()
