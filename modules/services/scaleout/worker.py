"""One GPU's worker: a long-lived Ray actor that renders jobs and keeps its checkpoints loaded.

The class is plain Python (made a Ray actor by :func:`modules.services.scaleout.pool.spawn_workers`),
threaded (``max_concurrency`` > 1) so that ``progress``, ``interrupt`` and ``skip`` answer while
``run`` works; one lock keeps ``run`` to one job at a time. It imports no web framework.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from typing import Any

from modules.errors import AtelierError, RemoteJobError
from modules.services.job_types import JobContext, JobStatus, drop_frames
from modules.services.queue_contract import on_worker
from modules.services.scaleout.engine_host import EngineFactory, WorkerEngine
from modules.services.scaleout.protocol import (
    RemoteOutcome,
    RemoteProgress,
    WorkerDescription,
    reduced_preview,
)

log = logging.getLogger(__name__)
_EARLY_STOPS = 64  # interrupts that arrived before their job started, remembered for a while


class RenderWorker:
    """The actor's body. Every public method is a remote call the front makes."""

    def __init__(self, name: str, engine: EngineFactory, node_id: str = "") -> None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._name = name
        self._node_id = node_id
        self._engine: WorkerEngine = engine.build()
        self._run_lock = threading.Lock()
        self._lock = threading.Lock()
        self._context: JobContext | None = None
        self._early_interrupts: deque[str] = deque(maxlen=_EARLY_STOPS)
        self._jobs_done = 0
        self._draining = False

    def describe(self) -> WorkerDescription:
        model, title = self._engine.model()
        with self._lock:
            done, draining = self._jobs_done, self._draining
        return WorkerDescription(name=self._name, host=socket.gethostname(), node_id=self._node_id,
                                 device=self._engine.device(), pid=os.getpid(), checkpoints=self._engine.checkpoints(),
                                 model=model, model_title=title, jobs_done=done, loads=self._engine.loads(),
                                 draining=draining)

    def run(self, job_id: str, spec: Any) -> RemoteOutcome:
        """Render one job; its error comes back as a value (an AtelierError intact, a bug wrapped)."""
        context = JobContext(job_id)
        with self._run_lock:
            with self._lock:
                if job_id in self._early_interrupts:
                    context.interrupt()
                self._context = context
            context.mark_started()
            result: Any = None
            error: BaseException | None = None
            try:
                with on_worker():
                    result = self._engine.run(spec, context)
            except AtelierError as exc:
                log.warning("Job %s failed: %s", job_id, exc)
                error = exc
            except Exception as exc:  # a bug: logged here with its traceback, reported in words
                log.exception("Job %s failed unexpectedly", job_id)
                error = RemoteJobError(f"The job failed on worker {self._name}: {type(exc).__name__}: {exc}")
            finally:
                with self._lock:
                    self._context = None
                    self._jobs_done += 1
            if error is not None:
                drop_frames(error)
            return RemoteOutcome(job_id=job_id, result=result, error=error, worker=self.describe())

    def progress(self, job_id: str, want_preview: bool = False) -> RemoteProgress:
        with self._lock:
            context, draining = self._context, self._draining
        if context is None or context.job_id != job_id:
            return RemoteProgress(job_id=context.job_id if context else None, draining=draining)
        snap = context.snapshot(job_id, JobStatus.RUNNING, 0)
        preview, scale = (context.preview() if want_preview else None), 1
        if preview is not None:
            preview, scale = reduced_preview(preview)
        return RemoteProgress(job_id=job_id, step=snap.step, total_steps=snap.total_steps,
                              batch_index=snap.batch_index, batch_count=snap.batch_count, preview=preview,
                              preview_scale=scale, draining=draining)

    def interrupt(self, job_id: str) -> bool:
        """Stop ``job_id`` only; an interrupt that arrives before its job starts is kept for it."""
        with self._lock:
            context = self._context
            if context is None or context.job_id != job_id:
                self._early_interrupts.append(job_id)
                return False
        context.interrupt()
        return True

    def skip(self, job_id: str) -> bool:
        with self._lock:
            context = self._context
        if context is None or context.job_id != job_id:
            return False
        context.skip()
        return True

    def unload(self) -> None:
        """Free the checkpoints, once the running job (if any) is done."""
        with self._run_lock:
            self._engine.unload()

    def refresh(self) -> WorkerDescription:
        """Scan the checkpoint folders again (new files)."""
        self._engine.refresh()
        return self.describe()

    def drain(self) -> WorkerDescription:
        """Take no new job: the worker is leaving once the running one is done."""
        with self._lock:
            self._draining = True
        return self.describe()

    def busy(self) -> bool:
        with self._lock:
            return self._context is not None
