"""One contract, two queues: the in-process worker and Ray workers pass the same tests.

The executor is the fake engine (steps that sleep, honouring interrupt and skip), run in this
process by the local queue and inside two worker actors on fake GPUs by the Ray queue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from modules.devtools.fake_worker import HANG_ONCE, FakeEngine, FakeEngineConfig, FakeHooks
from modules.errors import ModelLoadError, QueueFullError, StoreError
from modules.params import GenerationRequest
from modules.services.job_types import Job, JobEnd, JobStatus
from modules.services.jobs import JobQueue
from modules.services.queue_contract import JobQueueContract, QueueMode, RecoveredJob, WorkerState

STEP = 0.01
LONG = 3000  # steps: half a minute, always interrupted long before


@dataclass(frozen=True)
class Backend:
    mode: QueueMode
    namespace: str | None = None


@pytest.fixture(scope="module", params=[QueueMode.LOCAL, QueueMode.RAY], ids=["local", "ray"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param is QueueMode.LOCAL:
        yield Backend(QueueMode.LOCAL)
        return
    spawn = request.getfixturevalue("spawn_workers")
    namespace, _handles = spawn(FakeEngineConfig(step_seconds=STEP))
    yield Backend(QueueMode.RAY, namespace)


@pytest.fixture
def make_queue(backend: Backend) -> Iterator[Callable[..., JobQueueContract]]:
    made: list[JobQueueContract] = []

    def make(limit: int = 3, shared: bool = True, journal: FakeJournal | None = None,
             recovered: tuple[RecoveredJob, ...] = (), admins: Callable[[str], bool] | None = None,
             before_start: Callable[[JobQueueContract], None] | None = None) -> JobQueueContract:
        queue: JobQueueContract
        if backend.mode is QueueMode.LOCAL:
            queue = JobQueue(FakeEngine(FakeEngineConfig(step_seconds=STEP)).run, limit, shared=shared)
        else:
            from modules.services.scaleout.ray_queue import RayJobQueue
            from modules.services.scaleout.slots import DispatchSettings

            settings = DispatchSettings(namespace=backend.namespace or "", discover_seconds=0.2, poll_seconds=0.05)
            queue = RayJobQueue(FakeHooks(), limit, shared=shared, settings=settings)
        if journal is not None or admins is not None:
            queue.set_journal(journal, admins=admins)
        queue.recover(recovered)
        if before_start is not None:
            before_start(queue)
        queue.start()
        made.append(queue)
        wait_until(lambda: queue.workers() and all(w.state is WorkerState.IDLE for w in queue.workers()))
        return queue

    yield make
    for queue in made:
        queue.stop(10)


class FakeJournal:
    """Records what a queue writes down; ``refuse``: accepted() fails as a broken store's does."""

    def __init__(self, last: int = 0, refuse: bool = False) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.queue: JobQueueContract | None = None
        self.last, self.refuse = last, refuse

    def accepted(self, job: Job) -> None:
        if self.refuse:
            raise StoreError("The job store could not record the job.")
        in_line = self.queue is not None and any(j.id == job.id for j in self.queue.all_waiting())
        self.calls.append(("accepted", (job.id, job.spec.job_id, in_line)))

    def started(self, job: Job) -> None:
        self.calls.append(("started", job.id))

    def ended(self, job: Job, end: JobEnd, error: str | None) -> None:
        self.calls.append(("ended", (job.id, end, error)))

    def pinned(self, order: tuple[str, ...]) -> None:
        self.calls.append(("pinned", order))

    def last_seq(self) -> int:
        return self.last

    def of(self, kind: str) -> list[Any]:
        return [value for k, value in self.calls if k == kind]

    def ends(self) -> dict[str, JobEnd]:
        return {job_id: end for job_id, end, _error in self.of("ended")}


