"""The ControlNet preprocessors ("modules" in A1111's ControlNet extension): their names and aliases,
the slider definitions /controlnet/module_list reports, the range checks of processor_res and
threshold_a/b, and running one over an image (``run``).

Names follow sd-webui-controlnet: each module has an internal key ("hed", "depth", "normal_map", ...)
and the name its UI shows ("softedge_hed", "depth_midas", "normal_midas", ...); either is accepted,
the UI name is canonical. Only preprocessors that really run here are listed: the model-free ones
and those whose weights controlnet_aux loads from a file with a published checksum."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cn_preprocess_free as free
import cn_preprocess_models as models
import numpy as np
from cn_preprocess_models import AnnotatorCache, WeightFile
from PIL import Image

if TYPE_CHECKING:  # torch is imported where used: loading the extension must not import it
    import torch

__all__ = ["AnnotatorCache", "Slider", "Sliders", "WeightFile", "check_module", "module_detail", "module_list",
           "run", "slider_specs", "weight_files"]


@dataclass(frozen=True)
class Slider:
    """One slider of a preprocessor, as A1111's module_detail lists it."""

    name: str
    value: float
    min: float
    max: float
    step: float

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "value": self.value, "min": self.min, "max": self.max, "step": self.step}


@dataclass(frozen=True)
class Sliders:
    """What processor_res, threshold_a and threshold_b mean for a module (None: not used)."""

    resolution: Slider | None
    threshold_a: Slider | None
    threshold_b: Slider | None


@dataclass(frozen=True)
class _Call:
    image: np.ndarray
    resolution: int
    threshold_a: float
    threshold_b: float
    host: Any
    device: torch.device
    cache: AnnotatorCache
    seed: int | None


@dataclass(frozen=True)
class _Module:
    key: str  # A1111's internal name
    name: str  # the name A1111's UI shows
    sliders: Sliders
    apply: Callable[[_Call], np.ndarray]
    weights: tuple[WeightFile, ...] = ()


_RES = Slider("Preprocessor Resolution", 512, 64, 2048, 1)
_NONE = Sliders(None, None, None)


def _res(a: Slider | None = None, b: Slider | None = None) -> Sliders:
    return Sliders(_RES, a, b)


def _annotate(run_model: Callable[[models.ModelCall], np.ndarray]) -> Callable[[_Call], np.ndarray]:
    """A network preprocessor the A1111 way: scaled and padded to multiples of 64, run, unpadded."""

    def apply(call: _Call) -> np.ndarray:
        if call.host is None:
            raise RuntimeError("this preprocessor needs its model files, and no host was given to fetch them")
        padded, remove_pad = free.resize_with_pad(call.image, call.resolution)
        model_call = models.ModelCall(padded, call.host, call.cache, call.device, call.threshold_a, call.threshold_b)
        return remove_pad(free.hwc3(run_model(model_call)))

    return apply


def _model(key: str, name: str, sliders: Sliders, run_model: Callable[[models.ModelCall], np.ndarray],
           *weights: WeightFile) -> _Module:
    return _Module(key, name, sliders, _annotate(run_model), weights)


_IP_ADAPTER_KEYS = ("ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith", "ip-adapter-auto")

# A1111's preprocessor table order (its internal-name list); names not offered here are left out
_ORDER = ("none", "canny", "depth", "depth_leres", "hed", "hed_safe", "mlsd", "normal_map", "openpose",
          "openpose_hand", "openpose_face", "openpose_faceonly", "openpose_full", "color", "pidinet",
          "pidinet_safe", "pidinet_sketch", "pidinet_scribble", "scribble_xdog", "scribble_hed", "threshold",
          "normal_bae", "lineart", "lineart_coarse", "lineart_anime", "lineart_standard", "shuffle",
          "tile_resample", "invert", "inpaint", "inpaint_only", "recolor_luminance", "recolor_intensity",
          "blur_gaussian", "te_hed", *_IP_ADAPTER_KEYS)


