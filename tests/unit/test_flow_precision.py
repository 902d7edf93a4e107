"""Flow-matching models compute in bfloat16 rather than the default float16 where the card has it
(their transformers and T5/LLM encoders overflow in fp16), unless the user named the precision."""

from __future__ import annotations

import pytest
import torch

from modules.engine.devices import DeviceInfo, DevicePolicy, choose_device
from modules.precision import Precision


def _cuda(dtype: torch.dtype = torch.float16, forced: bool = False) -> DeviceInfo:
    return DeviceInfo(device=torch.device("cuda", 0), dtype=dtype, reason="CUDA device X; half precision",
                      precision_forced=forced)


def test_default_half_precision_becomes_bf16_for_flow_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    flow = _cuda().for_flow_family()
    assert flow.dtype is torch.bfloat16 and flow.vae is torch.bfloat16
    assert "bfloat16" in flow.describe() and "half precision" not in flow.reason


def test_named_precision_older_cards_and_the_cpu_keep_theirs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    forced = _cuda(forced=True)
    assert forced.for_flow_family() is forced  # --precision half: the user's choice holds
    full = _cuda(dtype=torch.float32)
    assert full.for_flow_family() is full
    cpu = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="cpu")
    assert cpu.for_flow_family() is cpu
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    older = _cuda()
    assert older.for_flow_family() is older  # no bf16 on the card: fp16 it is


@pytest.mark.parametrize(("policy", "forced"), [
    (DevicePolicy(use_cpu=True), False),
    (DevicePolicy(use_cpu=True, precision=Precision.FULL), True),
    (DevicePolicy(use_cpu=True, no_half=True), True),
])
def test_choose_device_records_whether_the_precision_was_named(policy: DevicePolicy, forced: bool) -> None:
    assert choose_device(policy).precision_forced is forced
