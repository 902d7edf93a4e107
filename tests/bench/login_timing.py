"""Benchmark: a failed HTTP Basic login takes as long for an unknown user as for a wrong password.

Starts a real server (``app.py --api --nowebui``) over a database of accounts, then sends failed
logins to ``/sdapi/v1/samplers``, alternating an unknown name and a known name with a wrong
password. Each attempt names another account and comes from another (forwarded) address, so the
failed-login limiter never answers 429 instead of the password check. Run on demand, never in CI's
test pass:

    venv/bin/python tests/bench/login_timing.py [--attempts 40]

Prints the median and p90 of both kinds; exits 1 when the medians differ by more than the
tolerance: 10% of the larger median or 5 ms, whichever is larger.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE_FRACTION = 0.10
TOLERANCE_S = 0.005
ADMIN_PASSWORD = "bench-admin-password"


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]


def _make_accounts(data: Path, count: int) -> None:
    from modules.identity import Role
    from modules.services.accounts import AccountStore
    from modules.services.studio_db import db_path, open_studio_db

    db = open_studio_db(db_path(data))
    try:
        store = AccountStore(db)
        for i in range(count):
            store.add(f"member{i}", f"right-password-{i}", Role.USER)
        store.add("bench-admin", ADMIN_PASSWORD, Role.ADMIN)
    finally:
        db.close()


def _measure(url: str, attempts: int) -> dict[str, list[float]]:
    import httpx

    times: dict[str, list[float]] = {"unknown user": [], "wrong password": []}
    with httpx.Client(base_url=url, timeout=120) as client:
        # The engine is built once the server listens (seconds of imports holding the GIL): wait for it.
        client.get("/sdapi/v1/options", auth=("bench-admin", ADMIN_PASSWORD)).raise_for_status()
        for i in range(attempts + 1):  # the first pair is a warm-up; the order alternates
            pair = [("unknown user", f"stranger{i}"), ("wrong password", f"member{i}")]
            for kind, name in pair if i % 2 else pair[::-1]:
                address = f"10.{1 if kind == 'unknown user' else 2}.{i // 250}.{i % 250 + 1}"
                started = time.perf_counter()
                response = client.get("/sdapi/v1/samplers", auth=(name, f"wrong-{i}"),
                                      headers={"X-Forwarded-For": address})
                elapsed = time.perf_counter() - started
                if response.status_code != 401:
                    raise SystemExit(f"expected 401 for {kind}, got {response.status_code}: {response.text[:200]}")
                if i:
                    times[kind].append(elapsed)
    return times


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from tests.server_process import start_server, stop_server

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=40, help="failed logins of each kind (default 40)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, models = Path(tmp) / "data", Path(tmp) / "models"
        data.mkdir()
        models.mkdir()
        _make_accounts(data, args.attempts + 1)
        proc, server = start_server(data, models, "--api", "--nowebui", "--forwarded-allow-ips", "127.0.0.1",
                                    ready_path="/sdapi/v1/samplers")
        try:
            times = _measure(server.url, args.attempts)
        finally:
            stop_server(proc)
    medians = {kind: statistics.median(values) for kind, values in times.items()}
    for kind, values in times.items():
        print(f"{kind:15} median {medians[kind] * 1000:7.1f} ms   p90 {_p90(values) * 1000:7.1f} ms   "
              f"({len(values)} failed logins)")
    difference = abs(medians["unknown user"] - medians["wrong password"])
    tolerance = max(TOLERANCE_FRACTION * max(medians.values()), TOLERANCE_S)
    print(f"median difference {difference * 1000:.1f} ms (tolerance {tolerance * 1000:.1f} ms)")
    return 0 if difference <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