def _free_modules() -> tuple[_Module, ...]:
    gamma = Sliders(None, Slider("Gamma Correction", 1.0, 0.1, 2.0, 0.001), None)
    return (
        _Module("none", "none", _NONE, lambda c: c.image),
        _Module("canny", "canny", _res(Slider("Canny Low Threshold", 100, 1, 255, 1),
                                       Slider("Canny High Threshold", 200, 1, 255, 1)),
                lambda c: free.canny(c.image, c.resolution, c.threshold_a, c.threshold_b)),
        _Module("color", "t2ia_color_grid", _res(), lambda c: free.color_grid(c.image, c.resolution)),
        _Module("scribble_xdog", "scribble_xdog", _res(Slider("XDoG Threshold", 32, 1, 64, 1)),
                lambda c: free.scribble_xdog(c.image, c.resolution, c.threshold_a)),
        _Module("threshold", "threshold", _res(Slider("Binarization Threshold", 127, 0, 255, 1)),
                lambda c: free.threshold(c.image, c.resolution, c.threshold_a)),
        _Module("lineart_standard", "lineart_standard (from white bg & black line)", _res(),
                lambda c: free.lineart_standard(c.image, c.resolution)),
        _Module("shuffle", "shuffle", _res(), lambda c: free.shuffle(c.image, c.resolution, c.seed)),
        _Module("tile_resample", "tile_resample",
                Sliders(None, Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01), None),
                lambda c: free.tile_resample(c.image, c.threshold_a)),
        _Module("invert", "invert (from white bg & black line)", _NONE, lambda c: free.invert(c.image)),
        # the mask is the unit's business (the extension applies it); the image passes unchanged
        _Module("inpaint", "inpaint_global_harmonious", _NONE, lambda c: c.image),
        _Module("inpaint_only", "inpaint_only", _NONE, lambda c: c.image),
        _Module("recolor_luminance", "recolor_luminance", gamma,
                lambda c: free.recolor_luminance(c.image, c.threshold_a)),
        _Module("recolor_intensity", "recolor_intensity", gamma,
                lambda c: free.recolor_intensity(c.image, c.threshold_a)),
        _Module("blur_gaussian", "blur_gaussian", _res(Slider("Sigma", 9.0, 0.01, 64.0, 0.01)),
                lambda c: free.blur_gaussian(c.image, c.resolution, c.threshold_a)),
        # IP-Adapter's image encoders: the image goes to the unit's IP-Adapter as it is; the CLIP image
        # encoder that fits the adapter (in models/clip_vision) is found by its size, whichever is named
        *(_Module(key, key, _NONE, lambda c: c.image) for key in _IP_ADAPTER_KEYS),
    )


def _network_modules() -> tuple[_Module, ...]:
    m = models
    pose = (m.BODY,)
    return (
        _model("depth", "depth_midas", _res(), m.midas, m.MIDAS),
        _model("depth_leres", "depth_leres", _res(Slider("Remove Near %", 0, 0, 100, 0.1),
                                                  Slider("Remove Background %", 0, 0, 100, 0.1)), m.leres, m.LERES),
        _model("hed", "softedge_hed", _res(), m.hed, m.HED),
        _model("hed_safe", "softedge_hedsafe", _res(), lambda c: m.hed(c, safe=True), m.HED),
        _model("mlsd", "mlsd", _res(Slider("MLSD Value Threshold", 0.1, 0.01, 2.0, 0.01),
                                    Slider("MLSD Distance Threshold", 0.1, 0.01, 20.0, 0.01)), m.mlsd, m.MLSD),
        _model("normal_map", "normal_midas", _res(Slider("Normal Background Threshold", 0.4, 0.0, 1.0, 0.01)),
               lambda c: m.midas(c, normal=True), m.MIDAS),
        _model("openpose", "openpose", _res(), m.openpose, *pose),
        _model("openpose_hand", "openpose_hand", _res(), lambda c: m.openpose(c, hand=True), *pose, m.HAND),
        _model("openpose_face", "openpose_face", _res(), lambda c: m.openpose(c, face=True), *pose, m.FACE),
        _model("openpose_faceonly", "openpose_faceonly", _res(), lambda c: m.openpose(c, body=False, face=True),
               *pose, m.FACE),
        _model("openpose_full", "openpose_full", _res(), lambda c: m.openpose(c, hand=True, face=True),
               *pose, m.HAND, m.FACE),
        _model("pidinet", "softedge_pidinet", _res(), m.pidinet, m.PIDINET),
        _model("pidinet_safe", "softedge_pidisafe", _res(), lambda c: m.pidinet(c, safe=True), m.PIDINET),
        _model("pidinet_sketch", "t2ia_sketch_pidi", _res(), lambda c: m.pidinet(c, apply_filter=True), m.PIDINET),
        _model("pidinet_scribble", "scribble_pidinet", _res(), lambda c: m.pidinet(c, scribble=True), m.PIDINET),
        _model("scribble_hed", "scribble_hed", _res(), lambda c: m.hed(c, scribble=True), m.HED),
        _model("normal_bae", "normal_bae", _res(), m.normal_bae, m.NORMAL_BAE),
        _model("lineart", "lineart_realistic", _res(), m.lineart, m.LINEART),
        _model("lineart_coarse", "lineart_coarse", _res(), lambda c: m.lineart(c, coarse=True), m.LINEART_COARSE),
        _model("lineart_anime", "lineart_anime", _res(), m.lineart_anime, m.LINEART_ANIME),
        _model("te_hed", "softedge_teed", _res(Slider("Safe Steps", 2, 0, 10, 1)), m.teed, m.TEED),
    )


