"""ControlNet's UI panel built offline: each unit's controls give the unit dict a REST client sends
(webuiapi's ControlNetUnit), give its values back from a unit dict, and follow the chosen module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from modules.extension_api import PanelValue, UiPanel

CN_UI = Path(__file__).resolve().parents[2] / "extensions" / "controlnet" / "cn_ui.py"
PREFIX = "txt2img_ext_controlnet"
DETAIL = {
    "none": {"model_free": False, "sliders": []},
    "canny": {"model_free": False, "sliders": [
        {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255},
        {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255}]},
    "reference_only": {"model_free": True, "sliders": [
        None, {"name": "Style Fidelity (only for Balanced mode)", "value": 0.5, "min": 0, "max": 1, "step": 0.01}]},
}


@pytest.fixture(scope="module")
def cn_ui() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cn_ui_under_test", CN_UI)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def picture(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8), "RGB")


def build(cn_ui: ModuleType, tab: str = "txt2img", declared: int = 3) -> tuple[gr.Blocks, dict[str, PanelValue], list]:
    runs: list[tuple] = []

    def run(host, image, module, res, a, b):
        runs.append((host, image.size, module, res, a, b))
        return Image.new("RGB", image.size, "white")

    preprocessors = cn_ui.Preprocessors(names=lambda: ["none", "canny", "reference_only"], detail=lambda: DETAIL,
                                        run=run)
    with gr.Blocks() as blocks:
        built = cn_ui.build_panel(UiPanel(tab=tab, elem_prefix=PREFIX.replace("txt2img", tab), host="the host"),
                                  lambda host: ["tiny-canny [0123abcd]"], preprocessors, declared=declared)
    return blocks, built, runs


def test_three_units_with_prefixed_stable_ids(cn_ui) -> None:
    _blocks, built, _runs = build(cn_ui, declared=5)
    assert list(built) == ["unit_0", "unit_1", "unit_2", "unit_3", "unit_4"]
    # units past the three tabs have no controls and stay off, whatever is pasted
    assert built["unit_4"].combine(None) is None and list(built["unit_4"].split({"enabled": True})) == [None]
    ids = [c.elem_id for c in built["unit_1"].components]
    assert ids == [f"{PREFIX}_unit1_{name}" for name in (
        "enable", "image", "use_tab_image", "low_vram", "pixel_perfect", "module", "model", "weight",
        "guidance_start", "guidance_end", "processor_res", "threshold_a", "threshold_b", "control_mode",
        "resize_mode")]
    model = built["unit_0"].components[6]
    assert [choice[0] for choice in model.choices] == ["None", "tiny-canny [0123abcd]"]


def test_combine_gives_what_webuiapi_sends(cn_ui) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    _blocks, built, _runs = build(cn_ui)
    image = picture()
    unit = built["unit_0"].combine(True, image, False, True, True, "canny", "tiny-canny [0123abcd]", 0.8, 0.1, 0.9,
                                   256, 100, 200, "ControlNet is more important", "Just Resize")
    sent = webuiapi.ControlNetUnit(image=image, module="canny", model="tiny-canny [0123abcd]", weight=0.8,
                                   resize_mode="Just Resize", low_vram=True, processor_res=256, threshold_a=100,
                                   threshold_b=200, guidance_start=0.1, guidance_end=0.9, control_mode=2,
                                   pixel_perfect=True).to_dict()
    assert unit == {k: v for k, v in sent.items() if k not in ("mask", "hr_option")}


def test_split_gives_the_controls_back(cn_ui) -> None:
    _blocks, built, _runs = build(cn_ui)
    values = [True, picture(1), False, False, True, "canny", "tiny-canny [0123abcd]", 1.5, 0.2, 0.7, 384, 50.0,
              150.0, "My prompt is more important", "Resize and Fill"]
    back = built["unit_2"].split(built["unit_2"].combine(*values))
    assert np.array_equal(np.asarray(back[1]), np.asarray(values[1]))
    assert back[:1] + back[2:] == values[:1] + values[2:]
    # a pasted infotext: no image, modes by name or (A1111's API) by number
    pasted = built["unit_0"].split({"enabled": True, "module": "canny", "model": "m [1]", "weight": 0.5,
                                    "control_mode": 2, "resize_mode": 0})
    assert pasted[1] is None and pasted[5:8] == ["canny", "m [1]", 0.5]
    assert pasted[13:] == ["ControlNet is more important", "Just Resize"]
    defaults = built["unit_0"].split({"module": "canny", "processor_res": -1, "threshold_a": -1})
    assert defaults[10:13] == [512, 100.0, 200.0]  # -1 (and left out): the module's own defaults
    off = built["unit_0"].split(None)
    assert off[0] is False and off[5:7] == ["none", "None"]


def test_a_unit_left_off_or_on_the_tabs_image_sends_no_image(cn_ui) -> None:
    _blocks, built, _runs = build(cn_ui, tab="img2img")
    combine = built["unit_0"].combine
    base = [True, picture(), False, False, False, "canny", "None", 1, 0, 1, 512, 100, 200, "Balanced",
            "Crop and Resize"]
    assert combine(*base)["image"]
    assert combine(*[False, *base[1:]])["image"] is None
    assert combine(*[*base[:2], True, *base[3:]])["image"] is None
    use_tab = built["unit_0"].components[2]
    assert use_tab.visible and use_tab.value is True  # img2img: the tab's image unless one is uploaded
    assert built["unit_0"].split({"enabled": True})[2] is True


def test_sliders_follow_the_module(cn_ui) -> None:
    res, a, b = cn_ui.slider_updates(DETAIL, "canny", pixel_perfect=False, with_value=True)
    assert (a["label"], a["minimum"], a["maximum"], a["value"]) == ("Canny Low Threshold", 1, 255, 100)
    assert b["label"] == "Canny High Threshold" and res["visible"] is True and res["value"] == 512
    res, a, b = cn_ui.slider_updates(DETAIL, "reference_only", pixel_perfect=False, with_value=False)
    assert res["visible"] is False and b["visible"] is False
    assert a["label"].startswith("Style Fidelity") and "value" not in a  # a paste keeps its value
    res, _a, _b = cn_ui.slider_updates(DETAIL, "canny", pixel_perfect=True, with_value=False)
    assert res["visible"] is False  # pixel perfect picks the resolution


def test_events_are_private_and_preview_runs_the_preprocessor(cn_ui) -> None:
    blocks, _built, runs = build(cn_ui)
    assert blocks.fns and {fn.api_visibility for fn in blocks.fns.values()} == {"private"}
    previews = [fn.fn for fn in blocks.fns.values() if fn.fn.__name__ == "on_preview"]
    assert len(previews) == 3
    shown = previews[0](picture(), "canny", 256, 100, 200)
    assert shown["visible"] is True and shown["value"].size == (32, 24)
    assert runs == [("the host", (32, 24), "canny", 256, 100.0, 200.0)]


def test_the_real_preprocessors_detail_drives_the_sliders(cn_ui, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(CN_UI.parent))  # as while the extension's main.py is imported
    loaded = set(sys.modules)
    try:
        cn_preprocess = importlib.import_module("cn_preprocess")
        detail, names = cn_preprocess.module_detail(), cn_preprocess.module_list()
    finally:  # the extension's helpers are the extension loader's to import, not this test's
        for name in set(sys.modules) - loaded:
            if name.startswith("cn_"):
                del sys.modules[name]
    assert "canny" in names
    res, a, b = cn_ui.slider_updates(detail, "canny", pixel_perfect=False, with_value=True)
    assert res["label"] == "Preprocessor Resolution" and res["visible"] is True
    assert "Low" in a["label"] and "High" in b["label"] and a["value"] < b["value"]
    res, a, b = cn_ui.slider_updates(detail, "none", pixel_perfect=False, with_value=True)
    assert res["visible"] is False and a["visible"] is False and b["visible"] is False
