"""kill -9 with one job running and five waiting, then a restart on the same data folder: every
accepted job runs to its end exactly once (the interrupted one again from its start), and no image
is written twice (the one the interrupted job had saved before the kill is not saved again)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.server_process import Server, start_server, stop_server

CATEGORY = "12 crash recovery"
API = "/sdapi/v1"
LONG = {"prompt": "a long job", "steps": 30, "n_iter": 3, "seed": 1000}  # three images, one file each
SHORT_SEEDS = (2001, 2002, 2003, 2004, 2005)


def _start(tiny_models: Any, data: Path) -> tuple[Any, Server]:
    return start_server(data, tiny_models.folder, "--api", "--ckpt", "tiny-sd15.safetensors",
                        ready_path=f"{API}/options")


def _post_in_background(server: Server, body: dict[str, Any]) -> threading.Thread:
    """POST txt2img from a thread; the reply is lost with the server, which is the point."""
    payload = {"width": 64, "height": 64, "steps": 1, "save_images": True, **body}

    def post() -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=120) as client:
                client.post(f"{API}/txt2img", json=payload)
        except httpx.HTTPError:
            pass  # the connection died with the killed server

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _rows(data: Path, query: str) -> list[tuple[Any, ...]]:
    """Rows of the studio database, read as another program would (read-only, beside the server)."""
    with sqlite3.connect(f"file:{data / 'atelier.db'}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(query).fetchall()


def _wait(condition: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except sqlite3.OperationalError:  # the database is not there yet, or busy for a moment
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_server_runs_every_accepted_job_once_after_a_restart(tiny_models, tmp_path: Path) -> None:
    data = tmp_path / "studio"
    images = data / "outputs" / "txt2img-images"
    proc, server = _start(tiny_models, data)
    try:
        _post_in_background(server, LONG)
        long_id = _wait(lambda: _rows(data, "SELECT id FROM jobs WHERE state = 'running'"), "the long job")[0][0]
        for seed in SHORT_SEEDS:
            _post_in_background(server, {"prompt": f"short {seed}", "seed": seed})
        _wait(lambda: len(_rows(data, "SELECT id FROM jobs WHERE state = 'queued'")) == 5, "five queued jobs")
        # Its first image saved and written down (a kill between the two would save it again).
        _wait(lambda: _rows(data, f"SELECT path FROM job_files WHERE job_id = '{long_id}'"), "the long job's first image")
    finally:
        proc.kill()  # no shutdown: as a crash or a power cut would stop it
        proc.wait(30)
    saved = [Path(path) for (path,) in _rows(data, f"SELECT path FROM job_files WHERE job_id = '{long_id}'")]
    assert 1 <= len(saved) < 3 and all(path.is_file() for path in saved)  # killed mid-job, after an image
    saved_before = {path: path.stat().st_mtime_ns for path in saved}
    proc, server = _start(tiny_models, data)
    try:
        _wait(lambda: [state for (state,) in _rows(data, "SELECT state FROM jobs")] == ["finished"] * 6,
              "all six jobs to finish", timeout=120)
        attempts = dict(_rows(data, "SELECT id, attempts FROM jobs"))
        files = _rows(data, "SELECT job_id, idx, path FROM job_files WHERE kind = 'txt2img-images'")
    finally:
        stop_server(proc)
    assert attempts.pop(long_id) == 2 and set(attempts.values()) == {1}  # the running one again, the others once
    per_job = sorted((job_id == long_id, idx) for job_id, idx, _path in files)
    assert per_job == [(False, 0)] * 5 + [(True, 0), (True, 1), (True, 2)]  # one file per (job, image)
    on_disk = sorted(images.rglob("*.png"))
    assert sorted(Path(path) for _j, _i, path in files) == on_disk and len(on_disk) == 8  # none written twice
    assert {path: path.stat().st_mtime_ns for path in saved} == saved_before  # kept, not written again
