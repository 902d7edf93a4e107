"""The emphasis mode in the infotext, as A1111 writes and reads it: ``Emphasis: <mode>`` only for
a mode other than "Original" and only when a scheduled prompt text holds a bracket; reading an
infotext without the key gives "Original" when the prompts weigh words, else keeps the setting."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modules.infotext import ModelIdentity, build_infotext, parse_infotext
from modules.infotext_request import request_from_infotext
from modules.params import GenerationRequest

BASE = GenerationRequest(prompt="a (cat:1.2)", steps=20, sampler="Euler", emphasis="No norm")


def written(request: GenerationRequest) -> dict[str, str]:
    return parse_infotext(build_infotext(request, 1, ModelIdentity("m", "0123456789"), "v1")).params


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, "No norm"),
    ({"emphasis": "None"}, "None"),
    ({"emphasis": "Original"}, None),  # the default is left out
    ({"prompt": "a cat"}, None),  # no bracket: A1111 leaves it out
    ({"prompt": "a [cat:dog:5]"}, None),  # editing schedules to plain texts
    ({"prompt": "a cat", "negative_prompt": "[ugly]"}, "No norm"),
])
def test_written_as_a1111_writes_it(changes: dict, expected: str | None) -> None:
    assert written(replace(BASE, **changes)).get("Emphasis") == expected


def test_key_order_puts_it_before_version() -> None:
    line = build_infotext(BASE, 1, None, "v1").splitlines()[-1]
    assert line.endswith("Emphasis: No norm, Version: v1")


@pytest.mark.parametrize(("text", "kept", "expected"), [
    ("a (cat:1.2)\nSteps: 20, Seed: 1, Emphasis: No norm", "Original", "No norm"),
    ("a (cat:1.2)\nSteps: 20, Seed: 1, Size: 64x64", "No norm", "Original"),  # weights, no key: Original
    ("a cat\nSteps: 20, Seed: 1, Size: 64x64", "No norm", "No norm"),  # nothing weighed: kept
])
def test_read_back(text: str, kept: str, expected: str) -> None:
    request, warnings = request_from_infotext(parse_infotext(text), GenerationRequest(emphasis=kept))
    assert request.emphasis == expected and warnings == []


def test_an_unknown_mode_warns_and_keeps_the_setting() -> None:
    request, warnings = request_from_infotext(parse_infotext("a (b)\nSteps: 20, Seed: 1, Emphasis: Loud"),
                                              GenerationRequest(emphasis="Original"))
    assert request.emphasis == "Original" and "Loud" in warnings[0]
