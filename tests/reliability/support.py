"""Helpers the reliability tests share: hostile payloads, raw HTTP, the server's log and memory."""

from __future__ import annotations

import base64
import http.client
import io
import re
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image, PngImagePlugin

from tests.server_process import Server

API = "/sdapi/v1"
# What the server logs once a job reaches the worker: a finished or failed job, or a checkpoint load.
WORKER_LINE = re.compile(r"(txt2img|img2img): \d+ image|Job \S+ failed|Checkpoint .* (loaded|taken from)|Loaded \S+ \(")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_bytes(size: tuple[int, int] = (64, 64), parameters: str | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 120, 200)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def png_bomb(width: int, height: int, bit_depth: int = 1, palette: bool = False) -> bytes:
    """A valid PNG of ``width`` x ``height`` zero pixels, written row by row so that building it
    never holds the decoded image: 20000x20000 at 1 bit compresses to about 50 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\0" * (1 + (width * bit_depth + 7) // 8)  # filter byte, then the packed pixels
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 3 if palette else 0, 0, 0, 0)
    colours = chunk(b"PLTE", b"\0\0\0\xff\xff\xff") if palette else b""
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + colours + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def raw_get(server: Server, raw_path: str, timeout: float = 30) -> tuple[int, bytes]:
    """GET ``raw_path`` exactly as written: httpx would collapse ``..`` and re-encode ``%`` before sending."""
    parts = urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def log_size(server: Server) -> int:
    return server.log.stat().st_size


def log_since(server: Server, offset: int) -> str:
    with server.log.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode("utf-8", errors="replace")


def wait_for_log(server: Server, pattern: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.log.read_text(encoding="utf-8", errors="replace")
        if re.search(pattern, text):
            return text
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared in the server log:\n{server.log.read_text()[-3000:]}")


def wait_for_model(client: httpx.Client, timeout: float = 120) -> str:
    """The loaded checkpoint's title, once the startup load (queued at start) has finished."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        title = client.get(f"{API}/options").json().get("sd_model_checkpoint")
        if title:
            return title
        time.sleep(0.2)
    raise AssertionError("the startup checkpoint never loaded")


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def output_pngs(data_dir: Path) -> list[Path]:
    outputs = data_dir / "outputs"
    return sorted(outputs.rglob("*.png")) if outputs.is_dir() else []


def start_txt2img(server: Server, auth: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """POST txt2img as ``auth`` in a thread of its own; ``outcome["reply"]`` once ``outcome["thread"]`` ends."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        with httpx.Client(base_url=server.url, auth=auth, timeout=300) as client:
            outcome["reply"] = client.post(f"{API}/txt2img", json=body)

    outcome["thread"] = threading.Thread(target=run, daemon=True)
    outcome["thread"].start()
    return outcome


def wait_running(client: httpx.Client, timeout: float = 60) -> dict[str, Any]:
    """The /progress reply once a job this client may see has taken a sampling step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = client.get(f"{API}/progress").json()
        if state["state"]["sampling_step"] >= 1:
            return state
        time.sleep(0.1)
    raise AssertionError("the job never started")
