"""The Ray-backed job queue: the same contract as the in-process one, over GPU workers on many hosts.

One dispatcher thread owns every Ray call: it finds workers that join or leave, hands each idle
worker a job by model affinity (:mod:`.dispatch`), reads progress and previews of running jobs a
few times a second, forwards interrupt and skip to the one worker running the job, and watches for
lost workers (an actor error, no answer, or no step for too long). A lost worker's job goes back in
line, keeping its place, and runs at most ``max_attempts`` times in all; the lost attempt is killed
so it can never deliver a second result. Finished work is stored (files, hooks) on one front thread
marked as a worker (:func:`~modules.services.queue_contract.on_worker`), so extensions see the same
rules as with the in-process queue.
"""

from __future__ import annotations

import bisect
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError

from modules.errors import AtelierError, ModelNotFoundError, RemoteJobError, WorkerLostError
from modules.services.job_types import Job, JobSpec, JobStatus, ModelUnload, drop_frames
from modules.services.queue_contract import JobQueueBase, QueueMode, WorkerStatus, on_worker
from modules.services.scaleout.dispatch import Candidate, Rules, assign, unservable
from modules.services.scaleout.protocol import RemoteOutcome
from modules.services.scaleout.roster import Roster
from modules.services.scaleout.slots import DispatchSettings, FrontHooks, RemoteJobContext, Slot

log = logging.getLogger(__name__)
_WAIT_SECONDS = 0.02  # the dispatcher's nap while work is in flight: bounds steering and dispatch latency
_IDLE_SECONDS = 0.5  # its nap with nothing to do; a submitted job wakes it at once


def _rank(job: Job) -> int:
    """Submission order: job ids begin with a running number."""
    return int(job.id.split("-", 1)[0])


