"""GFPGAN and CodeFormer with random weights: each file format loads through spandrel, bad files are
refused naming them, and restoring changes the faces' crops and not one pixel outside them.

A restoration runs a full-size network over a 512 px face (seconds on a CPU), so the models load
once per module and each test restores as few faces as it can.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.devtools.tiny_upscaler import write_tiny_upscaler
from modules.engine.face_detection import FaceBox, crop_box
from modules.engine.face_restoration import FaceArchitecture, load_face_model
from modules.errors import AddonLoadError
from modules.services.face_restorers import FaceRestorers
from tests.face_restorer_files import FixedFaces, install, restorer_file

FACE = FaceBox(20, 20, 36, 36)  # in a 64 x 64 image: its crop is (12, 12)-(44, 44)


@pytest.fixture(scope="module")
def restorers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaceRestorers]:
    models = tmp_path_factory.mktemp("face-models")
    install(restorer_file(tmp_path_factory, "gfpgan", ".safetensors"), models / "GFPGAN", "GFPGANv1.4.safetensors")
    install(restorer_file(tmp_path_factory, "codeformer"), models / "Codeformer", "codeformer-v0.1.0.pth")
    restorers = FaceRestorers([models / "GFPGAN"], [models / "Codeformer"], detector=FixedFaces((FACE,)))
    yield restorers
    restorers.release()


@pytest.fixture(scope="module")
def image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return (np.asarray(before) != np.asarray(after)).any(axis=-1)


def outside_the_crop() -> np.ndarray:
    crop = crop_box(FACE, 64, 64)
    mask = np.ones((64, 64), dtype=bool)
    mask[crop.top:crop.bottom, crop.left:crop.right] = False
    return mask


# The other two pairings (GFPGAN .safetensors, CodeFormer .pth) load in ``restorers``, for the restore tests.
@pytest.mark.parametrize(("kind", "suffix"), [("gfpgan", ".pth"), ("codeformer", ".safetensors")])
def test_each_restorer_loads_from_pth_and_safetensors(tmp_path_factory: pytest.TempPathFactory, kind: str,
                                                      suffix: str) -> None:
    expected = FaceArchitecture.GFPGAN if kind == "gfpgan" else FaceArchitecture.CODEFORMER
    model = load_face_model(restorer_file(tmp_path_factory, kind, suffix), expected)
    assert model.architecture is expected and model.device == torch.device("cpu")
    assert {p.dtype for p in model.network.parameters()} == {torch.float32} and not model.network.training


class _RunsCode:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("this ran",))


@pytest.mark.parametrize("kind", ["corrupt", "code", "truncated-safetensors", "upscaler", "other-restorer"])
def test_bad_files_are_refused_naming_the_file(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                              kind: str) -> None:
    path = tmp_path / ("bad.safetensors" if kind == "truncated-safetensors" else "bad.pth")
    if kind == "corrupt":
        path.write_bytes(b"not a model at all" * 10)
    elif kind == "code":
        torch.save({"weight": torch.zeros(2), "x": _RunsCode()}, path)
    elif kind == "truncated-safetensors":
        with restorer_file(tmp_path_factory, "gfpgan", ".safetensors").open("rb") as source:
            path.write_bytes(source.read(4096))
    elif kind == "upscaler":
        write_tiny_upscaler(path, 2)
    else:
        path.symlink_to(restorer_file(tmp_path_factory, "codeformer"))
    with pytest.raises(AddonLoadError) as caught:
        load_face_model(path, FaceArchitecture.GFPGAN)
    assert str(path) in str(caught.value) and "face restorer" in str(caught.value)
    if kind == "other-restorer":
        assert "a CodeFormer model, not GFPGAN" in str(caught.value)


def test_gfpgan_restores_the_face_crop_and_nothing_else(restorers: FaceRestorers, image: Image.Image) -> None:
    assert restorers.model_file("GFPGAN").path.suffix == ".safetensors"  # type: ignore[union-attr]
    out = restorers.restore(image, "GFPGAN")
    assert out.size == image.size and out.mode == "RGB"
    difference = changed(image, out)
    assert not difference[outside_the_crop()].any()
    assert difference[FACE.top:FACE.bottom, FACE.left:FACE.right].mean() > 0.9


def test_no_face_means_the_same_image(restorers: FaceRestorers, image: Image.Image) -> None:
    quiet = FaceRestorers(restorers.folders("GFPGAN"), [], detector=FixedFaces())
    assert np.array_equal(np.asarray(quiet.restore(image, "GFPGAN")), np.asarray(image))


def test_codeformers_weight_changes_the_result_inside_the_crop_only(restorers: FaceRestorers,
                                                                     image: Image.Image) -> None:
    assert restorers.model_file("CodeFormer").path.suffix == ".pth"  # type: ignore[union-attr]
    strongest = restorers.restore(image, "CodeFormer", codeformer_weight=0.0)
    faithful = restorers.restore(image, "CodeFormer", codeformer_weight=1.0)
    for out in (strongest, faithful):
        assert not changed(image, out)[outside_the_crop()].any() and changed(image, out).any()
    assert changed(strongest, faithful)[FACE.top:FACE.bottom, FACE.left:FACE.right].any()
