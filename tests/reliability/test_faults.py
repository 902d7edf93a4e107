"""Faults: out of memory mid-sampling, interrupts at random moments, a model switch during a job,
a full disk while saving, and kill -9 in the middle of a job. Nothing may be lost or left stuck."""

from __future__ import annotations

import csv
import errno
import gc
import io
import json
import random
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from modules.errors import OutOfMemoryError
from modules.infotext import parse_infotext
from modules.params import GenerationRequest
from modules.services.images import read_infotext
from tests.server_process import start_server, stop_server

SMALL = GenerationRequest(prompt="a red cube", steps=2, width=64, height=64, seed=3, sampler="Euler",
                          checkpoint="tiny-sd15.safetensors", save_images=False)
API = "/sdapi/v1"


def live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # touching every object wakes deprecated torch aliases
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


def test_out_of_memory_mid_sampling_is_recovered_and_memory_comes_back(services, monkeypatch) -> None:
    services.generation.generate(SMALL)
    before = live_tensors()
    unet = services.models.loaded_model().pipeline.unet
    real = unet.forward
    calls = {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second of two model calls: mid-sampling
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", forward)
    with pytest.raises(OutOfMemoryError, match="smaller size or batch"):
        services.generation.generate(SMALL)
    monkeypatch.setattr(unet, "forward", real)
    assert live_tensors() <= before + 10  # the failed job's tensors were let go
    assert len(services.generation.generate(SMALL).images) == 1


def test_two_hundred_interrupts_at_random_moments_never_leave_a_stuck_worker(services) -> None:
    services.generation.generate(SMALL)
    rng = random.Random(7)
    outcomes = {"interrupted": 0, "finished": 0}
    for i in range(200):
        job = services.generation.submit(GenerationRequest(**{**SMALL.__dict__, "seed": i, "steps": rng.choice([2, 4])}))
        time.sleep(rng.uniform(0, 0.03))
        services.queue.interrupt(job.id)
        result = job.future.result(timeout=60)  # never hangs
        outcomes["interrupted" if result.interrupted else "finished"] += 1
    deadline = time.monotonic() + 10
    while services.queue.current() is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert services.queue.current() is None and services.queue.pending_count() == 0
    assert outcomes["interrupted"] > 0
    assert len(services.generation.generate(SMALL).images) == 1  # the worker still takes jobs


def test_model_switch_during_a_job_waits_and_the_infotext_names_the_model_used(services) -> None:
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    long_job = services.generation.submit(GenerationRequest(**{**SMALL.__dict__, "steps": 30, "checkpoint": None}))
    switch = services.generation.switch_model("tiny-sd15-b.safetensors")  # queued behind the job
    first = long_job.future.result(timeout=120)
    switch.future.result(timeout=120)
    assert parse_infotext(first.images[0].infotext).params["Model"] == "tiny-sd15"
    after = services.generation.generate(GenerationRequest(**{**SMALL.__dict__, "checkpoint": None}))
    assert parse_infotext(after.images[0].infotext).params["Model"] == "tiny-sd15-b"
    services.generation.switch_model("tiny-sd15.safetensors").future.result()


def test_disk_full_while_saving_returns_the_image_and_leaves_no_partial_file(services, monkeypatch) -> None:
    services.options.update({"clip_skip": 2})
    config_before = services.paths.config_file.read_text()
    outputs = services.paths.outputs_dir
    files_before = set(outputs.rglob("*")) if outputs.exists() else set()

    def full_disk(path: Path, write) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("modules.services.images.write_atomic", full_disk)
    result = services.generation.generate(GenerationRequest(**{**SMALL.__dict__, "save_images": True}))
    image = result.images[0]
    assert image.path is None and Image.open(io.BytesIO(image.png)).size == (64, 64)
    assert "No space left on device" in " ".join(result.warnings)
    assert set(outputs.rglob("*")) - files_before <= {p for p in outputs.rglob("*") if p.is_dir()}
    assert services.paths.config_file.read_text() == config_before
    services.options.update({"clip_skip": 1})


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path: Path) -> None:
    from modules.atomic import write_atomic

    target = tmp_path / "config.yaml"
    target.write_text("clip_skip: 2\n")

    def dies_half_way(fh) -> None:
        fh.write(b"clip_sk")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, dies_half_way)
    assert target.read_text() == "clip_skip: 2\n" and [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_kill_9_during_a_job_keeps_config_styles_and_outputs(tiny_models, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "styles.csv").write_text('name,prompt,negative_prompt\nfilm,"{prompt}, film grain",blurry\n')
    proc, server = start_server(data, tiny_models.folder, "--api", "--ckpt", "tiny-sd15.safetensors",
                                ready_path=f"{API}/options")
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.post(f"{API}/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
            small = {"prompt": "x", "steps": 2, "width": 64, "height": 64, "save_images": True}
            assert client.post(f"{API}/txt2img", json=small).status_code == 200
            long = {**small, "steps": 150, "n_iter": 50}
            threading.Thread(target=lambda: _quietly(client, long), daemon=True).start()
            deadline = time.monotonic() + 60
            while client.get(f"{API}/progress").json()["state"]["sampling_step"] < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            proc.kill()  # SIGKILL: no chance to clean up
            proc.wait(timeout=30)
    finally:
        stop_server(proc)
    config = (data / "config.yaml").read_text()
    assert "clip_skip: 2" in config
    rows = list(csv.DictReader((data / "styles.csv").open()))
    assert rows == [{"name": "film", "prompt": "{prompt}, film grain", "negative_prompt": "blurry"}]
    saved = [p for p in (data / "outputs").rglob("*") if p.is_file() and p.suffix != ".log"]
    assert saved and all(p.suffix == ".png" for p in saved), saved  # no temp files left behind
    for path in saved:
        with Image.open(path) as image:
            image.load()  # every saved image is whole
        assert read_infotext(path)
    proc, server = start_server(data, tiny_models.folder, "--api", ready_path=f"{API}/options")
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            assert client.get(f"{API}/options").json()["CLIP_stop_at_last_layers"] == 2
            assert [s["name"] for s in client.get(f"{API}/prompt-styles").json()] == ["film"]
            # The job that was running was accepted: it is back in line; ending it frees the worker.
            line = client.get(f"{API}/queue").json()
            recovered = line["running"] + line["pending"]
            assert [(job["steps"], job["images"]) for job in recovered] == [(150, 50)]
            assert client.post(f"{API}/queue/{recovered[0]['id']}/cancel").status_code == 200
            reply = client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
            assert reply.status_code == 200 and json.loads(reply.json()["info"])["all_seeds"]
    finally:
        stop_server(proc)


def _quietly(client: httpx.Client, body: dict) -> None:
    try:
        client.post(f"{API}/txt2img", json=body)
    except httpx.HTTPError:
        pass  # the server was killed under it: expected


def test_finished_jobs_kept_for_lookups_hold_no_tensors(services) -> None:
    seen: list[bool] = []
    job = services.generation.submit(GenerationRequest(**{**SMALL.__dict__, "steps": 12}))
    shown = None
    while not job.future.done():  # while it runs, its context holds the latest latents (for the preview)
        seen.append(any(isinstance(v, torch.Tensor) for v in vars(job.context).values()))
        shown = job.context.preview() or shown  # a page watching the job
        time.sleep(0.01)
    job.future.result()
    kept = services.queue.get(job.id)
    assert kept is job and any(seen)  # in the history, and it did hold latents while it ran...
    assert not any(isinstance(v, torch.Tensor) for v in vars(kept.context).values())  # ...but no longer
    assert shown is None or kept.context.preview() is not None  # the last preview made stays