def _modules() -> tuple[_Module, ...]:
    by_key = {module.key: module for module in (*_free_modules(), *_network_modules())}
    return tuple(by_key[key] for key in _ORDER)


def module_list(alias_names: bool = True) -> list[str]:
    """The modules: by default the names A1111's UI shows ("none", "invert (...)", then the rest
    sorted, as its dropdown lists them); ``alias_names=False`` gives A1111's internal names in its
    table's order (what GET /controlnet/module_list returns without ``?alias_names=true``)."""
    table = _modules()
    if not alias_names:
        return [module.key for module in table]
    first = ["none", "invert (from white bg & black line)"]
    return first + sorted(module.name for module in table if module.name not in first)


def _find(name: str) -> _Module | None:
    modules = _modules()
    for module in modules:
        if name in (module.name, module.key):
            return module
    folded = name.strip().lower()
    return next((m for m in modules if folded in (m.name.lower(), m.key.lower())), None)


def check_module(name: str) -> str:
    """The canonical (UI) name of ``name``, which may be A1111's internal name ("hed" ->
    "softedge_hed"); ValueError listing the modules available otherwise."""
    module = _find(name)
    if module is None:
        raise ValueError(f"Unknown ControlNet module {name!r}; available: {', '.join(module_list())}")
    return module.name


def slider_specs(name: str) -> Sliders:
    """What processor_res / threshold_a / threshold_b mean for the module ``name``."""
    module = _find(check_module(name))
    assert module is not None
    return module.sliders


def weight_files(name: str) -> tuple[WeightFile, ...]:
    """The weight files the module ``name`` downloads on first use (none for model-free ones)."""
    module = _find(check_module(name))
    assert module is not None
    return module.weights


def _sliders_json(sliders: Sliders) -> list[dict[str, object] | None]:
    # positions matter (0 resolution, 1 threshold_a, 2 threshold_b): an unused one before a used
    # one is null, as A1111 writes it; trailing unused ones are left off
    items = [sliders.resolution, sliders.threshold_a, sliders.threshold_b]
    while items and items[-1] is None:
        items.pop()
    return [item.as_json() if item is not None else None for item in items]


def module_detail(alias_names: bool = True) -> dict[str, dict[str, object]]:
    """A1111's module_detail: {module: {"model_free": bool, "sliders": [...]}}. ``model_free`` is
    A1111's meaning (works without a ControlNet model: only its reference/revision modules, which
    are not offered), so it is False throughout."""
    names = module_list(alias_names)
    by_name = {(m.name if alias_names else m.key): m for m in _modules()}
    return {name: {"model_free": False, "sliders": _sliders_json(by_name[name].sliders)} for name in names}


def _checked(value: float | None, slider: Slider | None, what: str, module: str) -> float:
    """The value to use: the slider's default when not given (None, or A1111's -1 "unset")."""
    if slider is None:
        return 0.0
    if value is None or value == -1:
        return float(slider.value)
    number = float(value)
    if not slider.min <= number <= slider.max:
        raise ValueError(f"{what} for {module} ({slider.name}) must be between {slider.min:g} and "
                         f"{slider.max:g}, not {number:g}")
    return number


def _rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return free.hwc3(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"))


def run(module: str, image: Image.Image, processor_res: int | None = None, threshold_a: float | None = None,
        threshold_b: float | None = None, host: Any = None, device: torch.device | str | None = None,
        cache: AnnotatorCache | None = None, seed: int | None = None) -> Image.Image:
    """The control map of ``image`` made by ``module`` (RGB). Annotators return it with the shorter
    side at ``processor_res`` (A1111's detect does the same); model-free ones that take no
    resolution keep the image's size. Values out of a slider's range are refused (ValueError naming
    it); thresholds a module has no slider for are ignored. Model files are fetched through
    ``host.download`` once and kept loaded in ``cache`` (one per worker)."""
    import torch

    found = _find(check_module(module))
    assert found is not None
    sliders = found.sliders
    call = _Call(
        image=_rgb_array(image),
        resolution=int(_checked(processor_res, sliders.resolution, "processor_res", found.name)),
        threshold_a=_checked(threshold_a, sliders.threshold_a, "threshold_a", found.name),
        threshold_b=_checked(threshold_b, sliders.threshold_b, "threshold_b", found.name),
        host=host,
        device=torch.device(device) if device is not None else torch.device("cpu"),
        cache=cache if cache is not None else AnnotatorCache(),
        seed=seed,
    )
    with torch.no_grad():
        result = found.apply(call)
    return Image.fromarray(free.hwc3(np.asarray(result))).convert("RGB")
