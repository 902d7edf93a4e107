"""A pytest plugin for extension authors: run an extension folder inside a real Atelier on a tiny model.

The fixtures start the same services the UI and the API use (on the CPU, with a fresh data dir per
test) and put the extension where users put theirs, ``<data dir>/extensions/``, so it is
discovered, checked and loaded exactly as it would be in a user's install. The model is a random
SD1.5 checkpoint of a few MB: images are noise, but every hook runs, and a job takes about a second.

From Atelier's install (pytest comes with it), on an extension's folder::

    python app.py test-extension path/to/my-extension [pytest arguments...]

(``./webui.sh test-extension ...`` and ``webui.bat test-extension ...`` do the same with the venv
they set up.) It runs pytest in that folder with this plugin loaded and Atelier's folder on the
import path; the arguments after the folder go to pytest (``-k prefix``, ``-x``, a test file...),
and its exit status is pytest's. By hand, that is::

    cd my-extension
    PYTHONPATH=/path/to/atelier /path/to/atelier/venv/bin/python -m pytest -p modules.devtools.extension_testing

(or ``pytest_plugins = ["modules.devtools.extension_testing"]`` in the repository's root conftest.py).

Inside Atelier's own tests, declare it in the test module: pytest refuses ``pytest_plugins`` only
in a non-root conftest.py, and honours it in a test module. Register the plugin for assertion
rewriting before importing helpers from it, or pytest warns that it was imported too early::

    import pytest

    pytest.register_assert_rewrite("modules.devtools.extension_testing")

    from modules.devtools.extension_testing import tiny_request  # noqa: E402

    pytest_plugins = ["modules.devtools.extension_testing"]

A test::

    from pathlib import Path
    from modules.devtools.extension_testing import tiny_request

    def test_prefix_reaches_the_prompt(atelier_with_extension):
        services = atelier_with_extension(Path(__file__).parents[1])
        result = services.generation.generate(tiny_request(prompt="a cat"))
        assert result.images[0].infotext.startswith("masterpiece, a cat")
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub or gradio: tests run offline and send nothing anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any, Protocol  # noqa: E402

import pytest  # noqa: E402

from modules.params import GenerationRequest  # noqa: E402

if TYPE_CHECKING:
    from modules.services.container import Services

log = logging.getLogger(__name__)
TINY_CHECKPOINT = "tiny-sd15.safetensors"  # the file name the fixtures write, and what tiny_request() asks for

# What an extension folder's copy leaves behind: caches and VCS data are not part of the extension.
_NOT_COPIED = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache")


@dataclass(frozen=True)
class TinyCheckpoints:
    """A checkpoints folder (``--ckpt-dir``) holding one tiny SD1.5 single-file checkpoint."""

    folder: Path
    sd15_file: Path

    @property
    def name(self) -> str:
        return self.sd15_file.name


def tiny_request(**overrides: Any) -> GenerationRequest:
    """A small, fast, reproducible txt2img request on the tiny checkpoint: 64x64, 3 steps, seed 1.
    Any field can be overridden, e.g. ``tiny_request(prompt="a cat", extension_params={...})``."""
    base = GenerationRequest(prompt="a red cube", negative_prompt="", steps=3, width=64, height=64, seed=1,
                             cfg_scale=5.0, checkpoint=TINY_CHECKPOINT)
    return replace(base, **overrides)


def write_extension(parent: Path, name: str, code: str, *, api_version: int = 1, version: str = "1.0.0",
                    description: str = "", entry: str = "main.py", folder_name: str | None = None) -> Path:
    """Write a throwaway extension (manifest + ``main.py`` from ``code``, dedented) under ``parent``;
    its folder. Handy for testing how an extension that misbehaves is treated."""
    folder = parent / (folder_name or name)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = (f"name: {name}\nversion: {version}\napi_version: {api_version}\nentry: {entry}\n"
                f"description: {description or 'written by a test'}\n")
    (folder / "extension.yaml").write_text(manifest, encoding="utf-8")
    (folder / entry.split(":", 1)[0]).write_text(textwrap.dedent(code).lstrip("\n"), encoding="utf-8")
    return folder


def _copy_into(folders: Sequence[Path], target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for folder in folders:
        folder = Path(folder).resolve()
        if not (folder / "extension.yaml").is_file():
            raise FileNotFoundError(f"{folder} is not an extension folder: it has no extension.yaml")
        # A copy rather than a link: whatever the extension writes next to itself stays in the test's temp dir.
        shutil.copytree(folder, target / folder.name, ignore=_NOT_COPIED, symlinks=True)


@contextmanager
def start_atelier(data_dir: Path, checkpoints: Path, extension_folders: Sequence[Path] = (), *,
                  builtin: Sequence[Path] | None = None, load_extensions: bool = True,
                  **settings: Any) -> Iterator[Services]:
    """Started services over ``data_dir`` with ``extension_folders`` copied into its ``extensions/``;
    closed on exit. For fixtures of a wider scope than a test (the factory fixture uses this).

    ``builtin``: None runs Atelier's own built-in extensions beside yours, as users have them; a
    list runs exactly those folders as the built-ins instead (for tests of the built-in/user order).
    ``load_extensions=False`` starts as ``--disable-all-extensions`` does. ``settings`` are
    :class:`modules.config.Settings` fields (``save_grid=False``, ``queue_limit=4``, ...)."""
    from modules.config import Settings
    from modules.engine.devices import DevicePolicy, choose_device
    from modules.paths import PROJECT_ROOT, resolve_paths
    from modules.services.container import build_services

    data_dir.mkdir(parents=True, exist_ok=True)
    _copy_into(extension_folders, data_dir / "extensions")
    project_root = PROJECT_ROOT
    if builtin is not None:
        # Built-ins are found in <project root>/extensions; a stand-in project root holds the chosen ones.
        project_root = data_dir.parent / f"{data_dir.name}-project"
        _copy_into(builtin, project_root / "extensions")
    paths = resolve_paths(data_dir=data_dir, ckpt_dir=checkpoints, project_root=project_root)
    services = build_services(paths, Settings(**settings), choose_device(DevicePolicy(use_cpu=True)),
                              extensions=load_extensions)
    services.extensions.app_started()  # as app.py does once the app is built: APP_STARTED hooks run here too
    try:
        yield services
    finally:
        services.close()


class StartAtelier(Protocol):
    """What ``atelier_with_extension`` returns: call it with one or more extension folders."""

    def __call__(self, *extension_folders: Path, builtin: Sequence[Path] | None = None,
                 load_extensions: bool = True, **settings: Any) -> Services: ...


@pytest.fixture(scope="session")
def atelier_tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> TinyCheckpoints:
    """A tiny random SD1.5 checkpoint (A1111's single-file layout), written once per test session."""
    from modules.devtools.tiny_model import TinyArch, write_tiny_model

    folder = tmp_path_factory.mktemp("atelier-checkpoints")
    return TinyCheckpoints(folder, write_tiny_model(TinyArch.SD15, folder / TINY_CHECKPOINT, seed=0))


@pytest.fixture
def atelier_with_extension(atelier_tiny_checkpoints: TinyCheckpoints,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartAtelier]:
    """A factory: ``atelier_with_extension(folder, ...)`` -> started :class:`Services` whose data
    dir (fresh, temporary) has the extension folders in its ``extensions/``. Everything it started
    is closed when the test ends. See :func:`start_atelier` for the keyword arguments."""
    stack: list[Callable[[], None]] = []

    def start(*extension_folders: Path, builtin: Sequence[Path] | None = None, load_extensions: bool = True,
              **settings: Any) -> Services:
        manager = start_atelier(tmp_path_factory.mktemp("atelier-data"), atelier_tiny_checkpoints.folder,
                                extension_folders, builtin=builtin, load_extensions=load_extensions, **settings)
        services = manager.__enter__()
        stack.append(lambda: manager.__exit__(None, None, None))
        return services

    yield start
    while stack:
        stack.pop()()


def run_extension_tests(args: Sequence[str]) -> int:
    """``app.py test-extension FOLDER [pytest args...]``: pytest's exit status for the extension's
    tests, run in FOLDER with this plugin and Atelier's folder on the import path; 2 for a folder
    that is not an extension."""
    from modules.paths import PROJECT_ROOT

    if not args or args[0].startswith("-"):
        log.error("usage: app.py test-extension FOLDER [pytest arguments...]")
        return 2
    folder = Path(args[0]).resolve()
    if not (folder / "extension.yaml").is_file():
        log.error("test-extension: %s is not an extension folder (it has no extension.yaml)", folder)
        return 2
    # A process of its own: pytest's rootdir, conftest files and import paths are the extension's.
    path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "pytest", "-p", "modules.devtools.extension_testing", *args[1:]]
    return subprocess.call(command, cwd=folder, env={**os.environ, "PYTHONPATH": path})


__all__ = ["TINY_CHECKPOINT", "StartAtelier", "TinyCheckpoints", "atelier_tiny_checkpoints",
           "atelier_with_extension", "run_extension_tests", "start_atelier", "tiny_request", "write_extension"]
