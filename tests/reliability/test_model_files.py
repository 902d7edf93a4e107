"""Category 3, model files: hostile and broken files are refused with a reason, never executed, and
the model that was loaded keeps serving. A server started among such files (and told to load one)
still starts and serves.

A hostile pickle here is the classic one: an object whose ``__reduce__`` calls ``open``, ``exec`` or
``os.system`` to create a marker file. The marker must never appear.
"""

from __future__ import annotations

import ast
import builtins
import json
import os
import pickle
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import torch

from modules.errors import AtelierError, ModelLoadError, UnsafeCheckpointError
from modules.params import GenerationRequest
from modules.paths import PROJECT_ROOT
from tests.conftest import make_services
from tests.reliability.support import API, wait_for_log
from tests.server_process import Server, start_server, stop_server

CATEGORY = "3 model files"
GOOD = "tiny-sd15.safetensors"
SMALL = GenerationRequest(prompt="a red cube", width=64, height=64, steps=2, seed=11, save_images=False)


class RunsCode:
    """Unpickling this calls ``func(*args)``: what a hostile checkpoint does."""

    def __init__(self, func: Callable[..., object], *args: object) -> None:
        self.func = func
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return self.func, self.args


def hostile_torch_file(path: Path, payload: RunsCode) -> Path:
    """A real torch zip checkpoint with tensors, and the payload beside them."""
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(2)}, "extra": payload}, path)
    return path


@dataclass(frozen=True)
class Bad:
    name: str
    reason: str  # part of the refusal message
    unsafe: bool = False  # refused as code-running (UnsafeCheckpointError)


@dataclass(frozen=True)
class ModelFolder:
    folder: Path
    markers: Path  # a marker file appears here only if some payload ran
    bad: tuple[Bad, ...]

    def marker_files(self) -> list[str]:
        return sorted(p.name for p in self.markers.iterdir())


