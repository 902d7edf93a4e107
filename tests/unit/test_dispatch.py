"""The dispatch rule of the Ray queue: model affinity, delay for the model's holder, ageing."""

from __future__ import annotations

from modules.services.scaleout.dispatch import Candidate, IdleWorker, Rules, assign, pick, unservable

ALL = frozenset({"a", "b", "c"})


def jobs(*models: str, waited: float = 0.0) -> list[Candidate]:
    return [Candidate(f"j{i}", (m,), waited=waited) for i, m in enumerate(models)]


def worker(name: str, model: str | None, checkpoints: frozenset[str] = ALL) -> IdleWorker:
    return IdleWorker(name, model, checkpoints)


def test_a_worker_takes_the_oldest_job_for_its_model() -> None:
    choice = pick(jobs("b", "a", "a"), worker("w", "a"), frozenset({"b"}))
    assert choice is not None and choice.job_index == 1 and choice.passed_over == (0,)


def test_a_worker_without_a_model_prefers_a_model_nobody_holds() -> None:
    choice = pick(jobs("a", "b"), worker("w", None), frozenset({"a"}))
    assert choice is not None and choice.job_index == 1
    choice = pick(jobs("a", "a"), worker("w", None), frozenset({"a"}))
    assert choice is not None and choice.job_index == 0  # nothing else to do: it loads a too


def test_a_job_whose_model_another_worker_holds_waits_for_it_until_it_has_waited_long() -> None:
    assert pick(jobs("b"), worker("w", "a"), frozenset({"b"}), Rules(affinity_wait=10)) is None
    choice = pick(jobs("b", waited=11), worker("w", "a"), frozenset({"b"}), Rules(affinity_wait=10))
    assert choice is not None and choice.job_index == 0
    choice = pick(jobs("c"), worker("w", "a"), frozenset({"b"}))  # nobody holds c: take it now
    assert choice is not None and choice.job_index == 0


def test_a_job_passed_over_too_often_is_taken() -> None:
    waiting = [Candidate("old", ("b",), bypassed=4), Candidate("new", ("a",))]
    choice = pick(waiting, worker("w", "a"), frozenset({"b"}), Rules(max_bypass=4))
    assert choice is not None and choice.job_index == 0


def test_nothing_starves_under_a_stream_of_jobs_for_the_held_model() -> None:
    waiting = [Candidate("b-job", ("b",))]
    taken: list[str] = []
    for round_ in range(10):
        waiting.append(Candidate(f"a{round_}", ("a",)))
        pairs, bypassed = assign(waiting, [worker("w", "a")], {"w": "a", "other": "b"}, Rules(max_bypass=3))
        waiting = [Candidate(c.job_id, c.needs, bypassed.get(c.job_id, c.bypassed)) for c in waiting
                   if c.job_id not in {job.job_id for _w, job in pairs}]
        taken += [job.job_id for _w, job in pairs]
    assert "b-job" in taken and taken.index("b-job") <= 4


def test_workers_holding_a_wanted_model_choose_first() -> None:
    waiting = jobs("a", "b")
    pairs, _ = assign(waiting, [worker("w1", "b"), worker("w2", "a")], {"w1": "b", "w2": "a"})
    assert {(w.name, j.model) for w, j in pairs} == {("w1", "b"), ("w2", "a")}


def test_eight_alternating_jobs_on_two_fresh_workers_need_two_loads() -> None:
    waiting = jobs("a", "b", "a", "b", "a", "b", "a", "b")
    held: dict[str, str | None] = {"w1": None, "w2": None}
    loads = 0
    while waiting:
        idle = [worker(name, model) for name, model in held.items()]
        pairs, _ = assign(waiting, idle, held)
        assert pairs
        for w, job in pairs:
            loads += held[w.name] != job.model
            held[w.name] = job.model
        waiting = [j for j in waiting if j.job_id not in {job.job_id for _w, job in pairs}]
    assert loads == 2


def test_a_worker_without_the_checkpoint_never_gets_the_job() -> None:
    waiting = jobs("c")
    assert pick(waiting, worker("w", None, frozenset({"a"})), frozenset()) is None
    assert unservable(waiting, [worker("w", None, frozenset({"a"}))]) == waiting
    two = [Candidate("r", ("a", "c"))]  # a refiner the worker lacks
    assert pick(two, worker("w", "a", frozenset({"a"})), frozenset()) is None