def wait_until(condition: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def fill_workers(queue: JobQueueContract, prompt: str = "long", owner: str | None = None) -> list[Job]:
    """One long job per worker, each running once this returns."""
    jobs = [queue.submit(GenerationRequest(prompt=f"{prompt}{i}", steps=LONG), owner=owner)
            for i in range(len(queue.workers()))]
    wait_until(lambda: all(queue.snapshot(job).step >= 2 for job in jobs))
    return jobs


def test_results_reach_their_callers(make_queue) -> None:
    queue = make_queue()
    jobs = [queue.submit(GenerationRequest(prompt=p, steps=2, seed=7)) for p in ("a", "b", "c")]
    results = [job.future.result(30) for job in jobs]
    assert [r["prompt"] for r in results] == ["a", "b", "c"]
    assert all(r["batches"] == [0] and r["seeds"] == [7] for r in results)
    assert all(job.status is JobStatus.FINISHED for job in jobs)
    assert queue.pending_count() == 0 and queue.current() is None


def test_errors_reach_the_caller_and_the_worker_survives(make_queue) -> None:
    queue = make_queue()
    bad = queue.submit(GenerationRequest(prompt="boom"))
    with pytest.raises(ModelLoadError, match="exploded"):
        bad.future.result(30)
    assert bad.status is JobStatus.FAILED
    assert queue.submit(GenerationRequest(prompt="fine", steps=1)).future.result(30)["batches"] == [0]


def test_the_queue_is_bounded(make_queue) -> None:
    queue = make_queue(limit=3)
    running = fill_workers(queue)
    waiting = [queue.submit(GenerationRequest(prompt=str(i), steps=1)) for i in range(3)]
    assert [queue.position(job) for job in waiting] == [1, 2, 3]
    assert all(queue.position(job) == 0 for job in running)
    with pytest.raises(QueueFullError, match="full"):
        queue.submit(GenerationRequest(prompt="one too many"))
    for job in running:
        queue.interrupt(job.id)
    assert all(job.future.result(30)["batches"] == [0] for job in waiting)


def test_interrupt_stops_only_its_job_and_a_waiting_job_ends_unrun(make_queue) -> None:
    queue = make_queue()
    running = fill_workers(queue)
    waiting = queue.submit(GenerationRequest(prompt="waiting", steps=LONG))
    assert queue.interrupt(waiting.id) and queue.interrupt(running[0].id)
    assert running[0].future.result(30)["interrupted"]
    assert waiting.future.result(30) == {"prompt": "waiting", "batches": [], "interrupted": True}
    for other in running[1:]:  # the other workers' jobs go on
        assert not other.future.done() and not other.context.interrupted
        before = queue.snapshot(other).step
        wait_until(lambda: queue.snapshot(other).step > before)
        queue.interrupt(other.id)
        assert other.future.result(30)["interrupted"]
    assert queue.submit(GenerationRequest(prompt="after", steps=1)).future.result(30)["batches"] == [0]


def test_skip_ends_only_the_current_batch(make_queue) -> None:
    queue = make_queue()
    job = queue.submit(GenerationRequest(prompt="s", steps=300, batch_count=2))
    wait_until(lambda: queue.snapshot(job).step >= 2)
    assert queue.skip(job.id)
    assert job.future.result(30)["batches"] == [1]


def test_progress_of_a_running_job(make_queue) -> None:
    queue = make_queue()
    job = queue.submit(GenerationRequest(prompt="p", steps=LONG, batch_count=2))
    wait_until(lambda: queue.snapshot(job).step >= 3)
    snap = queue.snapshot(job)
    assert snap.status is JobStatus.RUNNING and snap.queue_position == 0
    assert snap.total_steps == LONG and snap.batch_count == 2 and 0 < snap.fraction < 0.5
    assert queue.current() is job and job in queue.running()
    assert queue.interrupt()  # no id: the running job this caller sees
    assert job.future.result(30)["interrupted"]


def test_each_user_sees_and_stops_only_their_jobs(make_queue) -> None:
    queue = make_queue(shared=False)
    job = queue.submit(GenerationRequest(prompt="alice's", steps=LONG), owner="alice")
    wait_until(lambda: queue.snapshot(job).step >= 1)
    assert queue.visible_current("bob") is None and queue.visible_current("alice") is job
    assert not queue.interrupt(user="bob") and not queue.interrupt(job.id, user="bob")
    assert not queue.skip(job.id, user="bob")
    assert queue.interrupt(user="alice")
    assert job.future.result(30)["interrupted"]


def test_workers_report_their_state(make_queue) -> None:
    queue = make_queue()
    before = {w.name: w.jobs_done for w in queue.workers()}
    job = queue.submit(GenerationRequest(prompt="w", steps=LONG))
    wait_until(lambda: any(w.job_id == job.id for w in queue.workers()))
    busy = next(w for w in queue.workers() if w.job_id == job.id)
    assert busy.state is WorkerState.BUSY and busy.host and busy.device
    queue.interrupt(job.id)
    job.future.result(30)
    wait_until(lambda: all(w.state is WorkerState.IDLE for w in queue.workers()))
    after = {w.name: w.jobs_done for w in queue.workers()}
    assert after[busy.name] == before[busy.name] + 1
    assert busy.as_dict()["busy"] is True


def test_stop_interrupts_running_jobs(make_queue) -> None:
    queue = make_queue()
    running = fill_workers(queue)
    queue.stop(10)
    assert all(job.future.result(10)["interrupted"] for job in running)


def test_one_job_of_a_second_user_does_not_wait_behind_the_first_users_line(make_queue) -> None:
    """Round-robin by user: alice runs and has three more waiting; bob's one job is next, then
    carol's (whose first job is older than alice's next), and they take turns."""
    journal = FakeJournal()
    queue = make_queue(limit=6, shared=False, journal=journal)
    running = fill_workers(queue, owner="alice")
    alices = [queue.submit(GenerationRequest(prompt=f"alice {i}", steps=1), owner="alice") for i in range(3)]
    bobs = queue.submit(GenerationRequest(prompt="bob", steps=1), owner="bob")
    carols = [queue.submit(GenerationRequest(prompt=f"carol {i}", steps=1), owner="carol") for i in range(2)]
    expected = (bobs, carols[0], alices[0], carols[1], alices[1], alices[2])
    assert queue.all_waiting() == expected
    assert queue.position(bobs) == 1 and queue.waiting("bob") == (bobs,)
    assert all(queue.interrupt(job.id, user="alice") for job in running)
    assert all(job.future.result(30)["batches"] == [0] for job in expected)
    started = [job_id for job_id in journal.of("started") if job_id not in {job.id for job in running}]
    assert bobs.id in started[:len(queue.workers())]
    if len(queue.workers()) == 1:
        assert started == [job.id for job in expected]


def test_an_admin_moves_a_waiting_job_to_the_head_of_the_line(make_queue) -> None:
    journal = FakeJournal()
    queue = make_queue(limit=4, journal=journal)
    running = fill_workers(queue)
    a, b, c = (queue.submit(GenerationRequest(prompt=p, steps=1)) for p in "abc")
    assert queue.move(c.id, 1) and queue.all_waiting() == (c, a, b) and queue.pinned_ids() == (c.id,)
    assert queue.move(b.id, 2) and queue.all_waiting() == (c, b, a) and queue.pinned_ids() == (c.id, b.id)
    assert journal.of("pinned") == [(c.id,), (c.id, b.id)] and queue.position(b) == 2
    assert not queue.move(running[0].id, 1) and not queue.move("no-such-job", 1)
    d = queue.submit(GenerationRequest(prompt="d", steps=1))
    assert queue.all_waiting() == (c, b, a, d)  # new jobs line up behind the pinned ones
    for job in running:
        queue.interrupt(job.id)
    assert all(job.future.result(30)["batches"] == [0] for job in (a, b, c, d))
    started = [job_id for job_id in journal.of("started") if job_id in {a.id, b.id, c.id, d.id}]
    assert set(started[:2]) == {c.id, b.id} and queue.pinned_ids() == ()


def test_the_journal_hears_of_each_job_from_acceptance_to_its_end(make_queue) -> None:
    journal = FakeJournal(last=41)
    queue = make_queue(limit=4, journal=journal)
    journal.queue = queue
    running = fill_workers(queue)
    cancelled = queue.submit(GenerationRequest(prompt="cancel me", steps=1))
    bad = queue.submit(GenerationRequest(prompt="boom"))
    good = queue.submit(GenerationRequest(prompt="fine", steps=1))
    assert running[0].id.startswith("42-")  # ids go on after the journal's last one
    assert queue.cancel(cancelled.id, None)
    for job in running:
        queue.interrupt(job.id)
    assert good.future.result(30)["batches"] == [0]
    everyone = (*running, cancelled, bad, good)
    wait_until(lambda: len(journal.ends()) == len(everyone))
    # Written down before it joined the line, with its id in its request.
    assert journal.of("accepted") == [(job.id, job.id, False) for job in everyone]
    assert journal.ends() == {**{job.id: JobEnd.INTERRUPTED for job in running}, cancelled.id: JobEnd.CANCELLED,
                              bad.id: JobEnd.FAILED, good.id: JobEnd.FINISHED}
    assert "exploded" in next(error for job_id, _end, error in journal.of("ended") if job_id == bad.id)
    assert cancelled.id not in journal.of("started") and {bad.id, good.id} <= set(journal.of("started"))


def test_a_job_the_journal_cannot_write_down_is_not_accepted(make_queue) -> None:
    journal = FakeJournal(refuse=True)
    queue = make_queue(limit=1, journal=journal)
    with pytest.raises(StoreError, match="could not record"):
        queue.submit(GenerationRequest(prompt="lost", steps=1))
    assert queue.pending_count() == 0 and queue.all_waiting() == () and queue.current() is None
    journal.refuse = False  # the refused job took no place in line: the one place is free
    assert queue.submit(GenerationRequest(prompt="kept", steps=1)).future.result(30)["batches"] == [0]


def test_recovered_jobs_run_first_and_how_they_end_is_written_down(make_queue) -> None:
    journal = FakeJournal(last=9)
    now = time.time()
    recovered = (RecoveredJob("9-aaaaaaaa", GenerationRequest(prompt="was running", steps=1), "bob", now - 60),
                 RecoveredJob("3-bbbbbbbb", GenerationRequest(prompt="waited", steps=1), "alice", now - 90))
    before: dict[str, Any] = {}

    def submit_before_start(queue: JobQueueContract) -> None:
        before["new"] = queue.submit(GenerationRequest(prompt="new", steps=1), owner="carol")
        before["order"] = [job.id for job in queue.all_waiting()]

    queue = make_queue(journal=journal, recovered=recovered, before_start=submit_before_start)
    new = before["new"]
    assert before["order"] == ["9-aaaaaaaa", "3-bbbbbbbb", new.id] and new.id.startswith("10-")
    wait_until(lambda: len(journal.ends()) == 3)
    assert journal.ends() == {"9-aaaaaaaa": JobEnd.FINISHED, "3-bbbbbbbb": JobEnd.FINISHED, new.id: JobEnd.FINISHED}
    assert journal.of("accepted") == [(new.id, new.id, False)]  # the recovered ones are written down already
    assert "9-aaaaaaaa" in journal.of("started")[:len(queue.workers())]
    first = queue.get("9-aaaaaaaa")
    assert first is not None and first.owner == "bob" and first.spec.job_id == first.id
    assert first.future.result(1)["batches"] == [0]


def test_an_admin_sees_and_steers_every_users_jobs(make_queue) -> None:
    queue = make_queue(limit=3, shared=False, admins=lambda name: name == "root")
    running = fill_workers(queue, owner="alice")
    waiting = queue.submit(GenerationRequest(prompt="alice's", steps=1), owner="alice")
    assert queue.waiting("root") == (waiting,) and queue.waiting("bob") == ()
    assert queue.visible_current("root") is running[0] and queue.visible_current("bob") is None
    assert not queue.cancel(waiting.id, "bob") and queue.cancel(waiting.id, "root")
    assert all(queue.interrupt(job.id, user="root") for job in running)
    assert all(job.future.result(30)["interrupted"] for job in running)


def test_a_stop_leaves_unfinished_jobs_unfinished_in_the_journal(make_queue) -> None:
    """They run again after the restart, so the stop's own interrupt and cancel are not their end."""
    journal = FakeJournal()
    queue = make_queue(journal=journal)
    running = fill_workers(queue)
    waiting = queue.submit(GenerationRequest(prompt="waiting", steps=1))
    queue.stop(10)
    assert _ended_unrun(waiting.future.result(10)) and all(job.future.result(10)["interrupted"] for job in running)
    assert journal.ends() == {} and len(journal.of("accepted")) == len(running) + 1


def test_a_stuck_worker_is_replaced_and_its_job_runs_elsewhere(backend: Backend, make_queue,
                                                               tmp_path) -> None:
    """The no-progress watchdog (Ray only: in process there is no other worker). Last in the file:
    it costs the module one of its two workers."""
    if backend.mode is QueueMode.LOCAL:
        pytest.skip("one worker in process: nothing to fail over to")
    from dataclasses import replace

    queue = make_queue()
    queue.settings = replace(queue.settings, stall_timeout=1.5)  # type: ignore[attr-defined]
    before = {w.name for w in queue.workers()}
    job = queue.submit(GenerationRequest(prompt=f"{HANG_ONCE}{tmp_path / 'hung'}", steps=5))
    assert job.future.result(60)["batches"] == [0]  # the second attempt, on the other worker
    assert (tmp_path / "hung").exists()
    wait_until(lambda: len(queue.workers()) == len(before) - 1)


def _ended_unrun(result: Any) -> bool:
    """The fake engine's result (a dict) or the front's (a GenerationResult): interrupted, no image made."""
    if isinstance(result, dict):
        return result["interrupted"] and result["batches"] == []
    return result.interrupted and result.images == ()


def test_each_user_lists_and_cancels_only_their_waiting_jobs(make_queue) -> None:
    queue = make_queue(limit=5, shared=False)
    running = fill_workers(queue)
    first = queue.submit(GenerationRequest(prompt="alice 1", steps=1), owner="alice")
    bobs = queue.submit(GenerationRequest(prompt="bob 1", steps=1), owner="bob")
    second = queue.submit(GenerationRequest(prompt="alice 2", steps=1), owner="alice")
    assert queue.waiting("alice") == (first, second) and queue.waiting("bob") == (bobs,)
    assert not queue.cancel(first.id, "bob")  # another user's job
    assert not queue.cancel(running[0].id, None)  # running: Interrupt stops it, cancel does not
    assert not queue.cancel("no-such-job", "alice")
    assert queue.cancel(first.id, "alice")
    assert _ended_unrun(first.future.result(5)) and first.status is JobStatus.FINISHED
    assert queue.waiting("alice") == (second,) and queue.position(second) == 2
    assert not queue.cancel(first.id, "alice")  # already ended
    for job in running:
        queue.interrupt(job.id)
    assert second.future.result(30)["batches"] == [0] and bobs.future.result(30)["batches"] == [0]
