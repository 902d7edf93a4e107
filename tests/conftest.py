"""Shared fixtures: offline environment, tiny models built once per session, fresh services."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub or gradio: every test runs offline and silent.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@dataclass(frozen=True)
class TinyModels:
    """Tiny random checkpoints in one folder, as users lay them out in models/Stable-diffusion."""

    folder: Path
    sd15_file: Path  # A1111-style single file, seed 0
    sd15_dir: Path  # diffusers folder, seed 0 (same weights as sd15_file)
    sd15_other: Path  # single file, seed 1 (a second, different model)
    sdxl_dir: Path  # diffusers folder, seed 0
    sdxl_file: Path  # single file, seed 0
    sd15_inpaint: Path  # 9-channel inpainting single file, seed 0


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    from modules.devtools.tiny_model import TinyArch, write_tiny_model

    folder = tmp_path_factory.mktemp("checkpoints")
    models = TinyModels(
        folder=folder,
        sd15_file=write_tiny_model(TinyArch.SD15, folder / "tiny-sd15.safetensors", seed=0),
        sd15_dir=write_tiny_model(TinyArch.SD15, folder / "tiny-sd15-diffusers", seed=0),
        sd15_other=write_tiny_model(TinyArch.SD15, folder / "tiny-sd15-b.safetensors", seed=1),
        sdxl_dir=write_tiny_model(TinyArch.SDXL, folder / "tiny-sdxl", seed=0),
        sdxl_file=write_tiny_model(TinyArch.SDXL, folder / "tiny-sdxl.safetensors", seed=0),
        sd15_inpaint=write_tiny_model(TinyArch.SD15_INPAINT, folder / "tiny-sd15-inpainting.safetensors", seed=0),
    )
    return models


def make_services(data_dir: Path, ckpt_dir: Path, scale_out: object = None, **settings: object):  # -> Services
    """Services over a fresh data dir, on the CPU, exactly as app.py wires them (``scale_out``: a
    :class:`modules.services.scaleout.front.ScaleOut`, to run jobs on Ray workers)."""
    from modules.config import Settings
    from modules.engine.devices import DevicePolicy, choose_device
    from modules.paths import resolve_paths
    from modules.services.container import build_services

    paths = resolve_paths(data_dir=data_dir, ckpt_dir=ckpt_dir)
    return build_services(paths, Settings(**settings), choose_device(DevicePolicy(use_cpu=True)),  # type: ignore[arg-type]
                          scale_out=scale_out)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def services(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One Services per test module (models stay loaded between its tests); outputs in a temp dir."""
    svc = make_services(tmp_path_factory.mktemp("data"), tiny_models.folder)
    yield svc
    svc.close()


def pytest_configure(config: pytest.Config) -> None:
    # Third-party deprecation chatter (numpy 2 in diffusers' schedulers) would bury real warnings.
    for module in ("diffusers", "transformers", "torch", "numpy", "gradio", "websockets", "uvicorn"):
        config.addinivalue_line("filterwarnings", f"ignore::DeprecationWarning:{module}.*")
        config.addinivalue_line("filterwarnings", f"ignore::FutureWarning:{module}.*")
    config.addinivalue_line("markers", "browser: drives the UI in headless Chromium")
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped without it")
    config.addinivalue_line("markers", "slow: long-running (a multi-node Ray cluster); run with ATELIER_SLOW=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("ATELIER_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow; set ATELIER_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
