"""The ControlNet preprocessors (extensions/controlnet/cn_preprocess*.py): A1111's module names and
aliases, slider ranges, the model-free maps, and the model-based ones on tiny random weights."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from modules.devtools.tiny_annotators import write_tiny_annotators

EXTENSION = Path(__file__).resolve().parents[2] / "extensions" / "controlnet"


@pytest.fixture(scope="module")
def cp() -> ModuleType:
    # the extension loader puts the extension's folder on sys.path while it imports main.py
    sys.path.insert(0, str(EXTENSION))
    try:
        return importlib.import_module("cn_preprocess")
    finally:
        sys.path.remove(str(EXTENSION))


class FakeHost:
    """A host whose download hands back the pre-placed (tiny) file and records what was asked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls: list[tuple[str, str, str, str]] = []

    def download(self, url: str, kind: str, file_name: str, sha256: str) -> Path:
        self.calls.append((url, kind, file_name, sha256))
        path = self.folder / file_name
        if not path.exists():
            raise RuntimeError(f"cannot fetch {url}: put {file_name} in {self.folder}")
        return path


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("annotators")
    write_tiny_annotators(folder)
    return folder


def square(size: tuple[int, int] = (64, 64), level: int = 255) -> Image.Image:
    """A ``level`` square in the middle of a black picture (width, height)."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = level
    return Image.fromarray(pixels)


def noise(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_canny_draws_the_square_outline_only(cp: ModuleType) -> None:
    edges = np.asarray(cp.run("canny", square(), 64, 100, 200))
    assert edges.shape == (64, 64, 3)
    assert edges[16, 20:44].max() == 255 or edges[15, 20:44].max() == 255  # the top side
    assert edges[30:34, 30:34].max() == 0  # inside the square
    assert edges[:8].max() == 0 and edges[:, :8].max() == 0  # far background


def test_canny_thresholds_decide_which_edges_count(cp: ModuleType) -> None:
    faint = square(level=40)
    assert np.asarray(cp.run("canny", faint, 64, 10, 20)).max() == 255
    assert np.asarray(cp.run("canny", faint, 64, 250, 255)).max() == 0


def test_unset_thresholds_use_the_slider_defaults(cp: ModuleType) -> None:
    image = noise()
    defaults = np.asarray(cp.run("canny", image, 64, 100, 200))
    assert np.array_equal(np.asarray(cp.run("canny", image, 64, -1, -1)), defaults)
    at_default_res = np.asarray(cp.run("canny", image, 512, 100, 200))
    assert np.array_equal(np.asarray(cp.run("canny", image)), at_default_res)


@pytest.mark.parametrize(("module", "kwargs", "range_text"), [
    ("canny", {"threshold_a": 0}, "between 1 and 255"),
    ("canny", {"threshold_b": 300}, "between 1 and 255"),
    ("canny", {"processor_res": 32}, "between 64 and 2048"),
    ("mlsd", {"threshold_b": 25}, "between 0.01 and 20"),
    ("tile_resample", {"threshold_a": 9}, "between 1 and 8"),
])
def test_out_of_range_values_are_refused_naming_the_range(cp: ModuleType, module: str, kwargs: dict,
                                                          range_text: str) -> None:
    with pytest.raises(ValueError, match=range_text):
        cp.run(module, square(), **kwargs)


def test_values_a_module_has_no_slider_for_are_ignored(cp: ModuleType) -> None:
    image = noise()
    # A1111 clients send threshold_a/b 64 and processor_res 512 for every unit
    unchanged = cp.run("none", image, processor_res=4096, threshold_a=999, threshold_b=-5)
    assert np.array_equal(np.asarray(unchanged), np.asarray(image))
    assert np.array_equal(np.asarray(cp.run("invert (from white bg & black line)", image, threshold_a=999)),
                          255 - np.asarray(image))


@pytest.mark.parametrize(("alias", "canonical"), [
    ("hed", "softedge_hed"), ("pidinet", "softedge_pidinet"), ("depth", "depth_midas"),
    ("normal_map", "normal_midas"), ("lineart", "lineart_realistic"), ("inpaint", "inpaint_global_harmonious"),
    ("invert", "invert (from white bg & black line)"), ("pidinet_scribble", "scribble_pidinet"),
    ("te_hed", "softedge_teed"), ("openpose_hand", "openpose_hand"), ("Canny", "canny"),
])
def test_a1111_aliases_name_the_same_module(cp: ModuleType, alias: str, canonical: str) -> None:
    assert cp.check_module(alias) == canonical


def test_an_unknown_module_is_refused_listing_the_available_ones(cp: ModuleType) -> None:
    with pytest.raises(ValueError, match="available: .*canny.*softedge_hed"):
        cp.check_module("no_such_module")
    with pytest.raises(ValueError, match="no_such_module"):
        cp.run("no_such_module", square())


def test_module_list_matches_a1111_names(cp: ModuleType) -> None:
    names = cp.module_list()
    assert names[:2] == ["none", "invert (from white bg & black line)"]
    assert names[2:] == sorted(names[2:])
    for expected in ("canny", "scribble_xdog", "softedge_hed", "softedge_pidisafe", "lineart_realistic",
                     "lineart_anime", "depth_midas", "depth_leres", "normal_bae", "openpose_full", "mlsd",
                     "shuffle", "tile_resample", "inpaint_only", "threshold", "blur_gaussian"):
        assert expected in names
    internal = cp.module_list(alias_names=False)
    assert len(internal) == len(names) and "hed" in internal and "softedge_hed" not in internal
    assert all(cp.check_module(key) in names for key in internal)


def test_module_detail_has_a1111_slider_shape(cp: ModuleType) -> None:
    detail = cp.module_detail()
    assert list(detail) == cp.module_list()
    assert detail["canny"] == {"model_free": False, "sliders": [
        {"name": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048, "step": 1},
        {"name": "Canny Low Threshold", "value": 100, "min": 1, "max": 255, "step": 1},
        {"name": "Canny High Threshold", "value": 200, "min": 1, "max": 255, "step": 1},
    ]}
    # the slot says which of threshold_a / threshold_b a slider sets: unused earlier slots are null
    assert detail["tile_resample"]["sliders"] == [
        None, {"name": "Down Sampling Rate", "value": 1.0, "min": 1.0, "max": 8.0, "step": 0.01}]
    assert detail["none"]["sliders"] == []
    assert [s["name"] for s in detail["mlsd"]["sliders"]] == [
        "Preprocessor Resolution", "MLSD Value Threshold", "MLSD Distance Threshold"]
    assert set(cp.module_detail(alias_names=False)) == set(cp.module_list(alias_names=False))
    assert cp.slider_specs("hed").threshold_a is None and cp.slider_specs("hed").resolution is not None


def test_annotators_scale_the_shorter_side_to_processor_res_keeping_the_aspect(cp: ModuleType) -> None:
    image = square((100, 70))
    assert cp.run("canny", image, 64).size == (91, 64)
    assert cp.run("scribble_xdog", image, 140).size == (200, 140)
    assert cp.run("tile_resample", image, threshold_a=2).size == (50, 35)
    assert cp.run("inpaint_only", image).size == (100, 70)


def test_model_free_maps(cp: ModuleType) -> None:
    image = noise()
    for module in ("scribble_xdog", "threshold"):
        assert set(np.unique(np.asarray(cp.run(module, image, 64)))) <= {0, 255}
    grey = np.asarray(cp.run("recolor_luminance", image))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    blurred = np.asarray(cp.run("blur_gaussian", image, 64, 4.0)).astype(float)
    assert blurred.std() < np.asarray(image).astype(float).std() / 2
    cells = np.asarray(cp.run("t2ia_color_grid", square((128, 128)), 128))
    assert len(np.unique(cells.reshape(-1, 3), axis=0)) <= 4  # 2x2 cells of 64 px


def test_shuffle_follows_its_seed(cp: ModuleType) -> None:
    image = noise((64, 64))
    first = np.asarray(cp.run("shuffle", image, 64, seed=3))
    assert np.array_equal(first, np.asarray(cp.run("shuffle", image, 64, seed=3)))
    assert not np.array_equal(first, np.asarray(cp.run("shuffle", image, 64, seed=4)))
    assert not np.array_equal(first, np.asarray(image))


TINY_MODULES = ("softedge_hed", "softedge_hedsafe", "scribble_hed", "softedge_pidinet", "scribble_pidinet",
                "t2ia_sketch_pidi", "lineart_realistic", "lineart_coarse", "mlsd", "softedge_teed")


def test_model_based_modules_run_on_tiny_weights(cp: ModuleType, tiny_folder: Path) -> None:
    host, cache = FakeHost(tiny_folder), cp.AnnotatorCache(max_models=8)
    for module in TINY_MODULES:
        result = cp.run(module, noise((96, 64)), 64, host=host, device="cpu", cache=cache)
        assert result.mode == "RGB" and result.size == (96, 64), module
    asked = {name for _, _, name, _ in host.calls}
    assert asked == {"ControlNetHED.pth", "table5_pidinet.pth", "sk_model.pth", "sk_model2.pth",
                     "mlsd_large_512_fp32.pth", "7_model.pth"}
    for url, kind, name, sha256 in host.calls:
        assert kind == "ControlNetAnnotators" and url.startswith("https://huggingface.co/") and url.endswith(name)
        assert re.fullmatch(r"[0-9a-f]{64}", sha256)
    assert len(cache) == len(asked)  # each file loaded once, whatever uses it


def test_the_cache_keeps_at_most_its_size(cp: ModuleType, tiny_folder: Path) -> None:
    host, cache = FakeHost(tiny_folder), cp.AnnotatorCache(max_models=1)
    for module in ("softedge_pidinet", "softedge_teed", "softedge_pidinet"):
        cp.run(module, noise((64, 64)), 64, host=host, cache=cache)
    assert len(cache) == 1


def test_a_missing_weight_file_fails_with_the_hosts_message(cp: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"https://huggingface.co/.*netG\.pth"):
        cp.run("lineart_anime", noise(), 64, host=FakeHost(tmp_path))
    with pytest.raises(RuntimeError, match="no host"):
        cp.run("softedge_hed", noise(), 64)


def test_every_model_based_module_names_checked_weight_files(cp: ModuleType) -> None:
    for module in cp.module_list():
        for weights in cp.weight_files(module):
            assert weights.url.startswith("https://") and weights.url.endswith("/" + weights.name)
            assert re.fullmatch(r"[0-9a-f]{64}", weights.sha256)
    assert cp.weight_files("canny") == () and cp.weight_files("openpose_full")
