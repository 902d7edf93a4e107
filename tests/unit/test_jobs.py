"""The job queue with a fake executor: order, errors to the caller, interrupt, skip, limits."""

from __future__ import annotations

import threading
import time

import pytest

from modules.errors import ModelLoadError, QueueFullError
from modules.params import GenerationRequest
from modules.services.job_types import JobContext, JobStatus
from modules.services.jobs import JobQueue
from modules.services.queue_contract import on_worker, running_on_worker


class FakeExecutor:
    """Runs 'steps' of 10 ms, honouring stop flags, and records what ran in which order."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, spec: GenerationRequest, ctx: JobContext) -> dict:
        self.gate.wait()
        if spec.prompt == "boom":
            raise ModelLoadError("model.safetensors", "exploded")
        done = []
        for batch in range(spec.batch_count):
            ctx.begin_batch(batch, spec.batch_count, spec.steps)
            for step in range(1, spec.steps + 1):
                if ctx.interrupted:
                    return {"batches": done, "interrupted": True}
                if ctx.skipped:
                    break
                time.sleep(0.01)
                ctx.on_step(step, spec.steps, None, lambda latents: None)
            else:
                done.append(batch)
        self.ran.append(spec.prompt)
        return {"batches": done, "interrupted": False}


@pytest.fixture
def setup():
    executor = FakeExecutor()
    q = JobQueue(executor, limit=3)
    q.start()
    yield q, executor
    q.stop(5)


def test_jobs_run_in_order_and_results_reach_callers(setup) -> None:
    q, ex = setup
    jobs = [q.submit(GenerationRequest(prompt=p, steps=2)) for p in ("a", "b", "c")]
    assert [j.future.result(5)["batches"] for j in jobs] == [[0], [0], [0]]
    assert ex.ran == ["a", "b", "c"]
    assert all(j.status is JobStatus.FINISHED for j in jobs)


def test_errors_reach_the_caller_and_the_worker_survives(setup) -> None:
    q, _ = setup
    bad = q.submit(GenerationRequest(prompt="boom"))
    good = q.submit(GenerationRequest(prompt="fine", steps=1))
    with pytest.raises(ModelLoadError, match="exploded"):
        bad.future.result(5)
    assert good.future.result(5)["batches"] == [0]
    assert bad.status is JobStatus.FAILED


def test_queue_is_bounded(setup) -> None:
    q, ex = setup
    ex.gate.clear()
    running = q.submit(GenerationRequest(prompt="r"))
    while q.current() is None:
        time.sleep(0.005)
    waiting = [q.submit(GenerationRequest(prompt=str(i))) for i in range(3)]
    assert [q.position(j) for j in waiting] == [1, 2, 3]
    with pytest.raises(QueueFullError, match="full"):
        q.submit(GenerationRequest(prompt="one too many"))
    ex.gate.set()
    for job in (running, *waiting):
        job.future.result(5)


def test_interrupt_stops_the_running_job_and_a_waiting_one_ends_unrun(setup) -> None:
    q, ex = setup
    long = q.submit(GenerationRequest(prompt="long", steps=500))
    waiting = q.submit(GenerationRequest(prompt="waiting", steps=500))
    while q.snapshot(long).step < 3:
        time.sleep(0.005)
    assert q.interrupt(waiting.id) and q.interrupt()  # the waiting one by id, the running one by default
    assert long.future.result(5)["interrupted"]
    assert waiting.future.result(5)["interrupted"]
    assert "long" not in ex.ran and "waiting" not in ex.ran
    after = q.submit(GenerationRequest(prompt="after", steps=1))
    assert after.future.result(5)["batches"] == [0]


def test_skip_ends_only_the_current_batch(setup) -> None:
    q, _ = setup
    job = q.submit(GenerationRequest(prompt="s", steps=100, batch_count=2))
    while q.snapshot(job).step < 2:
        time.sleep(0.005)
    assert q.skip(job.id)
    assert job.future.result(5)["batches"] == [1]


def test_progress_fraction_and_eta() -> None:
    ctx = JobContext()
    ctx.mark_started()
    ctx.begin_batch(1, 2, 10)
    ctx.on_step(5, 10, None, lambda latents: None)
    snap = ctx.snapshot("id", JobStatus.RUNNING, 0)
    assert snap.fraction == pytest.approx(0.75)
    assert snap.eta_seconds is not None and snap.eta_seconds >= 0


def test_jobs_and_their_callbacks_know_they_run_on_the_worker() -> None:
    """What ``host.generate`` refusal reads: set on the worker (a context variable), never elsewhere."""
    seen: list[bool] = []
    gate = threading.Event()

    def executor(_spec: object, _context: JobContext) -> bool:
        gate.wait(5)  # until the callback below is in place, so that it runs on the worker
        return running_on_worker()

    q = JobQueue(executor, limit=1)
    q.start()
    try:
        job = q.submit(GenerationRequest(prompt="w"))
        job.future.add_done_callback(lambda _f: seen.append(running_on_worker()))
        gate.set()
        assert job.future.result(5) is True
    finally:
        q.stop(5)
    assert seen == [True] and not running_on_worker()
    with on_worker():
        assert running_on_worker()
    assert not running_on_worker()
