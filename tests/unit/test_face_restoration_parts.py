"""Face restoration without model weights: the crop around a face and the feathered paste (nothing
outside the crop changes), the restorers' model files and refusals, A1111's two options on every
path (config.yaml, options, overrides, server defaults), and the infotext key both ways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.config import Settings, load_settings, setting_problem
from modules.engine.face_detection import FaceBox, HaarCascadeDetector, crop_box
from modules.engine.face_restoration import FACE_SIZE, feather_mask, restore_faces
from modules.errors import ConfigError, ValidationError
from modules.infotext import build_infotext, parse_infotext
from modules.infotext_request import request_from_infotext
from modules.options_table import BY_NAME
from modules.params import GenerationRequest
from modules.services.face_restorers import FaceRestorers
from modules.services.server_options import with_server_defaults
from tests.face_restorer_files import FixedFaces


def noise(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def inverted(face: Image.Image) -> Image.Image:
    assert face.size == (FACE_SIZE, FACE_SIZE)
    return Image.fromarray(255 - np.asarray(face))


def changed(before: Image.Image, after: Image.Image) -> np.ndarray:
    return (np.asarray(before) != np.asarray(after)).any(axis=-1)


def inside(box: FaceBox, width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[box.top:box.bottom, box.left:box.right] = True
    return mask


# --- the crop and the paste ----------------------------------------------------------------------


def test_the_crop_is_a_square_twice_the_face_centred_on_it() -> None:
    assert crop_box(FaceBox(20, 20, 36, 36), 64, 64) == FaceBox(12, 12, 44, 44)
    assert crop_box(FaceBox(100, 50, 140, 110), 512, 512) == FaceBox(60, 20, 180, 140)  # the longer side counts


def test_near_an_edge_the_crop_moves_inside_and_a_small_image_clips_it() -> None:
    assert crop_box(FaceBox(0, 0, 16, 16), 64, 64) == FaceBox(0, 0, 32, 32)
    assert crop_box(FaceBox(50, 40, 64, 54), 64, 64) == FaceBox(36, 33, 64, 61)
    assert crop_box(FaceBox(10, 10, 50, 50), 64, 48) == FaceBox(0, 0, 64, 48)


def test_the_mask_fades_to_nothing_at_the_crop_edges() -> None:
    mask = feather_mask(40, 32)
    assert mask.shape == (32, 40) and mask.min() == 0.0 and mask.max() == 1.0
    assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
    assert mask[16, 20] == 1.0


def test_restoring_changes_the_crop_and_not_one_pixel_outside_it() -> None:
    image = noise()
    box = FaceBox(20, 20, 36, 36)
    out = restore_faces(image, [box], inverted)
    crop = inside(crop_box(box, 64, 64), 64, 64)
    assert out.size == image.size and out.mode == "RGB"
    assert not changed(image, out)[~crop].any()
    assert changed(image, out)[crop].mean() > 0.5
    assert changed(image, out)[box.top:box.bottom, box.left:box.right].all()  # the face itself: fully restored


def test_two_faces_each_get_their_crop_and_boxes_outside_the_image_are_skipped() -> None:
    image = noise(128, 64)
    boxes = [FaceBox(4, 4, 20, 20), FaceBox(90, 30, 110, 50), FaceBox(200, 200, 220, 220)]
    out = restore_faces(image, boxes, inverted)
    crops = inside(crop_box(boxes[0], 128, 64), 128, 64) | inside(crop_box(boxes[1], 128, 64), 128, 64)
    assert not changed(image, out)[~crops].any() and changed(image, out)[crops].any()


def test_opencvs_cascade_finds_no_face_in_noise() -> None:
    assert HaarCascadeDetector().detect(noise(96, 96)) == []


# --- the restorers' files ------------------------------------------------------------------------


@pytest.fixture()
def folders(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "models" / "GFPGAN", tmp_path / "models" / "Codeformer"


def test_both_restorers_are_named_and_a_file_dropped_in_shows_up(folders: tuple[Path, Path]) -> None:
    gfpgan, codeformer = folders
    restorers = FaceRestorers([gfpgan], [codeformer])
    assert restorers.names() == ["CodeFormer", "GFPGAN"] and restorers.available() == []
    gfpgan.mkdir(parents=True)
    (gfpgan / "GFPGANv1.4.pth").write_bytes(b"x")
    assert restorers.available() == ["GFPGAN"]
    assert restorers.model_file("gfpgan").path == gfpgan / "GFPGANv1.4.pth"  # type: ignore[union-attr]


def test_the_restorers_file_is_preferred_over_facexlibs_weights_in_the_same_folder(folders: tuple[Path, Path]) -> None:
    gfpgan, _ = folders
    gfpgan.mkdir(parents=True)
    for name in ("detection_Resnet50_Final.pth", "parsing_parsenet.pth", "GFPGANv1.3.pth", "notes.txt"):
        (gfpgan / name).write_bytes(b"x")
    restorers = FaceRestorers([gfpgan], [])
    assert restorers.model_file("GFPGAN").path.name == "GFPGANv1.3.pth"  # type: ignore[union-attr]
    (gfpgan / "GFPGANv1.3.pth").unlink()
    assert restorers.model_file("GFPGAN") is None and restorers.available() == []  # facexlib's are not restorers
    (gfpgan / "GFPGANv1.3.pth").write_bytes(b"x")
    (gfpgan / "GFPGANv1.4.pth").write_bytes(b"x")
    assert restorers.model_file("GFPGAN").path.name == "GFPGANv1.4.pth"  # type: ignore[union-attr]


def test_require_names_the_file_and_folder_or_lists_the_restorers(folders: tuple[Path, Path]) -> None:
    gfpgan, codeformer = folders
    restorers = FaceRestorers([gfpgan], [codeformer])
    with pytest.raises(ValidationError) as missing:
        restorers.require("CodeFormer", "restore_faces")
    (error,) = missing.value.errors
    assert error.field == "restore_faces"
    assert "codeformer-v0.1.0.pth" in error.message and str(codeformer) in error.message
    with pytest.raises(ValidationError) as unknown:
        restorers.require("RestoreFormer", "gfpgan_visibility")
    assert unknown.value.errors[0].field == "gfpgan_visibility"
    assert "CodeFormer, GFPGAN" in unknown.value.errors[0].message


def test_no_face_found_leaves_the_image_as_it_was_without_loading_a_model(folders: tuple[Path, Path]) -> None:
    gfpgan, _ = folders
    gfpgan.mkdir(parents=True)
    (gfpgan / "GFPGANv1.4.pth").write_bytes(b"not even a model: never read when there is no face")
    image = noise()
    out = FaceRestorers([gfpgan], [], detector=FixedFaces()).restore(image, "GFPGAN")
    assert np.array_equal(np.asarray(out), np.asarray(image))
    with pytest.raises(ValidationError, match="code_former_weight"):
        FaceRestorers([gfpgan], [], detector=FixedFaces()).restore(image, "GFPGAN", codeformer_weight=1.5)


# --- A1111's options -----------------------------------------------------------------------------


def test_the_options_parse_a1111s_values_and_refuse_others_naming_what_is_allowed() -> None:
    model, weight = BY_NAME["face_restoration_model"], BY_NAME["code_former_weight"]
    assert (model.field, weight.field) == ("face_restoration_model", "code_former_weight")
    assert model.parse("gfpgan") == "GFPGAN" and weight.parse("0.25") == 0.25 and weight.parse(1) == 1.0
    with pytest.raises(ValueError, match="CodeFormer, GFPGAN"):
        model.parse("RestoreFormer")
    for bad in (1.01, -0.5, "much", True, float("nan")):
        with pytest.raises(ValueError, match="from 0 to 1"):
            weight.parse(bad)


def test_settings_refuse_bad_values_on_every_path(tmp_path: Path) -> None:
    assert setting_problem("face_restoration_model", "GFPGAN") is None
    assert "CodeFormer, GFPGAN" in (setting_problem("face_restoration_model", "gfpgan2") or "")
    assert setting_problem("code_former_weight", 0.3) is None and setting_problem("code_former_weight", 1) is None
    assert "from 0 to 1" in (setting_problem("code_former_weight", 3) or "")
    assert "from 0 to 1" in (setting_problem("code_former_weight", "0.5") or "")
    path = tmp_path / "config.yaml"
    path.write_text("face_restoration_model: GFPGAN\ncode_former_weight: 0.8\n")
    assert load_settings(path) == Settings(face_restoration_model="GFPGAN", code_former_weight=0.8)
    path.write_text("code_former_weight: 2.5\n")
    with pytest.raises(ConfigError, match="code_former_weight.*from 0 to 1"):
        load_settings(path)


def test_a_job_gets_the_servers_restorer_and_weight_unless_it_overrides_them() -> None:
    served = with_server_defaults(GenerationRequest(), Settings())
    assert (served.face_restoration_model, served.code_former_weight) == ("CodeFormer", 0.5)
    server = Settings(face_restoration_model="GFPGAN", code_former_weight=0.2)
    assert with_server_defaults(GenerationRequest(), server).face_restoration_model == "GFPGAN"
    own = with_server_defaults(GenerationRequest(face_restoration_model="CodeFormer", code_former_weight=0.9), server)
    assert (own.face_restoration_model, own.code_former_weight) == ("CodeFormer", 0.9)


# --- the infotext --------------------------------------------------------------------------------


def test_the_infotext_names_the_restorer_after_the_seed_and_reads_back() -> None:
    request = GenerationRequest(prompt="a face", restore_faces=True, face_restoration_model="GFPGAN")
    text = build_infotext(request, 7, None, "v1")
    assert "Seed: 7, Face restoration: GFPGAN, Size: 512x512" in text
    back, warnings = request_from_infotext(parse_infotext(text))
    assert back.restore_faces and back.face_restoration_model == "GFPGAN" and warnings == []
    plain = build_infotext(GenerationRequest(prompt="a face"), 7, None, "v1")
    assert "Face restoration" not in plain and request_from_infotext(parse_infotext(plain))[0].restore_faces is False


def test_an_unknown_restorer_in_an_infotext_still_turns_restoration_on_with_a_warning() -> None:
    text = "a face\nSteps: 20, Seed: 1, Face restoration: RestoreFormer, Size: 64x64"
    back, warnings = request_from_infotext(parse_infotext(text), GenerationRequest(face_restoration_model=None))
    assert back.restore_faces and back.face_restoration_model is None
    assert any("RestoreFormer" in warning for warning in warnings)
