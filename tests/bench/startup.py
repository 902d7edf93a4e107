"""Benchmark: process start -> server ready, and process start -> first saved image, this tree against a
baseline commit, measured alternately in one run. Run on demand, never in the test pass:

    venv/bin/python tests/bench/startup.py --baseline <git ref> [--runs 3] [--warmup 1] [--steps 4] [--size 64]

The baseline is checked out in a temporary ``git worktree`` and started with this venv's Python.
Both trees get the same tiny SD1.5 checkpoint (made here, in a temporary models folder) and keep a
data folder and a bytecode cache of their own across runs, as an installed app does (the warm-up
start fills them; no .pyc left in either tree is read). Each
run starts ``app.py --api``; "ready" is when both the UI page (GET /) and the API (GET
/sdapi/v1/samplers) answer 200; then one txt2img (``--size`` square, ``--steps`` steps) is posted,
and "first image" is when its reply arrives with a valid, non-constant PNG that was also saved.
Prints one row per start, the medians and their ratios; the last line is
``startup_ready_s <new median> first_image_ratio <new median / baseline median>``. Exits 1 when a goal
is missed: ready at most ``--ready-goal`` seconds (4.0) and the first image at most
``--image-goal`` times the baseline's (0.7).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BASELINE = "8e431a6bd2ef08b57a96d808097064d3bceec241"  # main when this benchmark was written
POLL_SECONDS = 0.02
TIMEOUT_SECONDS = 180.0


@dataclass(frozen=True)
class Tree:
    label: str
    root: Path
    data_dir: Path
    pycache: Path  # this tree's own bytecode cache (PYTHONPYCACHEPREFIX)


@dataclass(frozen=True)
class Start:
    label: str
    api_s: float  # GET /sdapi/v1/samplers answered 200
    ui_s: float  # GET / answered 200
    image_s: float  # the txt2img reply arrived, checked

    @property
    def ready_s(self) -> float:
        return max(self.api_s, self.ui_s)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _check_image(reply: dict, outputs: Path, size: int, saved_before: set[Path]) -> None:
    """The returned image decodes as a ``size`` square PNG that is not one flat colour, and a new PNG
    was saved (with the same pixels); raises otherwise."""
    from PIL import Image

    raw = base64.b64decode(reply["images"][0])
    with Image.open(io.BytesIO(raw)) as image:
        if image.format != "PNG" or image.size != (size, size):
            raise RuntimeError(f"reply image is {image.format} {image.size}, not a {size}x{size} PNG")
        pixels = image.convert("RGB")
    if all(low == high for low, high in pixels.getextrema()):
        raise RuntimeError("reply image is one flat colour")
    saved = sorted(set(outputs.rglob("*.png")) - saved_before)
    if not saved:
        raise RuntimeError(f"no new PNG saved under {outputs}")
    with Image.open(saved[-1]) as on_disk:
        if on_disk.convert("RGB").tobytes() != pixels.tobytes():
            raise RuntimeError(f"{saved[-1]} differs from the reply's image")


def _start_once(tree: Tree, models: Path, size: int, steps: int) -> Start:
    """Start ``tree``'s app.py, time it to ready and to its first checked image, and stop it."""
    from tests.server_process import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "COMMANDLINE_ARGS": "",
           "PYTHONPYCACHEPREFIX": str(tree.pycache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # the warm-up fills the cache, as an installed app's is
    log = tree.data_dir / "bench-server.log"
    outputs = tree.data_dir / "outputs"
    saved_before = set(outputs.rglob("*.png"))
    command = [sys.executable, str(tree.root / "app.py"), "--api", "--port", str(port), "--data-dir",
               str(tree.data_dir), "--models-dir", str(models)]
    started = time.monotonic()
    with log.open("w") as log_file:
        proc = subprocess.Popen(command, cwd=tree.root, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        # 1. Ready: both faces answer (each polled until it does).
        api_s = ui_s = None
        while api_s is None or ui_s is None:
            if proc.poll() is not None or time.monotonic() - started > TIMEOUT_SECONDS:
                raise RuntimeError(f"{tree.label}: server did not become ready:\n{log.read_text()[-3000:]}")
            if api_s is None and _answers(f"{url}/sdapi/v1/samplers"):
                api_s = time.monotonic() - started
            if ui_s is None and _answers(f"{url}/"):
                ui_s = time.monotonic() - started
            if api_s is None or ui_s is None:
                time.sleep(POLL_SECONDS)
        # 2. The first image, checked.
        body = json.dumps({"prompt": "a photo of a cat", "width": size, "height": size, "steps": steps,
                           "seed": 1, "sampler_name": "Euler", "save_images": True}).encode()
        request = urllib.request.Request(f"{url}/sdapi/v1/txt2img", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{tree.label}: txt2img answered {exc.code}: {exc.read()[:500]!r}\n"
                               f"{log.read_text()[-3000:]}") from exc
        image_s = time.monotonic() - started
        _check_image(reply, outputs, size, saved_before)
        return Start(tree.label, api_s, ui_s, image_s)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _worktree(ref: str, folder: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(folder), ref],
                   check=True, capture_output=True, text=True)
    return folder


def _tiny_checkpoint(models: Path) -> None:
    from modules.devtools.tiny_model import TinyArch, write_tiny_model

    write_tiny_model(TinyArch.SD15, models / "Stable-diffusion" / "tiny-sd15.safetensors", seed=0)


def _report(starts: list[Start], args: argparse.Namespace, baseline: str) -> bool:
    """Print the table, medians and ratios; whether both goals are met."""
    print(f"\nbaseline {baseline}; new = {ROOT} (working tree); tiny SD1.5, {args.size}x{args.size}, "
          f"{args.steps} steps, {args.runs} run(s) each after {args.warmup} warm-up(s), {os.cpu_count()} CPU(s)")
    print(f"{'tree':<9} {'API s':>7} {'UI s':>7} {'ready s':>8} {'image s':>8}")
    for s in starts:
        print(f"{s.label:<9} {s.api_s:7.2f} {s.ui_s:7.2f} {s.ready_s:8.2f} {s.image_s:8.2f}")
    medians = {}
    for label in ("baseline", "new"):
        mine = [s for s in starts if s.label == label]
        medians[label] = (statistics.median(s.ready_s for s in mine), statistics.median(s.image_s for s in mine))
        print(f"{label + ' median':<17} ready {medians[label][0]:6.2f} s   first image {medians[label][1]:6.2f} s")
    ready_ratio = medians["new"][0] / medians["baseline"][0]
    image_ratio = medians["new"][1] / medians["baseline"][1]
    ready_ok = medians["new"][0] <= args.ready_goal
    image_ok = image_ratio <= args.image_goal
    print(f"ratio new/baseline: ready {ready_ratio:.2f}, first image {image_ratio:.2f}")
    print(f"goal ready <= {args.ready_goal:.1f} s: {'met' if ready_ok else 'MISSED'}; "
          f"goal first image <= {args.image_goal:.2f} x baseline: {'met' if image_ok else 'MISSED'}")
    print(f"startup_ready_s {medians['new'][0]:.2f} first_image_ratio {image_ratio:.3f}")
    return ready_ok and image_ok


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref to compare with (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=3, help="timed starts per tree (alternating)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed starts per tree first (fill caches)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ready-goal", type=float, default=4.0, help="seconds")
    parser.add_argument("--image-goal", type=float, default=0.7, help="new / baseline")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="startup-bench-") as tmp:
        tmp_path = Path(tmp)
        baseline = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.baseline], check=True,
                                  capture_output=True, text=True).stdout.strip()
        models = tmp_path / "models"
        _tiny_checkpoint(models)
        trees = [Tree("baseline", _worktree(baseline, tmp_path / "baseline"), tmp_path / "data-baseline",
                      tmp_path / "pycache-baseline"),
                 Tree("new", ROOT, tmp_path / "data-new", tmp_path / "pycache-new")]
        try:  # the worktree goes whatever happens
            for tree in trees:
                tree.data_dir.mkdir()
                for _ in range(args.warmup):
                    _start_once(tree, models, args.size, args.steps)
            starts = []
            for run in range(args.runs):  # alternate which goes first, so drift hits both alike
                for tree in trees if run % 2 == 0 else trees[::-1]:
                    starts.append(_start_once(tree, models, args.size, args.steps))
                    print(f"run {run + 1} {tree.label}: ready {starts[-1].ready_s:.2f} s, "
                          f"image {starts[-1].image_s:.2f} s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[0].root)],
                           capture_output=True, check=False)
        return 0 if _report(starts, args, baseline) else 1


if __name__ == "__main__":
    sys.exit(main())
