"""Benchmark: the Ray queue's dispatch overhead per job, and the speedup of N workers over one.

Fake workers (steps that sleep, no model) on a local Ray with N fake GPUs, so the numbers measure
the queue, not the engine. Run on demand, never in CI's test pass:

    venv/bin/python tests/bench/ray_dispatch.py [--workers 4] [--jobs 16] [--job-seconds 2] [--short-jobs 30]

Prints the median round trip of a job that does nothing (submit -> result), for the Ray queue and,
as a reference, the in-process queue; then the wall time of ``--jobs`` jobs of ``--job-seconds``
on one worker and on N, and ``speedup <T1/TN>`` (target: at least 0.9 x N).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def round_trips(queue: object, count: int) -> list[float]:
    from modules.params import GenerationRequest

    times = []
    for i in range(count):
        started = time.perf_counter()
        queue.submit(GenerationRequest(prompt=f"noop {i}", steps=1)).future.result(60)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - started)
    return times


def run_batch(queue: object, jobs: int, steps: int) -> float:
    from modules.params import GenerationRequest

    started = time.perf_counter()
    submitted = [queue.submit(GenerationRequest(prompt=f"job {i}", steps=steps)) for i in range(jobs)]  # type: ignore[attr-defined]
    for job in submitted:
        job.future.result(600)
    return time.perf_counter() - started


def ray_queue(workers: int, step_seconds: float, limit: int) -> tuple[object, list[object]]:
    from modules.devtools.fake_worker import FakeEngineConfig, FakeHooks
    from modules.services.scaleout.pool import WorkerSlots, spawn_workers
    from modules.services.scaleout.protocol import worker_name
    from modules.services.scaleout.ray_queue import RayJobQueue
    from modules.services.scaleout.slots import DispatchSettings

    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    handles = spawn_workers([worker_name("bench", f"gpu{i}") for i in range(workers)],
                            FakeEngineConfig(step_seconds=step_seconds), WorkerSlots(workers, resource="fake_gpu"),
                            namespace=namespace)
    queue = RayJobQueue(FakeHooks(), limit, settings=DispatchSettings(namespace=namespace, discover_seconds=0.2))
    queue.start()
    while len(queue.workers()) < workers:
        time.sleep(0.05)
    return queue, handles


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=0, help="jobs in the speedup runs (default: 4 per worker)")
    parser.add_argument("--job-seconds", type=float, default=2.0)
    parser.add_argument("--steps", type=int, default=20, help="steps per job (progress is read while they run)")
    parser.add_argument("--short-jobs", type=int, default=30, help="do-nothing jobs timed for the overhead")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray

    from modules.devtools.fake_worker import FakeEngine, FakeEngineConfig
    from modules.services.jobs import JobQueue

    jobs = args.jobs or 4 * args.workers
    step_seconds = args.job_seconds / args.steps
    ray.init(address="local", num_cpus=2, resources={"fake_gpu": args.workers + 1}, include_dashboard=False,
             log_to_driver=False)
    local = JobQueue(FakeEngine(FakeEngineConfig(step_seconds=0.0)).run, limit=jobs)
    local.start()
    local_trips = round_trips(local, args.short_jobs)
    local.stop(5)

    for seconds, measure in ((0.0, "trips"), (step_seconds, "one")):
        queue, handles = ray_queue(1, seconds, jobs)
        if measure == "trips":  # a worker whose steps take no time: what remains is the queue's
            trips = round_trips(queue, args.short_jobs)
        else:
            one_seconds = run_batch(queue, jobs, args.steps)
        queue.stop(10)  # type: ignore[attr-defined]
        for handle in handles:
            ray.kill(handle)
    many, _handles = ray_queue(args.workers, step_seconds, jobs)
    round_trips(many, 4)  # warm the workers
    many_seconds = run_batch(many, jobs, args.steps)
    many.stop(10)  # type: ignore[attr-defined]
    ray.shutdown()

    ideal = jobs * args.job_seconds
    print(f"local_round_trip_ms_per_job {statistics.median(local_trips) * 1000:.1f}")
    print(f"ray_round_trip_ms_per_job {statistics.median(trips) * 1000:.1f}")
    print(f"dispatch_overhead_ms_per_job {(statistics.median(trips) - statistics.median(local_trips)) * 1000:.1f}")
    print(f"one_worker_seconds {one_seconds:.2f} (work {ideal:.1f} s: {jobs} jobs of {args.job_seconds:.1f} s)")
    print(f"{args.workers}_workers_seconds {many_seconds:.2f}")
    print(f"speedup {one_seconds / many_seconds:.2f} (target >= {0.9 * args.workers:.1f} for {args.workers} workers)")


if __name__ == "__main__":
    main()
