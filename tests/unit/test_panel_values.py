"""An extension panel's several-component params (PanelValue) and JSON params: read into the job's
params as the extension combines them, refused next to their control, and filled back from a pasted
infotext through the extension's infotext readers (named and positional)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pytest

from modules.devtools.extension_testing import start_atelier, tiny_request
from modules.errors import ValidationError
from modules.ui.extension_panels import ExtensionControls, build_extension_controls
from modules.ui.infotext_fill import extension_values

FIXTURE = Path(__file__).parents[1] / "fixtures" / "extensions_v2" / "panel_probe"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExtensionControls, object]]:
    tmp = tmp_path_factory.mktemp("panel")
    with start_atelier(tmp / "data", tmp / "no-models", [FIXTURE], builtin=[]) as services:
        with gr.Blocks():
            controls = build_extension_controls("txt2img", "txt2img", services)
        yield controls, services


def _by_label(controls: ExtensionControls) -> dict[str, object]:
    return {c.label: c for c in controls.inputs() if getattr(c, "label", None)}


def test_the_panel_gives_the_combined_unit_the_weight_and_the_parsed_json(built) -> None:
    controls, services = built
    assert set(controls.panels["panel_probe"]) == {"unit", "weight", "extra"}
    c = _by_label(controls)
    assert {"Module", "Unit strength", "Probe weight", "Extra (JSON)"} <= set(c)  # every component is an input
    received = {control: None for control in controls.inputs()}
    received |= {c["Module"]: "canny", c["Unit strength"]: 0.5, c["Probe weight"]: 1.5,
                 c["Extra (JSON)"]: '{"a": [1, 2]}'}
    params, script, _values = controls.read(received)
    assert script is None
    assert params["panel_probe"] == {"unit": {"module": "canny", "strength": 0.5}, "weight": 1.5,
                                     "extra": {"a": [1, 2]}}
    checked = services.extensions.check_params(replace(tiny_request(), extension_params=params))
    assert checked.extension_params["panel_probe"]["unit"] == {"module": "canny", "strength": 0.5}


def test_a_json_box_that_is_not_what_the_param_takes_is_refused_by_its_name(built) -> None:
    controls, services = built
    c = _by_label(controls)
    received = {control: None for control in controls.inputs()}
    received |= {c["Module"]: "none", c["Unit strength"]: 1.0, c["Probe weight"]: 1.0, c["Extra (JSON)"]: "{oops"}
    params, _script, _values = controls.read(received)
    with pytest.raises(ValidationError) as refused:
        services.extensions.check_params(replace(tiny_request(), extension_params=params))
    assert [e.field for e in refused.value.errors] == ["alwayson_scripts.panel_probe.extra"]
    received[c["Extra (JSON)"]] = ""  # empty: not sent
    assert controls.read(received)[0]["panel_probe"]["extra"] is None


def test_a_pasted_infotext_fills_the_panel_through_the_readers(built) -> None:
    controls, services = built
    c = _by_label(controls)
    text = "a cat\nSteps: 3, Sampler: Euler, Probe unit: depth/0.25, Probe weight: 1.75"
    values = extension_values(text, services)
    assert values == {"panel_probe": {"unit": {"module": "depth", "strength": 0.25}, "weight": 1.75}}
    updates = controls.fill(values)
    assert updates == {c["Module"]: "depth", c["Unit strength"]: 0.25, c["Probe weight"]: 1.75}
    assert set(updates) <= set(controls.outputs())
    positional = controls.fill(extension_values('a cat\nSteps: 3, Seed: 1, Probe all: "canny/0.5/0.75"', services))
    assert positional[c["Module"]] == "canny" and positional[c["Probe weight"]] == 0.75
    assert positional[c["Extra (JSON)"]] == '{\n "from": "positional"\n}'
    # An infotext with none of its keys leaves the panel as it is.
    assert controls.fill(extension_values("a cat\nSteps: 3, Seed: 1, Sampler: Euler", services)) == {}
