"""The memory estimate beside the Generate button: through the generation service, and as the
browser gets it from the UI's event (the real app, the tiny models, on the CPU)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.params import GenerationRequest, HiresFix
from modules.web.credentials import load_auth
from tests.conftest import make_services
from tests.gradio_events import event_name, run_event

ESTIMATE = "modules.ui.generation_form:_memory_estimate_event.<locals>.estimate"
FIRST_JOB = GenerationRequest(prompt="a red cube", steps=2, width=64, height=64, seed=1, sampler="Euler",
                              checkpoint="tiny-sd15.safetensors", save_images=False)


def mib(summary: str) -> float:
    found = re.search(r"Estimated peak memory: ([\d.]+) (MiB|GiB)", summary)
    assert found is not None, summary
    return float(found.group(1)) * (1024 if found.group(2) == "GiB" else 1)


@pytest.fixture(scope="module")
def app_and_services(tiny_models, tmp_path_factory) -> Iterator[tuple[object, object]]:
    flags = parse_flags(["--api"], {})
    services = make_services(tmp_path_factory.mktemp("data"), tiny_models.folder)
    app = app_module._build_app(flags, services, load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth))
    yield app, services
    services.close()


def test_without_a_model_the_estimate_asks_for_one(app_and_services) -> None:
    _app, services = app_and_services
    if services.models.loaded_model() is not None:
        services.models.unload()
    assert services.generation.estimate_memory(GenerationRequest()).summary == \
        "Estimated peak memory: load a model to estimate"


def test_the_estimate_grows_with_size_batch_and_hires_fix(app_and_services) -> None:
    _app, services = app_and_services
    services.generation.generate(FIRST_JOB)  # loads the tiny model
    small = services.generation.estimate_memory(GenerationRequest(width=64, height=64))
    assert small.summary.startswith("Estimated peak memory: ") and "(full), in system memory" in small.summary
    bigger = services.generation.estimate_memory(GenerationRequest(width=128, height=128, batch_size=4))
    hires = services.generation.estimate_memory(GenerationRequest(width=64, height=64,
                                                                  hires=HiresFix(scale=4.0, upscaler="Latent")))
    assert mib(small.summary) < mib(bigger.summary)
    assert mib(small.summary) < mib(hires.summary)
    assert small.fits is None  # the CPU shares system memory: nothing is refused


def _estimate_data(block_fn, values: dict[str, object]) -> list[object]:
    """The event's input values in its own order, by elem_id; the controls' defaults otherwise."""
    return [values.get(getattr(c, "elem_id", None), getattr(c, "value", None)) for c in block_fn.inputs]


def test_the_txt2img_tab_shows_the_estimate_for_the_form_values(app_and_services) -> None:
    app, services = app_and_services
    services.generation.generate(FIRST_JOB)
    blocks = next(e.blocks for e in app.faces.effects if hasattr(e, "blocks"))
    index, block_fn = next((i, f) for i, f in blocks.fns.items() if event_name(f) == ESTIMATE
                           and any(getattr(c, "elem_id", None) == "txt2img_enable_hr" for c in f.inputs))
    assert [getattr(c, "elem_id", None) for c in block_fn.outputs] == ["txt2img_memory_estimate"]
    shown = {}
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for label, values in (("small", {"txt2img_width": 64, "txt2img_height": 64, "txt2img_batch_size": 1}),
                              ("big", {"txt2img_width": 256, "txt2img_height": 256, "txt2img_batch_size": 2}),
                              ("hires", {"txt2img_width": 64, "txt2img_height": 64, "txt2img_batch_size": 1,
                                         "txt2img_enable_hr": True, "txt2img_hr_scale": 4.0})):
            message = run_event(client, index, _estimate_data(block_fn, values))
            assert message["success"], message
            shown[label] = message["output"]["data"][0]
    assert "(full), in system memory" in shown["small"]
    assert mib(shown["small"]) < mib(shown["hires"]) and mib(shown["small"]) < mib(shown["big"])
    expected = services.generation.estimate_memory(GenerationRequest(width=256, height=256, batch_size=2))
    assert shown["big"] == expected.summary