class RayJobQueue(JobQueueBase):
    """Jobs for workers on a Ray cluster (``ray.init`` has run); steering and results as in process."""

    mode = QueueMode.RAY

    def __init__(self, hooks: FrontHooks, limit: int, shared: bool = True,
                 settings: DispatchSettings = DispatchSettings()) -> None:
        super().__init__(limit, shared)
        self._hooks = hooks
        self.settings = settings
        self._rules = Rules(settings.max_bypass, settings.affinity_wait)
        self._running: list[Job] = []
        # The dispatcher thread's own state.
        self._roster = Roster(settings.namespace)
        self._slots = self._roster.slots
        self._refs: dict[Any, tuple[str, str]] = {}  # run and progress calls in flight: ref -> (kind, worker)
        self._refreshed: set[str] = set()  # jobs no worker could serve, after asking workers to rescan
        self._attempts: dict[str, int] = {}
        self._bypassed: dict[str, int] = {}
        self._next_discovery = 0.0
        self._unload_requested = threading.Event()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._tasks: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._threads: list[threading.Thread] = []

    # --- the contract -------------------------------------------------------------------------

    def start(self) -> None:
        if not self._threads:
            self._threads = [threading.Thread(target=self._dispatch, name="atelier-dispatch", daemon=True),
                             threading.Thread(target=self._store, name="atelier-store", daemon=True)]
            for thread in self._threads:
                thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Interrupt running jobs (waiting for them up to ``stop_grace``), end waiting ones unrun."""
        self._close_journal()
        self._stopping.set()
        self._wake.set()
        if self._threads:
            self._threads[0].join(timeout)
            self._tasks.put(None)
            self._threads[1].join(timeout)

    def submit(self, spec: JobSpec, owner: str | None = None) -> Job:
        spec = self._hooks.pin(spec)
        job = self._new_job(spec, owner, RemoteJobContext())
        if not self._hooks.remote(spec):
            self._tasks.put(lambda: self._run_here(job))
        self._wake.set()
        return job

    def running(self) -> tuple[Job, ...]:
        with self._lock:
            return tuple(self._running)

    def _new_context(self, job_id: str) -> RemoteJobContext:
        return RemoteJobContext(job_id)  # progress mirrored from the worker (recovered jobs too)

    def _end_unrun(self, job: Job) -> None:
        """A cancelled waiting job ends as a stopped server ends it: the front's unrun result."""
        self._complete(job, self._hooks.unrun(job.spec), None)

    def workers(self) -> tuple[WorkerStatus, ...]:
        return self._roster.statuses()

    # --- the dispatcher thread ----------------------------------------------------------------

    def _dispatch(self) -> None:
        deadline: float | None = None
        while deadline is None or time.monotonic() <= deadline:
            if self._stopping.is_set() and deadline is None:
                deadline = time.monotonic() + self.settings.stop_grace
                self._end_all_waiting()
            if deadline is not None and not self._roster.busy():
                break
            try:
                self._step(stopping=deadline is not None)
            except Exception:  # a bug or a Ray hiccup: logged; the jobs in hand are kept and dispatch goes on
                log.exception("The job dispatcher hit an error; carrying on in a second")
                time.sleep(1.0)
        for slot in self._slots.values():
            if slot.job is not None:
                self._complete(slot.job, None, WorkerLostError("The server stopped before the job finished."))

    def _step(self, stopping: bool) -> None:
        """One round: find workers, hand out jobs, steer and read progress, collect what came back."""
        now = time.monotonic()
        if not stopping:
            if now >= self._next_discovery:
                self._roster.discover()
                self._next_discovery = now + self.settings.discover_seconds
            self._sweep_interrupted()
            self._assign(now)
        if self._unload_requested.is_set():
            self._unload_all()
        self._poll(now)
        self._collect()
        self._watchdog(time.monotonic())

    def _sweep_interrupted(self) -> None:
        """Waiting jobs interrupted before they ran end now, without a worker."""
        with self._lock:
            stopped = [job for job in self._pending if job.context.interrupted and self._hooks.remote(job.spec)]
            for job in stopped:
                self._pending.remove(job)
        for job in stopped:
            self._complete(job, self._hooks.unrun(job.spec), None)

    def _assign(self, now: float) -> None:
        with self._lock:
            waiting = [job for job in self._pending if self._hooks.remote(job.spec)]
        if not waiting or not self._slots:
            return
        wall = time.time()
        candidates = [Candidate(job.id, self._hooks.needs(job.spec), self._bypassed.get(job.id, 0),
                                wall - job.submitted_at) for job in waiting]
        self._fail_unservable(candidates, {job.id: job for job in waiting})
        idle = [slot.idle() for slot in self._slots.values() if slot.job is None and not slot.info.draining]
        held = {name: slot.holds for name, slot in self._slots.items()}
        pairs, bypassed = assign(candidates, idle, held, self._rules)
        self._bypassed.update(bypassed)
        by_id = {job.id: job for job in waiting}
        for worker, candidate in pairs:
            self._launch(self._slots[worker.name], by_id[candidate.job_id], candidate.model, now)

    def _fail_unservable(self, candidates: list[Candidate], jobs: dict[str, Job]) -> None:
        """A job whose checkpoint no worker has fails, once the workers have rescanned their folders."""
        lost = unservable(candidates, [slot.idle() for slot in self._slots.values()])
        if not lost or self._roster.asking():
            return
        fresh = [c for c in lost if c.job_id not in self._refreshed]
        if fresh:
            self._refreshed.update(c.job_id for c in fresh)
            self._roster.rescan()
            return
        available = sorted({name for slot in self._slots.values() for name in slot.info.checkpoints})
        for candidate in lost:
            with self._lock:
                if jobs[candidate.job_id] not in self._pending:
                    continue
                self._pending.remove(jobs[candidate.job_id])
            missing = next(n for n in candidate.needs if not any(n in s.info.checkpoints for s in self._slots.values()))
            log.warning("Job %s: no worker has the checkpoint %s", candidate.job_id, missing)
            self._complete(jobs[candidate.job_id], None, ModelNotFoundError(f"{missing} (on no worker)", available))

    def _launch(self, slot: Slot, job: Job, model: str | None, now: float) -> None:
        with self._lock:
            if job not in self._pending:
                return
            self._pending.remove(job)
            self._running.append(job)
            job.status = JobStatus.RUNNING
        self._on_start(job)
        self._attempts[job.id] = self._attempts.get(job.id, 0) + 1
        self._bypassed.pop(job.id, None)
        job.context.mark_started()
        ref = slot.actor.run.remote(job.id, job.spec)
        self._refs[ref] = ("run", slot.name)
        slot.begin(job, model, ref, now)
        self._roster.publish(slot)

    def _poll(self, now: float) -> None:
        """Forward steering presses, and read progress of every busy worker every ``poll_seconds``."""
        for slot in self._slots.values():
            job = slot.job
            if job is None:
                continue
            if job.context.interrupted and not slot.sent_interrupt:
                slot.actor.interrupt.remote(job.id)
                slot.sent_interrupt = True
            if job.context.skipped and not slot.sent_skip:
                slot.actor.skip.remote(job.id)
                slot.sent_skip = True
            if slot.progress_ref is None and now - slot.last_poll >= self.settings.poll_seconds:
                assert isinstance(job.context, RemoteJobContext)
                want = job.context.preview_wanted(self.settings.preview_interest)
                slot.progress_ref = slot.actor.progress.remote(job.id, want)
                slot.last_poll = now
                self._refs[slot.progress_ref] = ("progress", slot.name)

    def _collect(self) -> None:
        """Handle every call that has come back, after waiting a moment for the first one."""
        refs = list(self._refs) + self._roster.refs()
        if not refs:  # nothing in flight: sleep until a job comes (or the next look for workers)
            self._wake.wait(_WAIT_SECONDS if self.pending_count() else _IDLE_SECONDS)
            self._wake.clear()
            return
        ready, _ = ray.wait(refs, num_returns=1, timeout=_WAIT_SECONDS)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            if self._roster.owns(ref):
                self._roster.on_answer(ref)
                continue
            kind, name = self._refs.pop(ref)
            slot = self._slots.get(name)
            if slot is None:
                continue  # a forgotten worker's late answer
            if kind == "run" and ref is slot.run_ref:
                self._on_run_done(slot, ref)
            elif kind == "progress" and ref is slot.progress_ref:
                try:
                    slot.heard(ray.get(ref), time.monotonic())
                except RayError:
                    slot.progress_ref = None  # the run call says whether the worker is gone

    def _on_run_done(self, slot: Slot, ref: Any) -> None:
        job = slot.job
        assert job is not None
        try:
            outcome: RemoteOutcome = ray.get(ref)
        except RayTaskError as exc:  # the call itself failed (not the job: run() returns job errors)
            slot.end(None)
            self._roster.publish(slot)
            self._complete(job, None, RemoteJobError(f"The job failed on worker {slot.name}: {exc}"))
            return
        except RayError as exc:
            first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            self._lose(slot, f"died ({type(exc).__name__}: {first_line})")
            return
        slot.end(outcome.worker)
        self._roster.publish(slot)
        self._attempts.pop(job.id, None)
        self._tasks.put(lambda: self._finish(job, outcome))

    def _watchdog(self, now: float) -> None:
        for slot in list(self._slots.values()):
            if slot.job is None:
                continue
            if now - slot.last_reply > self.settings.reply_timeout:
                self._lose(slot, f"did not answer for {now - slot.last_reply:.0f} s")
            elif now - slot.last_change > self.settings.stall_timeout:
                self._lose(slot, f"made no progress for {now - slot.last_change:.0f} s")

    def _lose(self, slot: Slot, reason: str) -> None:
        """Drop a worker that died or hung (killing it, so a late result cannot count) and put its
        job back in line, or fail the job after ``max_attempts``."""
        job = slot.job
        self._roster.forget(slot.name)
        try:
            ray.kill(slot.actor, no_restart=True)
        except (RayError, ValueError) as exc:  # dead already: nothing left to stop
            log.debug("Worker %s was already gone: %s", slot.name, exc)
        if job is None:
            return
        attempts = self._attempts.get(job.id, 0)
        log.warning("Worker %s %s while running job %s (attempt %d of %d)", slot.name, reason, job.id, attempts,
                    self.settings.max_attempts)
        if attempts >= self.settings.max_attempts or self._stopping.is_set():
            self._attempts.pop(job.id, None)
            self._complete(job, None, WorkerLostError(
                f"The job was not finished: its worker was lost {attempts} time(s); the last one, "
                f"{slot.name.split(':', 1)[-1]}, {reason}."))
            return
        assert isinstance(job.context, RemoteJobContext)
        job.context.reset()
        with self._lock:
            self._running.remove(job)
            job.status = JobStatus.QUEUED
            bisect.insort(self._pending, job, key=_rank)  # back in line at its own place
            self._reorder()  # then where the fair order puts it

    def _unload_all(self) -> None:
        self._unload_requested.clear()
        for slot in self._slots.values():
            slot.actor.unload.remote()
            slot.info = replace(slot.info, model=None, model_title=None)
            self._roster.publish(slot)

    def _end_all_waiting(self) -> None:
        with self._lock:
            waiting, self._pending = self._pending, []
            running = list(self._running)
        for job in waiting:
            self._complete(job, self._hooks.unrun(job.spec), None)
        for job in running:
            job.context.interrupt()

    # --- the store thread ---------------------------------------------------------------------

    def _store(self) -> None:
        with on_worker():  # hooks run here as on the in-process worker: host.generate() is refused
            while (task := self._tasks.get()) is not None:
                task()

    def _finish(self, job: Job, outcome: RemoteOutcome) -> None:
        result, error = None, outcome.error
        if error is None:
            try:
                result = self._hooks.finish(job.spec, outcome.result)
            except AtelierError as exc:
                log.warning("Job %s failed: %s", job.id, exc)
                error = exc
            except Exception as exc:  # a bug: the dispatcher and the next jobs go on
                log.exception("Job %s failed unexpectedly while its results were stored", job.id)
                error = exc
        self._complete(job, result, error)

    def _run_here(self, job: Job) -> None:
        with self._lock:
            if job not in self._pending:
                return  # ended by stop()
            self._pending.remove(job)
            self._running.append(job)
            job.status = JobStatus.RUNNING
        self._on_start(job)
        job.context.mark_started()
        result, error = None, None
        try:
            result = self._hooks.run_here(job.spec, job.context)
            if isinstance(job.spec, ModelUnload):
                self._unload_requested.set()
        except AtelierError as exc:
            log.warning("Job %s failed: %s", job.id, exc)
            error = exc
        except Exception as exc:
            log.exception("Job %s failed unexpectedly", job.id)
            error = exc
        self._complete(job, result, error)

    def _complete(self, job: Job, result: Any, error: BaseException | None) -> None:
        job.context.release()
        with self._lock:
            if job in self._running:
                self._running.remove(job)
            job.status = JobStatus.FAILED if error is not None else JobStatus.FINISHED
        if job.future.done():
            return
        if error is not None:
            drop_frames(error)
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
