"""The queue and the history as each viewer sees them, over a real queue and studio database with a
fake, steerable executor (no models): users see everyone's place in line but only their own
prompts and ids, another user's job is "not found", admins see and steer everything."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from modules.errors import ForbiddenError, JobNotFoundError
from modules.identity import Identity, Role
from modules.params import GeneratedImage, GenerationRequest, GenerationResult
from modules.services.job_store import JobStore, StoredState
from modules.services.job_types import Job, JobContext, JobSpec
from modules.services.jobs import JobQueue
from modules.services.queue_view import HistoryEntry, QueueEntry, QueueView
from modules.services.studio_db import open_studio_db

ANN, BOB = Identity("ann", Role.USER), Identity("bob", Role.USER)
ADMIN = Identity("root", Role.ADMIN)
API_LOGIN = Identity("scripts", Role.ADMIN)  # an --api-auth login: an admin of the server, no account


def wait_until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


class FakeRenderer:
    """Runs step 1 of a job, then holds it until the test lets one job finish (``release``) or it
    is interrupted; saves one image (and its sidecar) in the outputs folder, in the ledger."""

    def __init__(self, outputs: Path, store: JobStore) -> None:
        self.outputs, self.store = outputs, store
        self.gate = threading.Semaphore(0)

    def release(self, jobs: int = 1) -> None:
        for _ in range(jobs):
            self.gate.release()

    def __call__(self, spec: JobSpec, context: JobContext) -> GenerationResult:
        assert isinstance(spec, GenerationRequest) and spec.job_id
        context.begin_batch(0, 1, spec.steps)
        context.on_step(1, spec.steps, None, lambda latents: None)  # type: ignore[arg-type,return-value]
        while not self.gate.acquire(timeout=0.01):
            if context.interrupted:
                return GenerationResult(request=spec, images=(), interrupted=True)
        context.on_step(spec.steps, spec.steps, None, lambda latents: None)  # type: ignore[arg-type,return-value]
        folder = self.outputs / "txt2img-images"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{spec.job_id}.png"
        path.write_bytes(b"png")
        path.with_suffix(".txt").write_text(spec.prompt)
        self.store.record_file(spec.job_id, "txt2img-images", 0, path, spec.seed)
        image = GeneratedImage(path=path, seed=spec.seed, infotext=f"{spec.prompt}\nSeed: {spec.seed}", index=0)
        return GenerationResult(request=spec, images=(image,))


class FakeGeneration:
    """The generation service's submit, without models: straight into the queue."""

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def submit(self, request: GenerationRequest, owner: str | None = None) -> Job:
        return self.queue.submit(request, owner)


@dataclass
class Studio:
    view: QueueView
    queue: JobQueue
    store: JobStore
    renderer: FakeRenderer
    outputs: Path

    def submit(self, who: Identity, prompt: str, **fields: object) -> Job:
        return self.view.submit(who, GenerationRequest(prompt=prompt, negative_prompt=f"not {prompt}", seed=7,
                                                       width=64, height=64, steps=4, **fields))

    def finish(self, job: Job) -> None:
        """Let the running ``job`` end, and wait until the store has its end."""
        wait_until(lambda: job in self.queue.running())
        self.renderer.release()
        wait_until(lambda: (s := self.store.get(job.id)) is not None and s.state.done)


@pytest.fixture
def studio(tmp_path: Path) -> Iterator[Studio]:
    db = open_studio_db(tmp_path / "atelier.db")
    store = JobStore(db)
    outputs = tmp_path / "outputs"
    renderer = FakeRenderer(outputs, store)
    queue = JobQueue(renderer, limit=20, shared=False)
    queue.set_journal(store, admins=lambda name: name == ADMIN.name)
    queue.start()
    view = QueueView(queue, store, lambda: FakeGeneration(queue), outputs,  # type: ignore[arg-type,return-value]
                     admins=lambda name: name == ADMIN.name)
    yield Studio(view, queue, store, renderer, outputs)
    renderer.release(50)
    queue.stop(timeout=5)
    db.close()


def line(studio: Studio, viewer: Identity | None) -> list[QueueEntry]:
    return list(studio.view.entries(viewer))


