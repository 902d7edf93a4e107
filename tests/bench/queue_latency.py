"""Benchmark: how fast the queue route answers while jobs run. Run on demand, never in the test pass:

    venv/bin/python tests/bench/queue_latency.py [--seconds 30] [--users 3] [--clients-per-user 2]

Starts a real server on a tiny SD1.5 model with an admin and ``--users`` accounts, keeps the queue
busy with 64x64 jobs from every user's clients (HTTP Basic), and meanwhile polls
``GET /sdapi/v1/queue`` as each account in turn (with its API token). Every reply is checked: it
must be 200 with the documented shape, and a user must never see another user's prompt. Prints the
median, p95 and max latency of the polls made while a job ran, and exits non-zero when the p95 is
not under 50 ms, no job ran, or a reply was wrong.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
API = "/sdapi/v1"
GOAL_P95_MS = 50.0


def _accounts(data: Path, users: int) -> dict[str, tuple[str, str]]:
    """An admin and ``users`` users in the data dir's database; name -> (password, API token)."""
    from modules.identity import Role
    from modules.services.accounts import AccountStore
    from modules.services.studio_db import db_path, open_studio_db

    db = open_studio_db(db_path(data))
    store = AccountStore(db)
    made = {}
    for i, name in enumerate(["boss", *[f"user{n}" for n in range(users)]]):
        password = f"password-{name}"
        store.add(name, password, Role.ADMIN if i == 0 else Role.USER)
        made[name] = (password, store.create_token(name, "bench")[1])
    db.close()
    return made


def _submitter(url: str, name: str, password: str, stop: threading.Event, errors: list[str]) -> None:
    import httpx

    with httpx.Client(base_url=url, auth=(name, password), timeout=300) as client:
        n = 0
        while not stop.is_set():
            n += 1
            body = {"prompt": f"secret prompt of {name}", "width": 64, "height": 64, "steps": 6, "seed": n}
            reply = client.post(f"{API}/txt2img", json=body)
            if reply.status_code != 200:
                errors.append(f"{name}: txt2img {reply.status_code} {reply.text[:120]}")
                stop.wait(0.5)


def _check(reply: object, name: str, admin: bool) -> str | None:
    """What is wrong with one queue reply, or None."""
    if reply.status_code != 200:  # type: ignore[attr-defined]
        return f"{name}: {reply.status_code}"  # type: ignore[attr-defined]
    body = reply.json()  # type: ignore[attr-defined]
    if not {"running", "pending", "total_pending"} <= set(body):
        return f"{name}: reply lacks running/pending/total_pending: {sorted(body)}"
    for entry in body["running"] + body["pending"]:
        if not admin and entry.get("owner") != name and entry.get("prompt") is not None:
            return f"{name} saw {entry.get('owner')}'s prompt"
    return None


def _poll(url: str, accounts: dict[str, tuple[str, str]], seconds: float) -> tuple[list[float], int, list[str]]:
    """Latencies (ms) of polls made while a job ran, how many polls in all, and problems."""
    import httpx

    clients = {name: httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
               for name, (_password, token) in accounts.items()}
    latencies, problems, polls = [], [], 0
    deadline, names = time.monotonic() + seconds, list(clients)
    try:
        while time.monotonic() < deadline:
            name = names[polls % len(names)]
            started = time.perf_counter()
            reply = clients[name].get(f"{API}/queue")
            elapsed = (time.perf_counter() - started) * 1000
            polls += 1
            if (problem := _check(reply, name, admin=name == "boss")) is not None:
                problems.append(problem)
            elif reply.json()["running"]:
                latencies.append(elapsed)
            time.sleep(0.02)
    finally:
        for client in clients.values():
            client.close()
    return latencies, polls, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--users", type=int, default=3)
    parser.add_argument("--clients-per-user", type=int, default=2)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from modules.devtools.tiny_model import TinyArch, write_tiny_model
    from tests.server_process import start_server, stop_server

    with tempfile.TemporaryDirectory() as tmp:
        # 1. A tiny model, the accounts, and the server.
        models, data = Path(tmp) / "models", Path(tmp) / "data"
        write_tiny_model(TinyArch.SD15, models / "tiny.safetensors", seed=0)
        data.mkdir()
        accounts = _accounts(data, args.users)
        proc, server = start_server(data, models, "--api", "--ckpt", "tiny.safetensors", ready_path=None)
        stop, errors = threading.Event(), []
        try:
            # 2. Every user's clients keep the queue busy while the poller measures.
            submitters = [threading.Thread(target=_submitter, args=(server.url, name, accounts[name][0], stop, errors),
                                           daemon=True)
                          for name in accounts if name != "boss" for _ in range(args.clients_per_user)]
            for thread in submitters:
                thread.start()
            time.sleep(3.0)  # the model loads; the first jobs start
            latencies, polls, problems = _poll(server.url, accounts, args.seconds)
        finally:
            stop.set()
            stop_server(proc)
    # 3. The figures, and the verdict.
    problems += errors
    if not latencies:
        print(f"no poll saw a running job ({polls} polls); problems: {problems[:5]}")
        return 1
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))]
    print(f"queue route while jobs ran: n={len(ordered)} of {polls} polls, median {statistics.median(ordered):.1f} ms, "
          f"p95 {p95:.1f} ms, max {ordered[-1]:.1f} ms (goal: p95 under {GOAL_P95_MS:.0f} ms)")
    if problems:
        print("problems:", *problems[:10], sep="\n  ")
    print(f"queue_route_p95_ms {p95:.1f}")
    return 0 if p95 < GOAL_P95_MS and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
