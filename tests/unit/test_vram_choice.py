"""Choosing a job's memory mode, and refusing a job that cannot fit, on a pretend CUDA card.

The model is SD1.5's real architecture (the shipped configs) with its fp16 weight sizes, so the
budgets below are real cards' sizes; nothing is allocated.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from modules.api.routes import error_response
from modules.engine import vram_activations as act
from modules.engine.devices import MemoryMode
from modules.engine.vram_choice import choose_mode
from modules.engine.vram_plan import HiresShape, JobShape, ModelProfile, plan_for
from modules.engine.vram_weights import ComponentWeights, PipelineWeights
from modules.errors import NotEnoughMemoryError

GIB = 1024**3
SD15 = Path(__file__).resolve().parents[2] / "modules" / "engine" / "model_configs" / "sd15"


def _sd15_fp16(device_type: str = "cuda") -> ModelProfile:
    text = json.loads((SD15 / "text_encoder" / "config.json").read_text())
    weights = PipelineWeights((ComponentWeights("unet", 1_719_000_000, 59_000_000, 2),
                               ComponentWeights("text_encoder", 246_000_000, 76_000_000, 2),
                               ComponentWeights("vae", 167_000_000, 5_000_000, 2)))
    return ModelProfile(weights=weights, unet=act.UnetShape.of(json.loads((SD15 / "unet" / "config.json").read_text())),
                        vae=act.VaeShape.of(json.loads((SD15 / "vae" / "config.json").read_text())),
                        text=(act.TextShape(text["hidden_size"], text["intermediate_size"],
                                            text["num_hidden_layers"], text["num_attention_heads"]),),
                        unet_dtype_bytes=2, vae_dtype_bytes=2, text_dtype_bytes=2, device_type=device_type,
                        is_sdxl=False)


def test_auto_keeps_every_model_on_a_card_with_room() -> None:
    choice = choose_mode(plan_for(_sd15_fp16(), JobShape(512, 512, 1)), 22 * GIB, None)
    assert choice.mode is MemoryMode.FULL and choice.fits
    assert "full chosen" in choice.reason and "VAE decode" in choice.reason


def test_auto_offloads_only_as_far_as_the_card_needs() -> None:
    plan = plan_for(_sd15_fp16(), JobShape(1024, 1024, 2))
    full, medvram = plan.for_mode(MemoryMode.FULL), plan.for_mode(MemoryMode.MEDVRAM)
    between = (full.peak_bytes + medvram.peak_bytes) // 2
    assert choose_mode(plan, int(full.peak_bytes / 0.85), None).mode is MemoryMode.FULL
    assert choose_mode(plan, between, None).mode is MemoryMode.MEDVRAM
    assert choose_mode(plan, int(medvram.peak_bytes * 0.9), None).mode is MemoryMode.LOWVRAM


def test_a_job_too_big_even_for_lowvram_is_refused_with_a_batch_size_that_fits() -> None:
    profile = _sd15_fp16()
    plan = plan_for(profile, JobShape(1024, 1024, 8))
    budget = 3 * GIB
    with pytest.raises(NotEnoughMemoryError) as refused:
        choose_mode(plan, budget, None)
    message = str(refused.value)
    assert message.startswith("Not enough GPU memory for this job") and "3.00 GiB is available" in message
    found = re.search(r"a batch size of (\d+) or less", message)
    assert found is not None, message
    smaller = int(found.group(1))
    assert 1 <= smaller < 8
    assert choose_mode(plan_for(profile, JobShape(1024, 1024, smaller)), budget, None).fits  # the advice works
    assert refused.value.needed_bytes > budget == refused.value.available_bytes


def test_a_refused_hires_job_names_hires_fix_when_the_first_pass_alone_fits() -> None:
    profile = _sd15_fp16()
    plan = plan_for(profile, JobShape(512, 512, 1, hires=HiresShape((4096, 4096), (4096, 4096))))
    with pytest.raises(NotEnoughMemoryError, match="turning hires fix off") as refused:
        choose_mode(plan, GIB, None)
    assert "the hires fix sampling at 4096x4096" in str(refused.value)
    assert choose_mode(plan_for(profile, JobShape(512, 512, 1)), GIB, None).fits  # and without it, it does


def test_a_forced_mode_is_kept_when_it_fits_and_otherwise_the_lighter_mode_is_named() -> None:
    plan = plan_for(_sd15_fp16(), JobShape(512, 512, 4))
    roomy = choose_mode(plan, 22 * GIB, MemoryMode.MEDVRAM)
    assert roomy.mode is MemoryMode.MEDVRAM and "--medvram was given" in roomy.reason
    lowvram = plan.for_mode(MemoryMode.LOWVRAM)
    with pytest.raises(NotEnoughMemoryError, match="restarting with --lowvram"):
        choose_mode(plan, lowvram.peak_bytes + 1, MemoryMode.MEDVRAM)
    # medvram-sdxl is full for an SD1.5 model
    assert choose_mode(plan, 22 * GIB, MemoryMode.MEDVRAM_SDXL).mode is MemoryMode.FULL


def test_nothing_is_refused_off_cuda() -> None:
    plan = plan_for(_sd15_fp16("cpu"), JobShape(2048, 2048, 8))
    choice = choose_mode(plan, None, None)
    assert choice.mode is MemoryMode.FULL and choice.fits is None
    assert choice.plan.overhead_bytes == 0 and "share system memory" in choice.reason


def test_the_api_answers_a_refusal_with_507_and_the_advice() -> None:
    error = NotEnoughMemoryError("Not enough GPU memory for this job. Try a batch size of 2 or less.",
                                 needed_bytes=5 * GIB, available_bytes=3 * GIB, suggestions=("a batch size of 2",))
    reply = error_response(error)
    assert reply.status_code == 507
    body = json.loads(reply.body)
    assert body["error"] == "NotEnoughMemoryError" and "batch size of 2 or less" in body["detail"]