def build_folder(root: Path, good_file: Path) -> ModelFolder:
    folder, markers = root / "checkpoints", root / "markers"
    folder.mkdir()
    markers.mkdir()
    shutil.copy(good_file, folder / GOOD)
    good = (folder / GOOD).read_bytes()
    bad = []

    def add(name: str, reason: str, data: bytes | None = None, unsafe: bool = False) -> None:
        if data is not None:
            (folder / name).write_bytes(data)
        bad.append(Bad(name, reason, unsafe))

    hostile_torch_file(folder / "evil-open.ckpt", RunsCode(builtins.open, str(markers / "open"), "w"))
    add("evil-open.ckpt", "possible code execution", unsafe=True)
    hostile_torch_file(folder / "evil-exec.ckpt",
                       RunsCode(builtins.exec, f"open({str(markers / 'exec')!r}, 'w').close()"))
    add("evil-exec.ckpt", "possible code execution", unsafe=True)
    hostile_torch_file(folder / "evil-system.ckpt", RunsCode(os.system, f"touch {markers / 'system'}"))
    add("evil-system.ckpt", "possible code execution", unsafe=True)
    add("raw-pickle.ckpt", "not a zip archive", pickle.dumps(RunsCode(os.system, f"touch {markers / 'raw'}")))
    add("truncated.safetensors", "truncated", good[: len(good) // 2])
    add("lfs-pointer.safetensors", "git-LFS pointer",
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"0" * 64 + b"\nsize 11133700\n")
    add("lfs-pointer.ckpt", "git-LFS pointer", b"version https://git-lfs.github.com/spec/v1\nsize 1\n")
    add("empty.safetensors", "empty", b"")
    add("empty.ckpt", "empty", b"")
    add("huge-header.safetensors", "impossible", struct.pack("<Q", 2**60) + b'{"a": 1}' + b"\0" * 64)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    add("not-sd.safetensors", "not a Stable Diffusion checkpoint", struct.pack("<Q", len(header)) + header + b"\0" * 8)
    return ModelFolder(folder, markers, tuple(bad))


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> ModelFolder:
    return build_folder(tmp_path_factory.mktemp("model-files"), tiny_models.sd15_file)


@pytest.fixture(scope="module")
def loaded(models: ModelFolder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Services with the good checkpoint loaded, among the bad ones."""
    svc = make_services(tmp_path_factory.mktemp("model-files-data"), models.folder)
    svc.generation.switch_model(GOOD).future.result(timeout=300)
    yield svc
    svc.close()


# The files build_folder makes (named here so that each is its own case).
BAD_NAMES = [
    "evil-open.ckpt", "evil-exec.ckpt", "evil-system.ckpt", "raw-pickle.ckpt", "truncated.safetensors",
    "lfs-pointer.safetensors", "lfs-pointer.ckpt", "empty.safetensors", "empty.ckpt", "huge-header.safetensors",
    "not-sd.safetensors"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_checkpoint_is_refused_and_the_loaded_one_stays(loaded, models: ModelFolder, name: str) -> None:
    bad = next(b for b in models.bad if b.name == name)
    with pytest.raises(ModelLoadError) as refused:
        loaded.generation.switch_model(name).future.result(timeout=300)
    assert isinstance(refused.value, UnsafeCheckpointError) == bad.unsafe
    assert name in str(refused.value) and bad.reason in str(refused.value), str(refused.value)
    assert loaded.models.current().name == GOOD
    assert loaded.models.last_error == str(refused.value)  # shown beside the model list
    assert models.marker_files() == []


def test_a_job_naming_a_bad_checkpoint_fails_and_the_next_job_uses_the_loaded_one(loaded, models: ModelFolder) -> None:
    with pytest.raises(UnsafeCheckpointError):
        loaded.generation.generate(replace(SMALL, checkpoint="evil-system.ckpt"), 300)
    result = loaded.generation.generate(SMALL, 300)
    assert result.model_title.startswith(f"{GOOD} [") and len(result.images) == 1 and result.seeds == (11,)
    assert models.marker_files() == []


def test_hostile_add_on_pickles_are_refused(loaded, models: ModelFolder) -> None:
    # The same payload as a LoRA, an embedding and a VAE (each kind loads .pt files).
    paths = loaded.paths
    for folder, name in ((paths.lora_dirs[0], "evil-lora.pt"), (paths.embedding_dirs[0], "evilemb.pt"),
                         (paths.vae_dirs[0], "evil-vae.pt")):
        folder.mkdir(parents=True, exist_ok=True)
        hostile_torch_file(folder / name, RunsCode(os.system, f"touch {models.markers / name}"))
    for registry in (loaded.addons.loras, loaded.addons.embeddings, loaded.addons.vaes):
        registry.refresh()
    with pytest.raises(AtelierError, match="evil-lora.pt"):
        loaded.generation.generate(replace(SMALL, prompt="a cube <lora:evil-lora:1>"), 300)
    with pytest.raises(AtelierError, match="evil-vae.pt"):
        loaded.generation.generate(replace(SMALL, vae="evil-vae.pt"), 300)
    # An embedding that cannot be read is skipped with a warning, as A1111 does: the job still runs.
    result = loaded.generation.generate(replace(SMALL, prompt="a cube, evilemb"), 300)
    assert len(result.images) == 1 and "TI hashes" not in result.images[0].infotext
    assert loaded.generation.generate(SMALL, 300).model_title.startswith(GOOD)
    assert models.marker_files() == []


# --- a server among bad files, told to load a bad one -------------------------------------------


@dataclass(frozen=True)
class Running:
    proc: object
    server: Server


@pytest.fixture(scope="module")
def running(models: ModelFolder, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    proc, srv = start_server(tmp_path_factory.mktemp("model-files-server"), models.folder, "--api", "--ckpt",
                             "evil-system.ckpt", ready_path=f"{API}/options")
    wait_for_log(srv, r"Startup model not loaded")  # the startup load is queued; let it fail first
    yield Running(proc, srv)
    stop_server(proc)  # type: ignore[arg-type]


@pytest.fixture
def client(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.server.url, timeout=300) as c:
        yield c


def test_the_server_starts_and_serves_with_a_bad_startup_checkpoint(client: httpx.Client, running: Running,
                                                                   models: ModelFolder) -> None:
    assert running.proc.poll() is None  # type: ignore[attr-defined]
    assert "evil-system.ckpt" in running.server.log.read_text() and models.marker_files() == []
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] is None
    assert len(client.get(f"{API}/sd-models").json()) == 1 + len(models.bad)
    assert client.get(f"{API}/progress").json()["state"]["job_count"] == 0
    assert client.get("/").status_code == 200  # the UI


def test_with_no_model_loaded_a_job_falls_back_to_a_loadable_checkpoint(client: httpx.Client) -> None:
    reply = client.post(f"{API}/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2})
    assert reply.status_code == 200, reply.text[:300]


@pytest.mark.parametrize("name", ["truncated.safetensors", "evil-open.ckpt", "huge-header.safetensors",
                                  "lfs-pointer.safetensors", "empty.safetensors"])
def test_switching_the_server_to_a_bad_file_is_refused_and_the_model_stays(client: httpx.Client, models: ModelFolder,
                                                                           name: str) -> None:
    if client.get(f"{API}/options").json()["sd_model_checkpoint"] is None:
        assert client.post(f"{API}/options", json={"sd_model_checkpoint": GOOD}).status_code == 200
    before = client.get(f"{API}/options").json()["sd_model_checkpoint"]
    assert before.startswith(GOOD)
    reply = client.post(f"{API}/options", json={"sd_model_checkpoint": name})
    assert reply.status_code == 500 and reply.json()["error"] in ("ModelLoadError", "UnsafeCheckpointError")
    assert name in reply.json()["detail"]
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == before
    made = client.post(f"{API}/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "seed": 5})
    assert made.status_code == 200 and json.loads(made.json()["info"])["sd_model_name"] == "tiny-sd15"
    assert models.marker_files() == []


# --- the source tree: every torch.load is weights-only ------------------------------------------


def _python_files() -> list[Path]:
    roots = [PROJECT_ROOT / "modules", PROJECT_ROOT / "extensions"]
    return [PROJECT_ROOT / "app.py", *(p for root in roots for p in root.rglob("*.py"))]


def test_every_torch_load_is_weights_only() -> None:
    calls, unsafe = 0, []
    for path in _python_files():
        source = path.read_text(encoding="utf-8")
        where = path.relative_to(PROJECT_ROOT)
        tree = ast.parse(source, str(path))
        called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and ast.unparse(node) == "torch.load":
                # Taken as a value (``load = torch.load``), a call could hide from the check below.
                assert id(node) in called, f"{where}:{node.lineno}: torch.load used other than as a direct call"
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load"):
                continue
            calls += 1
            flag = next((k.value for k in node.keywords if k.arg == "weights_only"), None)
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                unsafe.append(f"{where}:{node.lineno}")
        for banned in ("from torch import load", "pickle.load(", "pickle.loads(", "Unpickler(", "weights_only=False"):
            assert banned not in source, f"{where}: {banned}"
    assert calls >= 2  # the checkpoint and embedding readers: the walk does find calls
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


def test_marker_payloads_do_run_when_unpickled_unsafely(tmp_path: Path) -> None:
    """The control: the payloads above are live, so their markers' absence means they were refused."""
    marker = tmp_path / "ran"
    path = hostile_torch_file(tmp_path / "control.ckpt", RunsCode(builtins.open, str(marker), "w"))
    torch.load(path, map_location="cpu", weights_only=False)  # the unsafe load the source tree must never do
    assert marker.exists()
