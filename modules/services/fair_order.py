"""The order waiting jobs start in: an admin's pinned jobs first, then round-robin between owners.

Pure functions over plain values, so the rule is tested without a queue (the queues in
:mod:`modules.services.queue_contract` recompute it whenever the line changes):

1. Pinned jobs first, in their pin order (an admin moved them there).
2. Then one job per owner per round. Owners are ordered by when a job of theirs last started:
   an owner none of whose jobs has started yet comes first, then the one who waited longest since
   their last start; ties go to the owner whose oldest waiting job is oldest. Jobs without an owner
   (no sign-in) count as one owner.
3. Within an owner, submission order.

The order is stable as jobs start: the owner whose job starts gets the newest "last start", so
recomputing after each start yields the same round-robin the static order promised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Rank = tuple[int, int]  # submission order: (0, n) for jobs recovered after a restart, (1, seq) for new ones


@dataclass(frozen=True)
class Waiting:
    """One waiting job as the ordering sees it."""

    id: str
    owner: str | None
    rank: Rank


def fair_order(waiting: Sequence[Waiting], pins: Mapping[str, int],
               last_started: Mapping[str | None, int]) -> list[str]:
    """The ids of ``waiting`` in the order they will start. ``pins``: job id -> pin index (lower
    first); ``last_started``: owner -> a number that grows with each start (absent: never)."""
    pinned = sorted((w for w in waiting if w.id in pins), key=lambda w: (pins[w.id], w.rank))
    by_owner: dict[str | None, list[Waiting]] = {}
    for entry in sorted((w for w in waiting if w.id not in pins), key=lambda w: w.rank):
        by_owner.setdefault(entry.owner, []).append(entry)

    def owner_key(owner: str | None) -> tuple[int, int, Rank]:
        started = last_started.get(owner)
        oldest = by_owner[owner][0].rank
        return (0, 0, oldest) if started is None else (1, started, oldest)

    owners = sorted(by_owner, key=owner_key)
    order = [w.id for w in pinned]
    for round_index in range(max((len(jobs) for jobs in by_owner.values()), default=0)):
        order += [by_owner[o][round_index].id for o in owners if round_index < len(by_owner[o])]
    return order


def moved(order: Sequence[str], pinned: Sequence[str], job_id: str, position: int) -> list[str]:
    """The pinned ids, in order, after ``job_id`` is moved to ``position`` (1: next) of ``order``:
    it and every job ahead of it become pinned, and jobs pinned before stay pinned."""
    rest = [i for i in order if i != job_id]
    index = min(max(position, 1), len(rest) + 1) - 1
    rest.insert(index, job_id)
    keep = set(pinned)
    return [i for n, i in enumerate(rest) if n <= index or i in keep]
