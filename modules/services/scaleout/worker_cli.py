"""``python app.py worker --join HOST:PORT``: start this host's GPU workers for an Atelier front.

On a machine that is not yet part of the cluster it first starts a Ray node joining the head (and
stops it at exit). It then starts one worker actor per GPU (or ``--cpu-workers N`` on the CPU),
each loading checkpoints from this machine's own models folder, and keeps them until Ctrl+C or
SIGTERM: the workers then finish their jobs (up to ``--drain-seconds``) and leave. The front picks
up workers that join and notices those that leave without a restart.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from modules.cmd_args import Flags, parse_flags
from modules.errors import ConfigError

log = logging.getLogger("atelier.worker")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py worker", description="Start this machine's GPU workers for an "
                                "Atelier front (see docs/scale-out.md). Other flags (--data-dir, --ckpt-dir, "
                                "--models-dir, --no-half, --medvram, ...) mean what they mean for app.py.")
    p.add_argument("--join", required=True, metavar="HOST:PORT|auto",
                   help="the Ray head the front runs (its --ray-address), or 'auto' on a machine already in the cluster")
    p.add_argument("--gpus", type=int, help="workers to start, one per GPU (default: every GPU of this machine)")
    p.add_argument("--cpu-workers", type=int, default=0, help="start N workers on the CPU instead (slow: to try it)")
    p.add_argument("--node-ip", help="this machine's LAN address for Ray (default: the one that reaches the head)")
    p.add_argument("--ray-allow-public", action="store_true", help="allow addresses that are not private or loopback")
    p.add_argument("--drain-seconds", type=float, default=600.0,
                   help="at Ctrl+C, how long running jobs may take to finish before the workers stop")
    return p


def worker_main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    ns, rest = build_parser().parse_known_args(argv)
    flags = parse_flags(rest, environ)
    logging.basicConfig(level=flags.loglevel, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _serve(ns, flags)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2


def _serve(ns: argparse.Namespace, flags: Flags) -> int:
    from modules.services.scaleout import cluster
    from modules.services.scaleout.protocol import NAMESPACE

    address = cluster.RayAddress.parse(ns.join)
    node = None
    if address.host is not None:
        cluster.check_address(address.host, ns.ray_allow_public)
        cluster.require_token_auth(create=False)
        if not cluster.is_local_address(address.host):  # a second machine: it joins as a Ray node first
            node_ip = ns.node_ip or cluster.lan_address_towards(address.host, address.port)
            cluster.check_address(node_ip, ns.ray_allow_public)
            node = cluster.start_ray_node(address, node_ip, head=False)
    import ray  # only now: Ray reads RAY_AUTH_MODE, which require_token_auth set, once

    try:
        cluster.init_ray(str(address), NAMESPACE, attempts=15)
        handles = _start_workers(ns, flags)
        log.info("%d worker(s) serving; Ctrl+C to leave", len(handles))
        _wait_for_stop()
        _leave(handles, ns.drain_seconds)
    finally:
        ray.shutdown()
        cluster.stop_ray_node(node)
    return 0


def _start_workers(ns: argparse.Namespace, flags: Flags) -> list[Any]:
    import ray

    from modules.config import load_settings
    from modules.paths import resolve_paths
    from modules.services.device_flags import device_policy
    from modules.services.scaleout.engine_host import EngineConfig
    from modules.services.scaleout.pool import WorkerSlots, spawn_workers
    from modules.services.scaleout.protocol import worker_name

    settings = load_settings(resolve_paths(flags.data_dir, flags.models_dir).config_file)
    policy = replace(device_policy(flags), device_id=None)  # Ray gives each worker its own GPU as cuda:0
    policy = replace(policy, text_encoders_on_cpu=policy.text_encoders_on_cpu or settings.text_encoder_cpu)
    if ns.cpu_workers:
        count, slots, kind = ns.cpu_workers, WorkerSlots(ns.cpu_workers, num_gpus=0, num_cpus=1), "cpu"
        policy = replace(policy, use_cpu=True)
    else:
        node_id = ray.get_runtime_context().get_node_id()
        here = next(n for n in ray.nodes() if n["NodeID"] == node_id)
        count, kind = ns.gpus or int(here["Resources"].get("GPU", 0)), "gpu"
        if count <= 0:
            raise ConfigError("Ray sees no GPU on this machine. Use --cpu-workers N to try workers on the CPU.")
        slots = WorkerSlots(count)
    engine = EngineConfig(data_dir=flags.data_dir, models_dir=flags.models_dir, ckpt_dir=flags.ckpt_dir,
                          lora_dir=flags.lora_dir, embeddings_dir=flags.embeddings_dir, vae_dir=flags.vae_dir,
                          model_folders=flags.model_folders, policy=policy, checkpoint_cache=settings.checkpoint_cache,
                          fast_path=settings.fast_path, extensions=not flags.disable_all_extensions)
    names = [worker_name(socket.gethostname(), f"{kind}{i}") for i in range(count)]
    try:
        return spawn_workers(names, engine, slots)
    except ValueError as exc:  # Ray: the name is taken
        raise ConfigError(f"Workers of this machine already run ({exc}); stop them first.") from exc


def _wait_for_stop() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    while not stop.wait(1.0):
        pass


def _leave(handles: list[Any], drain_seconds: float) -> None:
    """Take no new jobs, let the running ones finish (up to ``drain_seconds``), then stop."""
    import ray

    ray.get([h.drain.remote() for h in handles])
    log.info("Leaving: finishing running jobs (up to %.0f s)", drain_seconds)
    time.sleep(3.0)  # the front reads the draining state before it would hand out another job
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline and any(ray.get([h.busy.remote() for h in handles])):
        time.sleep(1.0)
    for handle in handles:
        ray.kill(handle, no_restart=True)
    log.info("Workers stopped")
