"""The job store over a real studio database: what the queue writes down survives as the history
and the recovery list say, a damaged row is set aside, and the history finds, pages and deletes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import update

from modules.errors import JobNotFoundError, StoreError
from modules.params import GeneratedImage, GenerationRequest, GenerationResult
from modules.services.job_store import ALL_OWNERS, JobStore, StoredState
from modules.services.job_types import Job, JobContext, JobEnd
from modules.services.studio_db import StudioDb, jobs, open_studio_db


@pytest.fixture
def db(tmp_path: Path) -> Iterator[StudioDb]:
    opened = open_studio_db(tmp_path / "atelier.db")
    yield opened
    opened.close()


@pytest.fixture
def store(db: StudioDb) -> JobStore:
    return JobStore(db)


def make_job(seq: int, owner: str | None = "ann", submitted_at: float | None = None, **fields: object) -> Job:
    job_id = f"{seq}-{seq:08x}"
    request = replace(GenerationRequest(prompt=f"prompt {seq}", seed=seq, **fields), job_id=job_id, owner=owner)
    return Job(id=job_id, spec=request, future=Future(), context=JobContext(job_id),
               submitted_at=submitted_at if submitted_at is not None else time.time(), owner=owner)


def finish(store: JobStore, job: Job, infotext: str = "", end: JobEnd = JobEnd.FINISHED,
           error: str | None = None) -> None:
    store.started(job)
    if error is None:
        image = GeneratedImage(path=None, seed=1, infotext=infotext, index=0)
        job.future.set_result(GenerationResult(request=job.spec, images=(image,) if infotext else ()))  # type: ignore[arg-type]
    else:
        job.future.set_exception(RuntimeError(error))
    store.ended(job, end, error)


def test_a_job_is_recorded_when_accepted_and_follows_its_states(store: JobStore) -> None:
    job = make_job(1)
    store.accepted(job)
    stored = store.get(job.id)
    assert stored is not None and stored.state is StoredState.QUEUED and stored.attempts == 0
    assert stored.request == job.spec and stored.request.job_id == job.id and stored.owner == "ann"
    assert (stored.seq, stored.kind, stored.submitted_at) == (1, "txt2img", job.submitted_at)
    store.started(job)
    running = store.get(job.id)
    assert running is not None and running.state is StoredState.RUNNING and running.attempts == 1
    assert running.started_at is not None
    finish(store, job, infotext="prompt 1\nSteps: 20, Seed: 1")
    done = store.get(job.id)
    assert done is not None and done.state is StoredState.FINISHED and done.finished_at is not None
    assert done.infotext == "prompt 1\nSteps: 20, Seed: 1" and done.attempts == 2 and done.error is None
    failed = make_job(2)
    store.accepted(failed)
    finish(store, failed, end=JobEnd.FAILED, error="out of memory")
    stored_failed = store.get(failed.id)
    assert stored_failed is not None and stored_failed.state is StoredState.FAILED
    assert stored_failed.error == "out of memory" and stored_failed.infotext is None
    assert store.get("404-nothing") is None


def test_kinds_follow_the_request(store: JobStore) -> None:
    for job in (make_job(1), make_job(2, init_image=b"png"), make_job(3, init_image=b"png", mask=b"mask")):
        store.accepted(job)
    assert [store.get(f"{n}-{n:08x}").kind for n in (1, 2, 3)] == ["txt2img", "img2img", "inpaint"]  # type: ignore[union-attr]


def test_a_job_that_cannot_be_recorded_is_not_accepted(store: JobStore, db: StudioDb) -> None:
    job = make_job(1)
    store.accepted(job)
    with pytest.raises(StoreError, match="not accepted"):
        store.accepted(job)  # the same id twice: the database refuses it
    with pytest.raises(StoreError, match="not accepted"):
        store.accepted(make_job(2, extension_params={"x": {"obj": object()}}))  # not storable as JSON
    assert store.get("2-00000002") is None and store.last_seq() == 1
    with db.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE job_files")
    with pytest.raises(StoreError, match="not available"):
        store.get(job.id)


def test_unfinished_jobs_come_back_running_first_then_pinned_then_in_order(store: JobStore, db: StudioDb) -> None:
    made = [make_job(n, owner="ann" if n % 2 else "bob") for n in range(1, 7)]
    for job in made:
        store.accepted(job)
    store.started(made[2])  # job 3 was running when the process died
    finish(store, made[1])  # job 2 ended
    store.pinned((made[4].id, made[3].id))  # an admin put 4 at the head, 5 before it
    store.pinned((made[5].id, made[4].id))  # ... and then changed their mind
    recovered = store.unfinished()
    assert [r.id for r in recovered] == [made[2].id, made[5].id, made[4].id, made[0].id, made[3].id]
    assert [r.pin for r in recovered] == [None, 0, 1, None, None]
    assert recovered[1].spec == made[5].spec and recovered[1].owner == "bob"
    assert recovered[0].submitted_at == made[2].submitted_at
    assert store.last_seq() == 6
    # A row whose request no longer reads is set aside as failed, saying why, and the rest still come back.
    with db.engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == made[0].id).values(request='{"type": "generation"'))
    assert [r.id for r in store.unfinished()] == [made[2].id, made[5].id, made[4].id, made[3].id]
    with db.engine.connect() as conn:
        row = conn.execute(jobs.select().where(jobs.c.id == made[0].id)).one()
    assert row.state == "failed" and "could not be read" in row.error


def test_the_ledger_gives_back_a_saved_file_while_it_exists(store: JobStore, tmp_path: Path) -> None:
    job = make_job(1)
    store.accepted(job)
    first, second = tmp_path / "00001-1.png", tmp_path / "00002-1.png"
    first.write_bytes(b"png")
    assert store.saved_file(job.id, "txt2img-images", 0) is None
    store.record_file(job.id, "txt2img-images", 0, first, 1)
    assert store.saved_file(job.id, "txt2img-images", 0) == first
    assert store.saved_file(job.id, "txt2img-images", 1) is None
    assert store.saved_file(job.id, "txt2img-grids", 0) is None
    second.write_bytes(b"png")
    store.record_file(job.id, "txt2img-images", 0, second, 1)  # written again: the ledger follows
    assert store.saved_file(job.id, "txt2img-images", 0) == second
    second.unlink()
    assert store.saved_file(job.id, "txt2img-images", 0) is None  # deleted since: save it again
    store.record_file(job.id, "txt2img-grids", -1, first, None)
    stored = store.get(job.id)
    assert stored is not None and [(f.kind, f.index, f.seed) for f in stored.files] == [
        ("txt2img-grids", -1, None), ("txt2img-images", 0, 1)]


def test_history_filters_searches_and_pages(store: JobStore) -> None:
    base = time.time() - 100
    prompts = ["a red fox", "100% cotton", "snake_case cat", "A RED barn", "plain"]
    owners = ["ann", "bob", "ann", None, "ann"]
    for n, (prompt, owner) in enumerate(zip(prompts, owners), start=1):
        job = make_job(n, owner=owner, submitted_at=base + n)
        job = replace(job, spec=replace(job.spec, prompt=prompt))  # type: ignore[arg-type]
        store.accepted(job)
        finish(store, job)
    waiting = make_job(6, owner="ann")
    store.accepted(waiting)  # still queued: not history
    everyone, total = store.history(ALL_OWNERS)
    assert total == 5 and [j.seq for j in everyone] == [5, 4, 3, 2, 1]  # newest first
    assert [j.seq for j in store.history("ann")[0]] == [5, 3, 1]
    assert [j.seq for j in store.history(None)[0]] == [4]
    assert store.history("carol") == ((), 0)
    assert [j.seq for j in store.history(ALL_OWNERS, search="red")[0]] == [4, 1]  # any case
    assert [j.seq for j in store.history(ALL_OWNERS, search="%")[0]] == [2]  # taken literally
    assert [j.seq for j in store.history(ALL_OWNERS, search="e_c")[0]] == [3]
    assert store.history(ALL_OWNERS, search="e%c")[1] == 0
    page, total = store.history(ALL_OWNERS, limit=2, offset=2)
    assert [j.seq for j in page] == [3, 2] and total == 5
    assert [j.seq for j in store.history("ann", search="fox")[0]] == [1]
    negative = make_job(7, owner="bob")
    negative = replace(negative, spec=replace(negative.spec, negative_prompt="blurry fox"))  # type: ignore[arg-type]
    store.accepted(negative)
    finish(store, negative)
    assert [j.seq for j in store.history("bob", search="fox")[0]] == [7]


def test_delete_forgets_an_ended_job_and_names_its_files(store: JobStore, tmp_path: Path) -> None:
    job, queued, running = make_job(1), make_job(2), make_job(3)
    for made in (job, queued, running):
        store.accepted(made)
    store.started(running)
    store.record_file(job.id, "txt2img-images", 0, tmp_path / "a.png", 1)
    store.record_file(job.id, "txt2img-grids", -1, tmp_path / "grid.png", None)
    finish(store, job)
    for unfinished in (queued, running):
        with pytest.raises(JobNotFoundError, match="still in the queue"):
            store.delete(unfinished.id)
    assert sorted(store.delete(job.id)) == [tmp_path / "a.png", tmp_path / "grid.png"]
    assert store.get(job.id) is None and store.saved_file(job.id, "txt2img-images", 0) is None
    with pytest.raises(JobNotFoundError):
        store.delete(job.id)


def test_accepted_since_counts_an_owners_recent_jobs(store: JobStore) -> None:
    now = time.time()
    for n, (owner, age) in enumerate([("ann", 4000), ("ann", 3000), ("bob", 100), ("ann", 10)], start=1):
        store.accepted(make_job(n, owner=owner, submitted_at=now - age))
    assert list(store.accepted_since("ann", now - 3600)) == [now - 3000, now - 10]
    assert list(store.accepted_since("carol", now - 3600)) == []


def test_jobs_accepted_from_many_threads_are_all_recorded(store: JobStore) -> None:
    errors: list[BaseException] = []

    def submit(first: int) -> None:
        try:
            for n in range(first, first + 10):
                store.accepted(make_job(n))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(1 + 10 * i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(store.unfinished()) == 40 and store.last_seq() == 40
