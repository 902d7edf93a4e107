"""The workers the front knows: found by name as they join, described, dropped as they leave.

Owned by the Ray queue's dispatcher thread; only :meth:`Roster.statuses` (what the status panel
and ``/sdapi/v1/workers`` read) is called from other threads.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import RayError

from modules.services.queue_contract import WorkerStatus
from modules.services.scaleout.pool import find_worker, worker_names
from modules.services.scaleout.protocol import WorkerDescription
from modules.services.scaleout.slots import Slot

log = logging.getLogger(__name__)


class Roster:
    def __init__(self, namespace: str) -> None:
        self._namespace = namespace
        self.slots: dict[str, Slot] = {}
        self._asked: dict[Any, tuple[str, Any]] = {}  # describe/refresh calls in flight: ref -> (name, actor)
        self._lock = threading.Lock()
        self._statuses: dict[str, WorkerStatus] = {}

    def statuses(self) -> tuple[WorkerStatus, ...]:
        with self._lock:
            return tuple(self._statuses[name] for name in sorted(self._statuses))

    def refs(self) -> list[Any]:
        return list(self._asked)

    def owns(self, ref: Any) -> bool:
        return ref in self._asked

    def asking(self) -> bool:
        """Whether some worker has yet to describe itself (a new one starting, or a rescan)."""
        return bool(self._asked)

    def discover(self) -> None:
        """Ask new workers to describe themselves, idle ones again (a leaving one says so), and drop
        idle ones that left (a busy one's run call reports how it went)."""
        try:
            names = worker_names(self._namespace)
        except RayError as exc:
            log.warning("Cannot list the workers: %s", exc)
            return
        pending = {name for name, _actor in self._asked.values()}
        for name in names - self.slots.keys() - pending:
            actor = find_worker(name, self._namespace)
            if actor is not None:
                self._asked[actor.describe.remote()] = (name, actor)
        for name, slot in self.slots.items():
            if slot.job is None and name not in pending:
                self._asked[slot.actor.describe.remote()] = (name, slot.actor)
        for name in self.slots.keys() - names:
            if self.slots[name].job is None:
                log.info("Worker %s left", name)
                self.forget(name)

    def rescan(self) -> None:
        """Ask every worker to scan its checkpoint folders again."""
        for name, slot in self.slots.items():
            self._asked[slot.actor.refresh.remote()] = (name, slot.actor)

    def on_answer(self, ref: Any) -> None:
        name, actor = self._asked.pop(ref)
        try:
            info: WorkerDescription = ray.get(ref)
        except RayError:
            return  # gone already
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = Slot(actor=actor, info=info)
            log.info("Worker %s joined: %s, %s, %d checkpoint(s)", name, info.host, info.device, len(info.checkpoints))
        elif slot.job is None:
            slot.info = info
        else:  # its model and counters come with its job's outcome
            slot.info = replace(slot.info, checkpoints=info.checkpoints, draining=info.draining)
        self.publish(slot)

    def forget(self, name: str) -> None:
        self.slots.pop(name, None)
        with self._lock:
            self._statuses.pop(name, None)

    def publish(self, slot: Slot) -> None:
        with self._lock:
            self._statuses[slot.name] = slot.status()

    def busy(self) -> bool:
        return any(slot.job is not None for slot in self.slots.values())