def test_each_user_sees_the_whole_line_but_only_their_own_jobs_details(studio: Studio) -> None:
    a1 = studio.submit(ANN, "ann's secret castle")
    wait_until(lambda: a1 in studio.queue.running())
    b1, a2 = studio.submit(BOB, "bob's private lake"), studio.submit(ANN, "ann's second")
    wait_until(lambda: line(studio, ADMIN)[0].eta_seconds is not None)  # step 1 of 4 done: an ETA
    ann, bob, admin = line(studio, ANN), line(studio, BOB), line(studio, ADMIN)
    # The same line for everyone: owners, states, places.
    for seen in (ann, bob, admin):
        assert [(e.owner, e.state, e.position) for e in seen] == [("ann", "running", 0), ("bob", "queued", 1),
                                                                   ("ann", "queued", 2)]
        assert seen[0].progress == pytest.approx(0.25) and seen[0].eta_seconds is not None
    assert [(e.id, e.prompt, e.mine) for e in ann] == [(a1.id, "ann's secret castle", True), (None, None, False),
                                                       (a2.id, "ann's second", True)]
    assert [(e.id, e.prompt, e.mine) for e in bob] == [(None, None, False), (b1.id, "bob's private lake", True),
                                                       (None, None, False)]
    hidden = bob[0]
    assert (hidden.negative_prompt, hidden.width, hidden.steps, hidden.images, hidden.total_steps) == (
        None, None, None, None, 0)
    assert (ann[0].width, ann[0].steps, ann[0].images, ann[0].total_steps) == (64, 4, 1, 4)
    assert [(e.id, e.prompt, e.mine) for e in admin] == [
        (a1.id, "ann's secret castle", False), (b1.id, "bob's private lake", False), (a2.id, "ann's second", False)]
    assert [e.id for e in line(studio, None)] == [a1.id, b1.id, a2.id]  # no sign-in: full access
    assert [e.id for e in line(studio, API_LOGIN)] == [None, None, None]  # not an account's admin
    # By id: one's own job, never another's.
    assert isinstance(studio.view.entry(BOB, b1.id), QueueEntry)
    with pytest.raises(JobNotFoundError):
        studio.view.entry(BOB, a1.id)
    with pytest.raises(JobNotFoundError):
        studio.view.request_of(BOB, a2.id)
    assert studio.view.entry(ADMIN, a2.id).prompt == "ann's second"  # type: ignore[union-attr]


def test_waiting_jobs_get_an_eta_once_a_job_has_finished(studio: Studio) -> None:
    first = studio.submit(ANN, "first")
    studio.finish(first)
    running = studio.submit(ANN, "running")
    wait_until(lambda: running in studio.queue.running())
    studio.submit(BOB, "next")
    studio.submit(ANN, "last")
    etas = [e.eta_seconds for e in line(studio, BOB)]
    assert all(eta is not None for eta in etas) and etas[1] < etas[2]  # type: ignore[operator]


def test_users_cancel_only_their_own_jobs_and_admins_any(studio: Studio) -> None:
    a1 = studio.submit(ANN, "running")
    wait_until(lambda: a1 in studio.queue.running())
    a2, b1 = studio.submit(ANN, "waiting"), studio.submit(BOB, "bob waiting")
    for job in (a1, a2):
        with pytest.raises(JobNotFoundError):
            studio.view.cancel(BOB, job.id)
    with pytest.raises(JobNotFoundError):
        studio.view.cancel(BOB, "999-00000000")
    assert not a1.future.done() and not a2.future.done()
    studio.view.cancel(ANN, a2.id)
    assert a2.future.result(timeout=5).interrupted and a2.future.result().images == ()
    assert [e.position for e in line(studio, BOB)] == [0, 1]
    wait_until(lambda: studio.store.get(a2.id).state is StoredState.CANCELLED)  # type: ignore[union-attr]
    studio.view.cancel(ADMIN, b1.id)  # an admin cancels anyone's waiting job ...
    studio.view.cancel(ADMIN, a1.id)  # ... and interrupts anyone's running one
    assert b1.future.result(timeout=5).interrupted and a1.future.result(timeout=5).interrupted
    wait_until(lambda: studio.store.get(a1.id).state is StoredState.INTERRUPTED)  # type: ignore[union-attr]
    assert line(studio, ADMIN) == []


