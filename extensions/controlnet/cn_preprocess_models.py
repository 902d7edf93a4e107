"""The ControlNet preprocessors that run a network: which weight files they need (address and SHA-256,
fetched once through ``host.download`` into the "ControlNetAnnotators" folder), loading them offline with
controlnet_aux's network classes, and the per-worker cache of loaded annotators.

The checksums are the published SHA-256 of lllyasviel's annotator files (the ones A1111's ControlNet
extension downloads); a file whose checksum could not be confirmed is not listed, and neither is its
preprocessor."""

from __future__ import annotations

import functools
import threading
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where used: loading the extension must not import it
    import torch

ANNOTATORS_KIND = "ControlNetAnnotators"
_HUB = "https://huggingface.co/lllyasviel/Annotators/resolve/main/"


@dataclass(frozen=True)
class WeightFile:
    """One annotator weight file: where it is published and its SHA-256."""

    name: str
    url: str
    sha256: str


def _hub(name: str, sha256: str) -> WeightFile:
    return WeightFile(name, _HUB + name, sha256)


HED = _hub("ControlNetHED.pth", "5ca93762ffd68a29fee1af9d495bf6aab80ae86f08905fb35472a083a4c7a8fa")
PIDINET = _hub("table5_pidinet.pth", "80860ac267258b5f27486e0ef152a211d0b08120f62aeb185a050acc30da486c")
LINEART = _hub("sk_model.pth", "c686ced2a666b4850b4bb6ccf0748031c3eda9f822de73a34b8979970d90f0c6")
LINEART_COARSE = _hub("sk_model2.pth", "30a534781061f34e83bb9406b4335da4ff2616c95d22a585c1245aa8363e74e0")
LINEART_ANIME = _hub("netG.pth", "ccabdcc3f5cf3c07cf65d58776acb21df7dfda825cdc70c9766a93fd62bfc488")
MLSD = _hub("mlsd_large_512_fp32.pth", "5696f168eb2c30d4374bbfd45436f7415bb4d88da29bea97eea0101520fba082")
LERES = _hub("res101.pth", "1d696b2ef3e8336b057d0c15bc82d2fecef821bfebe5ef9d7671a5ec5dde520b")
NORMAL_BAE = _hub("scannet.pt", "03dbf1600c51ee3d45c29f77b77bf1a3b7a24c3452dba62a4ae658f37330c209")
BODY = _hub("body_pose_model.pth", "25a948c16078b0f08e236bda51a385d855ef4c153598947c28c0d47ed94bb746")
HAND = _hub("hand_pose_model.pth", "b76b00d1750901abd07b9f9d8c98cc3385b8fe834a26d4b4f0aad439e75fc600")
FACE = _hub("facenet.pth", "8beb52e548624ffcc4aed12af7aee7dcbfaeea420c75609fee999fe7add79d43")
# The MiDaS checksum was published for lllyasviel's ControlNet repository copy, so that copy is the
# address (its name carries the same hash's first 8 digits, as torch hub names do).
MIDAS = WeightFile(
    "dpt_hybrid-midas-501f0c75.pt",
    "https://huggingface.co/lllyasviel/ControlNet/resolve/main/annotator/ckpts/dpt_hybrid-midas-501f0c75.pt",
    "501f0c75b3bca7daec6b3682c5054c09b366765aef6fa3a09d03a5cb4b230853")
# A1111's softedge_teed downloads TEED's weights from this repository (controlnet_aux's TED network).
TEED = WeightFile(
    "7_model.pth", "https://huggingface.co/bdsqlsz/qinglong_controlnet-lllite/resolve/main/Annotators/7_model.pth",
    "b9037964149c55156c6adbffdfbd7e8ca7d2ef2a4d90573520efa7f3a1aacf06")

WEIGHT_FILES: tuple[WeightFile, ...] = (HED, PIDINET, LINEART, LINEART_COARSE, LINEART_ANIME, MLSD, LERES,
                                        NORMAL_BAE, BODY, HAND, FACE, MIDAS, TEED)


