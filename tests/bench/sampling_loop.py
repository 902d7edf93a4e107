"""Benchmark: Atelier's own denoising loop against the diffusers pipeline loop, per step.

Both run Euler (uniform timesteps; diffusers' EulerDiscreteScheduler with linspace spacing is the
same trajectory) on the same tiny model, same prompt, size and seed, in one process. Per-step time
is (time at 2N steps - time at N steps) / N, which cancels prompt encoding and setup on both sides.
Run on demand:

    venv/bin/python tests/bench/sampling_loop.py [--arch sd15|sdxl] [--size 64] [--steps 30] [--repeats 9] [--threads 1]

The last line is ``loop_step_ratio <atelier per-step / diffusers per-step>`` (target: at most 1.02).
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
    from diffusers import EulerDiscreteScheduler

    from modules.devtools.tiny_model import TinyArch, write_tiny_model
    from modules.engine.devices import DevicePolicy, choose_device
    from modules.engine.generate import ImageTask, run_task
    from modules.engine.loader import load_model
    from modules.engine.sampling.loop import NoisePlan
    from modules.samplers import ScheduleType, resolve_sampler

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a small shared machine, fewer threads mean less noise)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    class Quiet:
        def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
            pass

        def should_stop(self) -> bool:
            return False

    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_model(TinyArch(args.arch), Path(tmp) / "tiny")
        device = choose_device(DevicePolicy())
        model = load_model(folder, device, Path(tmp) / "cache")
        pipe = model.pipeline
        euler = resolve_sampler("Euler")[0]  # type: ignore[index]

        def ours(steps: int) -> None:
            task = ImageTask(prompt="a photo of a cat", negative_prompt="blurry", sampler=euler,
                             schedule=ScheduleType.UNIFORM, steps=steps, cfg_scale=7.0, width=args.size,
                             height=args.size, clip_skip=1, noise=NoisePlan(seeds=(1,)))
            run_task(model, task, Quiet())

        def plain(steps: int) -> None:
            pipe.scheduler = EulerDiscreteScheduler.from_config(dict(model.base_scheduler_config),
                                                                timestep_spacing="linspace")
            pipe(prompt="a photo of a cat", negative_prompt="blurry", num_inference_steps=steps, width=args.size,
                 height=args.size, generator=torch.Generator(device.device).manual_seed(1), output_type="pil")

        def step_time(fn) -> float:
            t0 = time.perf_counter()
            fn(args.steps)
            t1 = time.perf_counter()
            fn(2 * args.steps)
            return ((time.perf_counter() - t1) - (t1 - t0)) / args.steps

        for fn in (plain, ours):  # warm-up: first calls pay one-off kernel set-up on both sides
            fn(args.steps), fn(2 * args.steps)
        samples: dict[str, list[float]] = {"plain": [], "ours": []}
        for _ in range(args.repeats):  # interleaved, so drift in machine speed hits both alike
            samples["plain"].append(step_time(plain))
            samples["ours"].append(step_time(ours))
        plain_step, our_step = statistics.median(samples["plain"]), statistics.median(samples["ours"])
    print(f"device {device.describe()}; {args.arch} tiny model, {args.size}x{args.size}, Euler, "
          f"{args.steps} vs {2 * args.steps} steps, {args.repeats} repeats, {args.threads} thread(s)")
    print(f"diffusers pipeline loop  {plain_step * 1000:7.2f} ms/step")
    print(f"atelier loop             {our_step * 1000:7.2f} ms/step")
    print(f"loop_step_ratio {our_step / plain_step:.3f}")


if __name__ == "__main__":
    main()
