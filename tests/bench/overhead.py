"""Benchmark: Atelier's txt2img (request -> saved PNG) against a plain diffusers pipeline call.

Both run the same tiny model, sampler, steps and size in the same process, alternating, after a
warm-up; the medians are compared. Run on demand, never in CI's test pass:

    venv/bin/python tests/bench/overhead.py [--arch sd15|sdxl] [--steps 20] [--size 64] [--repeats 15] [--threads 1]

The last line is ``overhead_ratio <atelier median / diffusers median>`` (target: at most 1.05).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    import torch
    from diffusers import DPMSolverMultistepScheduler

    from modules.config import Settings
    from modules.devtools.tiny_model import TinyArch, write_tiny_model
    from modules.engine.devices import DevicePolicy, choose_device
    from modules.engine.loader import load_model
    from modules.params import GenerationRequest
    from modules.paths import resolve_paths
    from modules.samplers import ScheduleType
    from modules.services.container import build_services

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a small shared machine, fewer threads mean less noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model_dir = write_tiny_model(TinyArch(args.arch), tmp_path / "models" / f"tiny-{args.arch}")
        device = choose_device(DevicePolicy())
        services = build_services(resolve_paths(data_dir=tmp_path, ckpt_dir=model_dir.parent), Settings(), device)
        request = GenerationRequest(prompt="a photo of a cat", negative_prompt="blurry", steps=args.steps,
                                    width=args.size, height=args.size, seed=1, sampler="DPM++ 2M",
                                    schedule=ScheduleType.KARRAS, checkpoint=model_dir.name)

        # The plain pipeline: same weights, same scheduler (DPM++ 2M with Karras sigmas), PIL output.
        plain = load_model(model_dir, device, tmp_path / "cache").pipeline
        plain.scheduler = DPMSolverMultistepScheduler.from_config(plain.scheduler.config, use_karras_sigmas=True,
                                                                  algorithm_type="dpmsolver++", solver_order=2)

        def run_plain() -> None:
            plain(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=args.steps,
                  width=args.size, height=args.size, generator=torch.Generator().manual_seed(1)).images[0]

        def run_atelier() -> None:
            services.generation.generate(request)

        run_plain(), run_atelier()  # warm-up: first calls pay one-off costs on both sides
        times: dict[str, list[float]] = {"diffusers": [], "atelier": []}
        for _ in range(args.repeats):
            for name, fn in (("diffusers", run_plain), ("atelier", run_atelier)):
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
        services.close()

    plain_median, ours_median = statistics.median(times["diffusers"]), statistics.median(times["atelier"])
    print(f"device {device.describe()}; {args.arch} tiny model, {args.steps} steps, {args.size}x{args.size}, "
          f"{args.repeats} runs each, {args.threads} thread(s)")
    print(f"diffusers pipeline  median {plain_median * 1000:8.1f} ms")
    print(f"atelier txt2img     median {ours_median * 1000:8.1f} ms  (request to saved PNG with infotext)")
    print(f"overhead_ratio {ours_median / plain_median:.3f}")


if __name__ == "__main__":
    main()
