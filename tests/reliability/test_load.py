"""Category 5, load: 16 API clients, signed in as 4 users with limits, keep submitting small jobs
against a queue of 8 for a while.

Every accepted job (200) must come back with its own seed and, when asked, a saved file; every
refused one must be a 503 with Retry-After (the queue is full), a 429 with Retry-After (the user's
jobs per hour) or a 403 naming the limit it broke (steps over the user's maximum, refused before any
work: no file); nothing may be lost or time out. Meanwhile a 17th client, an admin, polls progress,
options and the queue, which must stay quick (p95 under 200 ms), and the server's memory must stay flat.

``ATELIER_SOAK_SECONDS`` sets the soak's length: 10 s by default (CI), 600 s for a long run.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.reliability.support import API, output_pngs, rss_bytes, wait_for_model
from tests.server_process import Server, start_server, stop_server

CATEGORY = "5 load"
CLIENTS = 16
QUEUE_LIMIT = 8
SOAK_SECONDS = float(os.environ.get("ATELIER_SOAK_SECONDS", "10"))
POLL_P95_MS = 200.0
RSS_GROWTH_LIMIT = 300 * 1024 * 1024
SAVED_NAME = re.compile(r"\d{5}-(\d+)\.png")
USERS = ("ann", "ben", "cat", "dan")  # client k signs in as USERS[k % 4]
ADMIN = ("boss", "boss-password")
MAX_STEPS = 4  # every user's limit; one request in five asks for more
RATE_LIMITED = "dan"  # and this one may start JOBS_PER_HOUR jobs an hour
JOBS_PER_HOUR = 12


def _password(user: str) -> str:
    return f"{user}-password"


def _make_accounts(data) -> None:
    from modules.identity import Role, UserLimits
    from modules.services.accounts import AccountStore
    from modules.services.studio_db import db_path, open_studio_db

    db = open_studio_db(db_path(data))
    store = AccountStore(db)
    store.add(*ADMIN, Role.ADMIN)
    for user in USERS:
        store.add(user, _password(user), Role.USER,
                  UserLimits(max_steps=MAX_STEPS, jobs_per_hour=JOBS_PER_HOUR if user == RATE_LIMITED else None))
    db.close()


@dataclass(frozen=True)
class Running:
    proc: object
    server: Server


@pytest.fixture(scope="module")
def running(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data = tmp_path_factory.mktemp("load-data")
    (data / "config.yaml").write_text(f"queue_limit: {QUEUE_LIMIT}\n")
    _make_accounts(data)
    proc, srv = start_server(data, tiny_models.folder, "--api", "--ckpt", "tiny-sd15.safetensors",
                             ready_path=f"{API}/options")
    yield Running(proc, srv)
    stop_server(proc)  # type: ignore[arg-type]


@dataclass
class Outcome:
    """What one client saw; each client thread owns its own, so no lock is needed."""

    accepted: list[tuple[int, bool]] = field(default_factory=list)  # (seed, save_images)
    refused: int = 0  # 503: the queue is full
    limited: int = 0  # 403/429: the user's limits, refused before any work
    problems: list[str] = field(default_factory=list)  # anything but a good 200 or a proper 503


def client_loop(url: str, client_no: int, deadline: float, outcome: Outcome) -> None:
    rng = random.Random(client_no)
    user = USERS[client_no % len(USERS)]
    with httpx.Client(base_url=url, timeout=300, auth=(user, _password(user))) as client:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            seed, save = client_no * 1_000_000 + n, n % 2 == 0  # distinct seeds; half the jobs saved
            over = n % 5 == 0  # steps over the user's limit: refused, never run
            body = {"prompt": f"soak {client_no}", "width": 64, "height": 64, "steps": MAX_STEPS + 2 if over else 2,
                    "batch_size": 1, "n_iter": 1, "seed": seed, "save_images": save}
            try:
                reply = client.post(f"{API}/txt2img", json=body)
            except httpx.HTTPError as exc:
                outcome.problems.append(f"seed {seed}: {type(exc).__name__}: {exc}")
                continue
            if (problem := _limit_problem(reply, user, over)) is not None:
                outcome.problems.append(f"seed {seed}: {problem}")
            if reply.status_code in (403, 429):
                outcome.limited += 1
                time.sleep(rng.uniform(0.1, 0.4))
                continue
            if reply.status_code == 503:
                if reply.headers.get("retry-after") is None or reply.json().get("error") != "QueueFullError":
                    outcome.problems.append(f"seed {seed}: 503 without Retry-After or QueueFullError: {reply.text}")
                outcome.refused += 1
                time.sleep(rng.uniform(0.1, 0.4))  # back off a little, as a client honouring Retry-After would
                continue
            if reply.status_code != 200:
                outcome.problems.append(f"seed {seed}: {reply.status_code} {reply.text[:200]}")
                continue
            info = json.loads(reply.json()["info"])
            if info["all_seeds"] != [seed] or len(reply.json()["images"]) != 1:
                outcome.problems.append(f"seed {seed}: came back as {info['all_seeds']}")
            outcome.accepted.append((seed, save))


def _limit_problem(reply: httpx.Response, user: str, over: bool) -> str | None:
    """What is wrong with a reply about the user's limits: a job over them must be a 403 naming
    max_steps; a 429 only for the rate-limited user, with Retry-After, naming jobs_per_hour."""
    if over:
        if reply.status_code != 403 or reply.json().get("limit") != "max_steps":
            return f"steps over the limit answered {reply.status_code} {reply.text[:200]}"
        return None
    if reply.status_code == 429:
        if user != RATE_LIMITED or reply.json().get("limit") != "jobs_per_hour" or not reply.headers.get("retry-after"):
            return f"429 for {user}: {reply.text[:200]} (Retry-After {reply.headers.get('retry-after')})"
    elif reply.status_code == 403:
        return f"403 within the limits: {reply.text[:200]}"
    return None


def poll_loop(url: str, stop: threading.Event, latencies: list[float], problems: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=30, auth=ADMIN) as client:
        routes = (f"{API}/progress", f"{API}/options", f"{API}/queue")
        i = 0
        while not stop.is_set():
            route = routes[i % len(routes)]
            i += 1
            started = time.perf_counter()
            try:
                reply = client.get(route)
            except httpx.HTTPError as exc:
                problems.append(f"{route}: {type(exc).__name__}")
                continue
            latencies.append(time.perf_counter() - started)
            if reply.status_code != 200:
                problems.append(f"{route}: {reply.status_code}")
            stop.wait(0.05)


def run_clients(url: str, seconds: float, workers: int) -> list[Outcome]:
    deadline = time.monotonic() + seconds
    outcomes = [Outcome() for _ in range(workers)]
    threads = [threading.Thread(target=client_loop, args=(url, i + 1, deadline, outcomes[i]), daemon=True)
               for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 300)
        assert not thread.is_alive(), "a client never got its answer"
    return outcomes


def wait_idle(client: httpx.Client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while client.get(f"{API}/progress").json()["state"]["job_count"] and time.monotonic() < deadline:
        time.sleep(0.1)


def test_sixteen_clients_against_a_queue_of_eight(running: Running,
                                                   reliability_note: Callable[[str, str], None]) -> None:
    url, pid = running.server.url, running.proc.pid  # type: ignore[attr-defined]
    with httpx.Client(base_url=url, timeout=120, auth=ADMIN) as client:
        wait_for_model(client)
        # 1. Warm-up: a short burst, so that the first jobs' one-off allocations are not counted as growth.
        warm_up = run_clients(url, min(5.0, SOAK_SECONDS / 4), CLIENTS)
        wait_idle(client)
        rss_before = rss_bytes(pid)
        files_before = output_pngs(running.server.data_dir)
        # 2. The soak, with the 17th client polling throughout.
        stop, latencies, poll_problems = threading.Event(), [], []
        poller = threading.Thread(target=poll_loop, args=(url, stop, latencies, poll_problems), daemon=True)
        poller.start()
        started = time.monotonic()
        outcomes = run_clients(url, SOAK_SECONDS, CLIENTS)
        stop.set()
        poller.join(30)
        elapsed = time.monotonic() - started
        wait_idle(client)
        rss_after = rss_bytes(pid)
        still_serving = client.post(f"{API}/txt2img", json={"width": 64, "height": 64, "steps": 2, "seed": 1})
    # 3. The books must balance.
    accepted = [a for o in outcomes for a in o.accepted]
    refused = sum(o.refused for o in outcomes)
    limited = sum(o.limited for o in outcomes)
    problems = [p for o in warm_up + outcomes for p in o.problems] + poll_problems
    new_files = sorted(set(output_pngs(running.server.data_dir)) - set(files_before))
    saved_seeds = sorted(int(m.group(1)) for p in new_files if (m := SAVED_NAME.fullmatch(p.name)))
    latencies_ms = sorted(x * 1000 for x in latencies)
    p95 = latencies_ms[int(0.95 * (len(latencies_ms) - 1))] if latencies_ms else float("nan")
    growth = rss_after - rss_before
    reliability_note(CATEGORY, f"{elapsed:.0f} s soak, {CLIENTS} clients as {len(USERS)} users with limits, queue "
                               f"{QUEUE_LIMIT}: {len(accepted) + refused + limited} requests, {len(accepted)} accepted, "
                               f"{refused} refused (503), {limited} refused by a user's limits (403/429), "
                               f"{len(problems)} lost or wrong; progress/options/queue p95 {p95:.0f} ms, median "
                               f"{statistics.median(latencies_ms) if latencies_ms else float('nan'):.0f} ms "
                               f"(n={len(latencies_ms)}); RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB")
    assert not problems, problems[:10]
    assert accepted and refused, "the queue limit was never reached: the test proved nothing"
    assert limited, "no request met a user's limits: the test proved nothing"
    assert len({seed for seed, _save in accepted}) == len(accepted)
    assert saved_seeds == sorted(seed for seed, save in accepted if save), "a saved job has no file, or a file no job"
    assert still_serving.status_code == 200
    assert p95 < POLL_P95_MS, f"progress/options p95 {p95:.0f} ms"
    assert growth < RSS_GROWTH_LIMIT, f"RSS grew {growth / 2**20:.0f} MB"