class AnnotatorCache:
    """Loaded annotators of one worker, newest last; the least recently used is dropped past
    ``max_models`` (they are hundreds of MB each). The extension's setup makes one and passes it in."""

    def __init__(self, max_models: int = 3) -> None:
        self._max = max(1, max_models)
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, load: Callable[[], Any], device: torch.device) -> Any:
        """The annotator under ``key`` on ``device``, loaded with ``load()`` the first time."""
        with self._lock:
            model = self._models.pop(key, None)
            if model is None:
                model = load()
            self._models[key] = model
            while len(self._models) > self._max:
                self._models.popitem(last=False)
            return _to(model, device)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        return len(self._models)


def _to(model: Any, device: torch.device) -> Any:
    import torch

    if isinstance(model, torch.nn.Module):
        return model.to(device)
    mover = getattr(model, "to", None)
    return mover(device) if callable(mover) else model


def fetch(host: Any, weights: WeightFile) -> Path:
    """The weight file on disk, downloaded once (progress and checksum are the host's)."""
    return Path(host.download(weights.url, ANNOTATORS_KIND, weights.name, weights.sha256))


def _quiet_import(module: str) -> types.ModuleType:
    """controlnet_aux's package import warns about timm/torch deprecations it cannot fix here."""
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(module)


@dataclass(frozen=True)
class ModelCall:
    """What a model-based preprocessor gets: the padded image and the settings."""

    image: np.ndarray
    host: Any
    cache: AnnotatorCache
    device: torch.device
    threshold_a: float
    threshold_b: float


def _side(image: np.ndarray) -> int:
    # the image is already padded to multiples of 64: controlnet_aux then keeps its size exactly
    return int(min(image.shape[:2]))


def _np(result: Any) -> np.ndarray:
    return np.asarray(result, dtype=np.uint8)


def _load_hed(path: Path) -> Any:
    return _quiet_import("controlnet_aux.hed").HEDdetector.from_pretrained(str(path.parent), filename=path.name)


def hed(call: ModelCall, safe: bool = False, scribble: bool = False) -> np.ndarray:
    path = fetch(call.host, HED)
    detector = call.cache.get(HED.name, lambda: _load_hed(path), call.device)
    side = _side(call.image)
    return _np(detector(call.image, detect_resolution=side, image_resolution=side, safe=safe,
                        scribble=scribble, output_type="np"))


def _load_pidinet(path: Path) -> Any:
    module = _quiet_import("controlnet_aux.pidi")
    return module.PidiNetDetector.from_pretrained(str(path.parent), filename=path.name)


def pidinet(call: ModelCall, safe: bool = False, scribble: bool = False, apply_filter: bool = False) -> np.ndarray:
    path = fetch(call.host, PIDINET)
    detector = call.cache.get(PIDINET.name, lambda: _load_pidinet(path), call.device)
    side = _side(call.image)
    return _np(detector(call.image, detect_resolution=side, image_resolution=side, safe=safe, scribble=scribble,
                        apply_filter=apply_filter, output_type="np"))


def _load_lineart(path: Path) -> Any:
    import torch

    module = _quiet_import("controlnet_aux.lineart")
    net = module.Generator(3, 1, 3)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.eval()
    # one network in both places: each lineart mode needs only its own file
    return module.LineartDetector(net, net)


def lineart(call: ModelCall, coarse: bool = False) -> np.ndarray:
    weights = LINEART_COARSE if coarse else LINEART
    path = fetch(call.host, weights)
    detector = call.cache.get(weights.name, lambda: _load_lineart(path), call.device)
    side = _side(call.image)
    # controlnet_aux already inverts to white lines on black, as A1111's "255 - model(img)" does
    return _np(detector(call.image, detect_resolution=side, image_resolution=side, output_type="np"))


def _load_anime(path: Path) -> Any:
    module = _quiet_import("controlnet_aux.lineart_anime")
    return module.LineartAnimeDetector.from_pretrained(str(path.parent), filename=path.name)


def lineart_anime(call: ModelCall) -> np.ndarray:
    path = fetch(call.host, LINEART_ANIME)
    detector = call.cache.get(LINEART_ANIME.name, lambda: _load_anime(path), call.device)
    side = _side(call.image)
    return _np(detector(call.image, detect_resolution=side, image_resolution=side, output_type="np"))


def _load_mlsd(path: Path) -> Any:
    return _quiet_import("controlnet_aux.mlsd").MLSDdetector.from_pretrained(str(path.parent), filename=path.name)


