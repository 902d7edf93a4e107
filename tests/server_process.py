"""Starting and stopping a real Atelier server (app.py in a subprocess) for tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    data_dir: Path
    log: Path


def start_server(data_dir: Path, ckpt_dir: Path, *extra: str, ready_path: str | None = "/",
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Server]:
    """Start app.py and wait until ``ready_path`` answers (None: until the port accepts connections)."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "COMMANDLINE_ARGS": "",
           **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port), "--data-dir", str(data_dir),
         "--ckpt-dir", str(ckpt_dir), *extra],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    server = Server(url=f"http://127.0.0.1:{port}", data_dir=data_dir, log=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        if ready_path is None:
            if _port_open(port):
                return proc, server
            time.sleep(0.5)
            continue
        try:
            with urllib.request.urlopen(server.url + ready_path, timeout=2) as response:
                if response.status == 200:
                    return proc, server
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 404):  # serving, but behind a login or without that route
                return proc, server
            time.sleep(0.5)
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


