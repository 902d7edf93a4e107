"""Which waiting job an idle worker takes: model affinity, with ageing so that nothing starves.

Pure functions over plain values, so the rule is tested without Ray. A model load costs seconds
to minutes, a short job less, so a worker first looks for work on the model it holds:

1. A worker holding no model takes the oldest job whose model no other worker holds (or is
   loading), else the oldest job it can serve (it has every checkpoint the job needs).
2. A worker holding model M takes the oldest job when that job is for M.
3. Otherwise it takes the oldest job for M, passing over older jobs, unless one of those has been
   passed over ``max_bypass`` times already: then it takes that one (ageing by count).
4. With no job for M, it takes the oldest job whose model no other worker holds, or one that has
   waited ``affinity_wait`` seconds (ageing by time); else it stays idle for now, leaving the job
   to the worker that holds its model (delay scheduling: no reload for a job about to be served).

Several idle workers are served in an order that lets each one first find its own model's jobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Candidate:
    """A waiting job as the dispatcher weighs it."""

    job_id: str
    needs: tuple[str, ...]  # checkpoint names; the first is the model (the affinity key)
    bypassed: int = 0  # how often a worker took a younger job for its model over this one
    waited: float = 0.0  # seconds since it was submitted

    @property
    def model(self) -> str | None:
        return self.needs[0] if self.needs else None


@dataclass(frozen=True)
class IdleWorker:
    name: str
    model: str | None
    checkpoints: frozenset[str]

    def can_serve(self, job: Candidate) -> bool:
        return all(name in self.checkpoints for name in job.needs)


@dataclass(frozen=True)
class Rules:
    max_bypass: int = 4
    affinity_wait: float = 10.0


@dataclass(frozen=True)
class Choice:
    job_index: int
    passed_over: tuple[int, ...] = ()  # indices of older jobs this choice bypassed (they age)


def pick(jobs: Sequence[Candidate], worker: IdleWorker, held_elsewhere: frozenset[str | None],
         rules: Rules = Rules()) -> Choice | None:
    """The job ``worker`` takes from ``jobs`` (oldest first), or None to stay idle for now.
    ``held_elsewhere``: the models other workers hold or are loading."""
    servable = [i for i, job in enumerate(jobs) if worker.can_serve(job)]
    if not servable:
        return None
    if worker.model is None:
        free = [i for i in servable if jobs[i].model not in held_elsewhere]
        return Choice((free or servable)[0])
    oldest = servable[0]
    if jobs[oldest].model == worker.model:
        return Choice(oldest)
    same = next((i for i in servable if jobs[i].model == worker.model), None)
    if same is not None:
        older = tuple(i for i in servable if i < same)
        aged = next((i for i in older if jobs[i].bypassed >= rules.max_bypass), None)
        return Choice(aged) if aged is not None else Choice(same, older)
    for i in servable:
        if jobs[i].model not in held_elsewhere or jobs[i].waited >= rules.affinity_wait:
            return Choice(i)
    return None


def serving_order(workers: Sequence[IdleWorker], jobs: Sequence[Candidate]) -> list[IdleWorker]:
    """Idle workers holding a model some waiting job wants go first, then those holding none (they
    load something anyway), then the rest (whose next job means a reload)."""
    wanted = {job.model for job in jobs}
    return sorted(workers, key=lambda w: (w.model not in wanted, w.model is not None))


def assign(jobs: Sequence[Candidate], workers: Sequence[IdleWorker], held: Mapping[str, str | None],
           rules: Rules = Rules()) -> tuple[list[tuple[IdleWorker, Candidate]], dict[str, int]]:
    """Pairs (worker, job) for the idle workers that take a job now, and the new bypass counts.
    ``held``: every worker's model (held, or being loaded for its running job), busy ones included."""
    remaining = list(jobs)
    holding = dict(held)
    pairs: list[tuple[IdleWorker, Candidate]] = []
    bypassed: dict[str, int] = {}
    for worker in serving_order(workers, remaining):
        elsewhere = frozenset(model for name, model in holding.items() if name != worker.name and model)
        choice = pick(remaining, worker, elsewhere, rules)
        if choice is None:
            continue
        for index in choice.passed_over:
            job = remaining[index]
            remaining[index] = replace(job, bypassed=job.bypassed + 1)
            bypassed[job.job_id] = job.bypassed + 1
        taken = remaining.pop(choice.job_index)
        holding[worker.name] = taken.model
        pairs.append((worker, taken))
    return pairs, bypassed


def unservable(jobs: Sequence[Candidate], workers: Sequence[IdleWorker]) -> list[Candidate]:
    """Jobs that no worker (idle or busy, as given) has the checkpoints for."""
    return [job for job in jobs if not any(worker.can_serve(job) for worker in workers)]