def test_only_admins_reorder_the_line(studio: Studio) -> None:
    running = studio.submit(ANN, "running")
    wait_until(lambda: running in studio.queue.running())
    waiting = [studio.submit(ANN, "ann 1"), studio.submit(BOB, "bob 1"), studio.submit(ANN, "ann 2")]
    for user in (ANN, API_LOGIN):
        with pytest.raises(ForbiddenError):
            studio.view.move(user, waiting[2].id, 1)
    studio.view.move(ADMIN, waiting[2].id, 1)
    seen = line(studio, ADMIN)
    assert [e.prompt for e in seen] == ["running", "ann 2", "bob 1", "ann 1"]
    assert [e.pinned for e in seen] == [False, True, False, False]
    assert [(e.owner, e.pinned) for e in line(studio, BOB)][1] == ("ann", True)
    with pytest.raises(JobNotFoundError):
        studio.view.move(ADMIN, running.id, 1)  # not waiting


def test_history_shows_a_user_their_own_jobs_and_runs_them_again(studio: Studio) -> None:
    ann_job = studio.submit(ANN, "ann's red fox")
    studio.finish(ann_job)
    bob_job = studio.submit(BOB, "bob's red barn")
    studio.finish(bob_job)
    assert [h.job.id for h in studio.view.history(ANN)[0]] == [ann_job.id]
    assert [h.job.id for h in studio.view.history(BOB, search="red")[0]] == [bob_job.id]
    entries, total = studio.view.history(ADMIN, search="red")
    assert [h.job.id for h in entries] == [bob_job.id, ann_job.id] and total == 2
    assert studio.view.history(ADMIN, limit=1, offset=1)[0][0].job.id == ann_job.id
    mine = studio.view.entry(ANN, ann_job.id)
    assert isinstance(mine, HistoryEntry) and mine.job.infotext == "ann's red fox\nSeed: 7"
    assert [f.path.name for f in mine.job.files] == [f"{ann_job.id}.png"]
    for act in (studio.view.entry, studio.view.request_of, studio.view.run_again, studio.view.delete):
        with pytest.raises(JobNotFoundError):
            act(BOB, ann_job.id)
    request = studio.view.request_of(ANN, ann_job.id)
    assert request.prompt == "ann's red fox" and request.seed == 7 and request.job_id is None
    again = studio.view.run_again(ANN, ann_job.id)
    assert again.id != ann_job.id and again.owner == "ann"
    assert again.spec == ann_job.spec and again.spec.job_id == again.id  # type: ignore[union-attr]
    admin_again = studio.view.run_again(ADMIN, bob_job.id)
    assert admin_again.owner == ADMIN.name


def test_delete_removes_only_files_inside_the_outputs_folder(studio: Studio, tmp_path: Path) -> None:
    job = studio.submit(ANN, "to delete")
    studio.finish(job)
    inside = studio.outputs / "txt2img-images" / f"{job.id}.png"
    outside = tmp_path / "elsewhere" / "keep.png"
    outside.parent.mkdir()
    outside.write_bytes(b"not ours")
    outside.with_suffix(".txt").write_text("keep")
    studio.store.record_file(job.id, "txt2img-grids", -1, outside, None)  # e.g. a hand-edited row
    escape = studio.outputs / "txt2img-images" / ".." / ".." / "elsewhere" / "keep.png"
    studio.store.record_file(job.id, "txt2img-images", 1, escape, None)
    running = studio.submit(ANN, "still running")
    wait_until(lambda: running in studio.queue.running())
    with pytest.raises(JobNotFoundError):
        studio.view.delete(ANN, running.id)
    with pytest.raises(JobNotFoundError):
        studio.view.delete(BOB, job.id)
    assert inside.exists()
    assert studio.view.delete(ANN, job.id) == 1
    assert not inside.exists() and not inside.with_suffix(".txt").exists()
    assert outside.read_bytes() == b"not ours" and outside.with_suffix(".txt").exists()
    assert studio.view.history(ANN) == ((), 0)
    with pytest.raises(JobNotFoundError):
        studio.view.entry(ANN, job.id)
