"""A fake engine and front for job-queue tests and dispatch benchmarks: no torch, no model.

:class:`FakeEngine` runs a :class:`GenerationRequest` as ``batch_count`` batches of ``steps`` steps
that sleep ``step_seconds`` each, honouring interrupt and skip like the real sampler, and "loads" the
request's checkpoint (sleeping ``load_seconds``) when it holds another. The prompt ``boom`` fails the
job with a ModelLoadError; ``hang-once:PATH`` hangs without a step (a stuck device) unless PATH
exists, creating it first, so the job's next attempt runs. It serves both queues: the in-process one calls :meth:`FakeEngine.run`
as its executor, Ray workers build it from :class:`FakeEngineConfig`.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.errors import ModelLoadError
from modules.params import GenerationRequest
from modules.services.job_types import JobContext, JobSpec

FAKE_MODEL = "fake.safetensors"
HANG_ONCE = "hang-once:"


@dataclass(frozen=True)
class FakeEngineConfig:
    step_seconds: float = 0.01
    load_seconds: float = 0.0
    checkpoints: tuple[str, ...] = (FAKE_MODEL, "other.safetensors")

    def build(self) -> FakeEngine:
        return FakeEngine(self)


class FakeEngine:
    def __init__(self, config: FakeEngineConfig = FakeEngineConfig()) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._model: str | None = None
        self._loads = 0

    def run(self, spec: JobSpec, context: JobContext) -> dict[str, Any]:
        assert isinstance(spec, GenerationRequest)
        if context.interrupted:  # interrupted while it waited
            return {"prompt": spec.prompt, "batches": [], "interrupted": True}
        if spec.prompt == "boom":
            raise ModelLoadError("model.safetensors", "exploded")
        if spec.prompt.startswith(HANG_ONCE):
            marker = Path(spec.prompt.removeprefix(HANG_ONCE))
            if not marker.exists():
                marker.touch()
                threading.Event().wait()  # stuck for good: only the watchdog ends this
        self._load(spec.checkpoint or FAKE_MODEL)
        done = []
        for batch in range(spec.batch_count):
            context.begin_batch(batch, spec.batch_count, spec.steps)
            for step in range(1, spec.steps + 1):
                if context.interrupted:
                    return {"prompt": spec.prompt, "batches": done, "interrupted": True}
                if context.skipped:
                    break
                time.sleep(self._config.step_seconds)
                context.on_step(step, spec.steps, None, lambda latents: None)
            else:
                done.append(batch)
        return {"prompt": spec.prompt, "batches": done, "interrupted": False, "pid": os.getpid(),
                "seeds": [spec.seed + i for i in range(spec.images_per_job)]}

    def _load(self, name: str) -> None:
        with self._lock:
            if self._model == name:
                return
        time.sleep(self._config.load_seconds)
        with self._lock:
            self._model = name
            self._loads += 1

    def device(self) -> str:
        return "fake device"

    def checkpoints(self) -> tuple[str, ...]:
        return self._config.checkpoints

    def model(self) -> tuple[str | None, str | None]:
        with self._lock:
            return self._model, self._model

    def loads(self) -> int:
        with self._lock:
            return self._loads

    def unload(self) -> None:
        with self._lock:
            self._model = None

    def refresh(self) -> None:
        """Nothing to rescan."""


class FakeHooks:
    """The front hooks of the Ray queue, for the fake engine: results pass through unchanged."""

    def pin(self, spec: JobSpec) -> JobSpec:
        return spec

    def remote(self, spec: JobSpec) -> bool:
        return isinstance(spec, GenerationRequest)

    def needs(self, spec: JobSpec) -> tuple[str, ...]:
        assert isinstance(spec, GenerationRequest)
        return (spec.checkpoint or FAKE_MODEL,)

    def run_here(self, spec: JobSpec, context: JobContext) -> Any:
        return None

    def finish(self, spec: JobSpec, result: Any) -> Any:
        return result

    def unrun(self, spec: JobSpec) -> Any:
        prompt = spec.prompt if isinstance(spec, GenerationRequest) else ""
        return {"prompt": prompt, "batches": [], "interrupted": True}
