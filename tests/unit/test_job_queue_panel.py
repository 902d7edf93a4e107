"""The queue panel and the page-load follow show a user only their own jobs, with their place in line."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from modules.params import GenerationRequest
from modules.services.jobs import JobQueue
from modules.ui.job_queue_panel import QueuePanel, describe, own_job, panel_updates

PANEL = QueuePanel("listing", "pick", "cancel")  # type: ignore[arg-type]  # keys of the updates only


@pytest.fixture
def queue() -> Iterator[JobQueue]:
    release = threading.Event()
    started = threading.Event()

    def executor(spec, context) -> str:
        started.set()
        release.wait(10)
        return "done"

    job_queue = JobQueue(executor, limit=5, shared=False)
    job_queue.start()
    job_queue.started = started  # type: ignore[attr-defined]
    yield job_queue
    release.set()
    job_queue.stop(5)


def test_each_user_sees_only_their_own_jobs_in_line(queue: JobQueue) -> None:
    alices = queue.submit(GenerationRequest(prompt="alice's secret portrait"), owner="alice")
    assert queue.started.wait(5)  # type: ignore[attr-defined]
    bobs = queue.submit(GenerationRequest(prompt="bob's " + "long " * 20), owner="bob")
    img2img = queue.submit(GenerationRequest(prompt="bob's img2img", init_image=b"png"), owner="bob")

    assert own_job(queue, "alice", "txt2img") is alices  # running: a reloaded page follows it
    assert own_job(queue, "bob", "txt2img") is bobs  # waiting behind alice's, which bob never sees
    assert own_job(queue, "bob", "img2img") is img2img and own_job(queue, "carol", "txt2img") is None

    shown = panel_updates(PANEL, queue, "bob")
    assert "alice" not in str(shown)
    assert shown["listing"].count("job-queue-row") == 2  # the prompts are escaped: they are the user's text
    assert "Queued: position 2 — bob&#x27;s long long" in shown["listing"]
    assert "Queued: position 3 — bob&#x27;s img2img" in shown["listing"]
    assert shown["pick"]["choices"] == [(f"2: {describe(bobs)}", bobs.id), ("3: bob's img2img", img2img.id)]
    assert len(describe(bobs)) <= 41 and describe(bobs).endswith("…")
    assert panel_updates(PANEL, queue, "alice")["listing"] == ""  # nothing of alice's waits
    assert panel_updates(PANEL, queue, "alice")["cancel"]["visible"] is False
