"""Remote jobs with the Ray queue: the front keeps them (the keys are there), runs them itself and
stores what they make; local jobs still go to the workers. Also the worker side's interrupt: an
abandoned call's answer is dropped. Stubs stand in for the models, the store and the provider."""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from modules.config import Settings
from modules.params import GeneratedImage, GenerationRequest
from modules.services.job_types import JobContext
from modules.services.remote.access_file import AccessFile
from modules.services.remote.calls import CallResult, ImageCall, ProviderAccess
from modules.services.remote.catalog import Provider
from modules.services.remote.engines import RemoteEngines
from modules.services.scaleout.front import GenerationFront


def _png(colour: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (256, 256), colour).save(out, format="PNG")
    return out.getvalue()


@dataclass
class _Provider:
    provider: Provider
    gate: threading.Event = field(default_factory=threading.Event)
    calls: list[ImageCall] = field(default_factory=list)

    def generate(self, call: ImageCall) -> CallResult:
        self.calls.append(call)
        self.gate.wait(5)
        return CallResult((_png("red"),) * call.count, (None,) * call.count)

    def list_models(self) -> list[str]:
        return []


class _Registry:
    def find(self, title: str) -> None:
        return None

    def require(self, title: str) -> Any:
        raise AssertionError(f"a remote job is never pinned to a local checkpoint ({title})")


@dataclass
class _Models:
    registry: _Registry = field(default_factory=_Registry)


@dataclass
class _Store:
    kept: list[tuple[int, str]] = field(default_factory=list)

    def keep(self, request: GenerationRequest, images: Any, first: int, texts: Any, notes: Any,
             job_time: Any = None, first_pass: bool = False) -> tuple[list[GeneratedImage], list[Image.Image]]:
        saved = [GeneratedImage(path=Path(f"{first + i}.png"), seed=0, infotext=t, index=first + i, png=b"")
                 for i, t in enumerate(texts)]
        self.kept += [(g.index, g.infotext) for g in saved]
        return saved, list(images)

    def grid(self, *args: Any, **kwargs: Any) -> None:
        return None


def _engines(tmp_path: Path, provider: _Provider) -> RemoteEngines:
    settings = Settings(openai_api_key="sk-unit")
    return RemoteEngines(lambda: settings, AccessFile(tmp_path / "keys.json"), {},
                         make_client=lambda _p, _access: provider)


def test_the_front_runs_remote_jobs_itself_and_sends_local_ones_to_the_workers(tmp_path: Path) -> None:
    provider = _Provider(Provider.OPENAI)
    provider.gate.set()
    store = _Store()
    front = GenerationFront(_Models(), store, remote=_engines(tmp_path, provider))  # type: ignore[arg-type]
    job = GenerationRequest(prompt="p", checkpoint="openai/dall-e-2", width=256, height=256, batch_count=2)
    assert front.pin(job) is job and not front.remote(job)
    assert front.remote(GenerationRequest(prompt="p", checkpoint="local.safetensors"))
    result = front.run_here(job, JobContext("1-a"))
    assert len(result.images) == 2 and len(provider.calls) == 2
    assert all("Model: openai/dall-e-2" in text for _, text in store.kept)


def test_an_interrupted_call_is_abandoned_and_its_answer_dropped(tmp_path: Path) -> None:
    provider = _Provider(Provider.OPENAI)  # its call waits until the gate opens
    store = _Store()
    front = GenerationFront(_Models(), store, remote=_engines(tmp_path, provider))  # type: ignore[arg-type]
    context = JobContext("2-b")
    threading.Timer(0.2, context.interrupt).start()
    started = time.monotonic()
    result = front.run_here(GenerationRequest(prompt="p", checkpoint="openai/dall-e-2", width=256, height=256),
                            context)
    assert result.interrupted and result.images == () and time.monotonic() - started < 2
    provider.gate.set()  # the abandoned call answers now: nothing of it is kept
    time.sleep(0.2)
    assert store.kept == []


def test_the_access_repr_never_carries_the_key() -> None:
    access = ProviderAccess(api_key="sk-unit-secret", base_url="http://x")
    assert "sk-unit-secret" not in repr(access) and "set" in repr(access)