def mlsd(call: ModelCall) -> np.ndarray:
    path = fetch(call.host, MLSD)
    detector = call.cache.get(MLSD.name, lambda: _load_mlsd(path), call.device)
    side = _side(call.image)
    return _np(detector(call.image, thr_v=call.threshold_a, thr_d=call.threshold_b, detect_resolution=side,
                        image_resolution=side, output_type="np"))


def _load_midas(path: Path) -> Any:
    return _quiet_import("controlnet_aux.midas").MidasDetector.from_pretrained(str(path.parent), filename=path.name)


def midas(call: ModelCall, normal: bool = False) -> np.ndarray:
    path = fetch(call.host, MIDAS)
    detector = call.cache.get(MIDAS.name, lambda: _load_midas(path), call.device)
    side = _side(call.image)
    result = detector(call.image, a=np.pi * 2.0, bg_th=call.threshold_a if normal else 0.1,
                      depth_and_normal=normal, detect_resolution=side, image_resolution=side, output_type="np")
    return _np(result[1] if normal else result)


def _load_leres(path: Path) -> Any:
    import torch

    module = _quiet_import("controlnet_aux.leres")
    depth_model = _quiet_import("controlnet_aux.leres.leres.multi_depth_model_woauxi")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = {key.removeprefix("module."): value for key, value in checkpoint["depth_model"].items()}
    net = depth_model.RelDepthModel(backbone="resnext101")
    net.load_state_dict(state, strict=True)
    net.eval()
    # no pix2pix refiner: that is depth_leres++ (boost), which is not offered
    return module.LeresDetector(net, None)


def leres(call: ModelCall) -> np.ndarray:
    path = fetch(call.host, LERES)
    detector = call.cache.get(LERES.name, lambda: _load_leres(path), call.device)
    side = _side(call.image)
    return _np(detector(call.image, thr_a=call.threshold_a, thr_b=call.threshold_b, boost=False,
                        detect_resolution=side, image_resolution=side, output_type="np"))


def _load_normal_bae(path: Path) -> Any:
    module = _quiet_import("controlnet_aux.normalbae")
    return module.NormalBaeDetector.from_pretrained(str(path.parent), filename=path.name)


def normal_bae(call: ModelCall) -> np.ndarray:
    path = fetch(call.host, NORMAL_BAE)
    detector = call.cache.get(NORMAL_BAE.name, lambda: _load_normal_bae(path), call.device)
    side = _side(call.image)
    return _np(detector(call.image, detect_resolution=side, image_resolution=side, output_type="np"))


def _load_teed(path: Path) -> Any:
    return _quiet_import("controlnet_aux.teed").TEEDdetector.from_pretrained(str(path.parent), filename=path.name)


def teed(call: ModelCall) -> np.ndarray:
    path = fetch(call.host, TEED)
    detector = call.cache.get(TEED.name, lambda: _load_teed(path), call.device)
    return _np(detector(call.image, detect_resolution=_side(call.image), safe_steps=int(call.threshold_a),
                        output_type="np"))


def _load_pose_part(weights: WeightFile, path: Path) -> Any:
    module = _quiet_import("controlnet_aux.open_pose")
    part = {BODY.name: module.Body, HAND.name: module.Hand, FACE.name: module.Face}[weights.name]
    return part(str(path))


def openpose(call: ModelCall, body: bool = True, hand: bool = False, face: bool = False) -> np.ndarray:
    """Bodies are always detected (hands and faces are found from them); ``body`` only draws them."""
    parts: dict[str, Any] = {}
    for wanted, weights in ((True, BODY), (hand, HAND), (face, FACE)):
        if wanted:
            path = fetch(call.host, weights)
            parts[weights.name] = call.cache.get(weights.name, functools.partial(_load_pose_part, weights, path),
                                                 call.device)
    module = _quiet_import("controlnet_aux.open_pose")
    detector = module.OpenposeDetector(parts[BODY.name], parts.get(HAND.name), parts.get(FACE.name))
    side = _side(call.image)
    return _np(detector(call.image, detect_resolution=side, image_resolution=side, include_body=body,
                        include_hand=hand, include_face=face, output_type="np"))
