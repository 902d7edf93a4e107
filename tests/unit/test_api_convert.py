"""The REST face's parsing is lenient like A1111's, maps onto GenerationRequest, and replies in A1111's shape."""

from __future__ import annotations

import base64
import io
import json
from datetime import datetime
from pathlib import Path

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modules.api.convert import (
    decode_base64_image,
    images_response,
    parse_body,
    sampler_items,
    scheduler_items,
    to_generation_request,
)
from modules.api.schemas import Img2ImgBody, Txt2ImgBody
from modules.config import Settings
from modules.errors import ValidationError
from modules.options_table import BY_NAME
from modules.params import (
    MAX_SEED,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    MaskedContent,
    ModelsUsed,
    ResizeMode,
)
from modules.request_checks import validate_request
from modules.samplers import SAMPLERS, RngSource, ScheduleType
from modules.services.server_options import with_server_defaults
from modules.upscalers import upscaler_names


def png(color: int = 0, size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG")
    return out.getvalue()


PNG = png(255)
PNG_B64 = base64.b64encode(PNG).decode("ascii")


def with_server(request: GenerationRequest, server: dict | None) -> GenerationRequest:
    """What the front makes of the request on a server whose options are ``server`` (A1111's names)."""
    if server is None:
        return request
    settings = Settings(**{BY_NAME[k].setting: BY_NAME[k].stored(v) for k, v in server.items() if BY_NAME[k].setting})
    return with_server_defaults(request, settings)


def txt2img(data: dict, server: dict | None = None) -> GenerationRequest:
    return with_server(to_generation_request(parse_body(Txt2ImgBody, data)), server)


def img2img(data: dict, server: dict | None = None) -> GenerationRequest:
    return with_server(to_generation_request(parse_body(Img2ImgBody, {"init_images": [PNG_B64], **data})), server)


def refused_fields(call, *args) -> set[str]:
    with pytest.raises(ValidationError) as err:
        call(*args)
    return {e.field for e in err.value.errors}


# --- lenient parsing -----------------------------------------------------------------------------


def test_api_defaults_are_a1111s() -> None:
    request = txt2img({})
    assert (request.steps, request.sampler, request.schedule, request.cfg_scale) == (50, "Euler", ScheduleType.AUTOMATIC, 7.0)
    assert (request.width, request.height, request.seed, request.batch_count, request.batch_size) == (512, 512, -1, 1, 1)
    validate_request(request)


def test_unknown_fields_are_ignored() -> None:
    body = parse_body(Txt2ImgBody, {"prompt": "cat", "url": "http://x", "auth": None, "hr_additional_modules": [],
                                    "distilled_cfg_scale": 3.5})
    assert body.prompt == "cat" and not hasattr(body, "url")


def test_nulls_mean_the_default() -> None:
    data = {name: None for name in Img2ImgBody.model_fields}
    body = parse_body(Img2ImgBody, data)
    assert body == Img2ImgBody() and body.model_fields_set == set()
    assert txt2img({"steps": None, "cfg_scale": None, "sampler_name": None, "scheduler": None}) == txt2img({})


def test_numeric_strings_and_integral_floats_are_coerced() -> None:
    request = txt2img({"cfg_scale": "7.5", "steps": 15.0, "width": "768", "height": "640.0", "seed": "42",
                       "n_iter": 2.0, "subseed_strength": "0.25"})
    assert (request.cfg_scale, request.steps, request.width, request.height, request.seed) == (7.5, 15, 768, 640, 42)
    assert (request.batch_count, request.variation_strength) == (2, 0.25)
    assert isinstance(request.steps, int) and isinstance(request.cfg_scale, float)


@pytest.mark.parametrize("field, value", [
    ("steps", "7.5"), ("steps", 7.5), ("steps", "many"), ("steps", True), ("width", "5e-1"),
    ("cfg_scale", "abc"), ("cfg_scale", False), ("seed", [1]), ("batch_size", {}),
    ("cfg_scale", 10**400), ("steps", "9" * 5000), ("cfg_scale", "nan"), ("steps", "inf"),
])
def test_unreadable_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as err:
        parse_body(Txt2ImgBody, {field: value})
    assert [e.field for e in err.value.errors] == [field]
    assert len(err.value.errors[0].message) < 100  # never echoes a huge value back


def test_pydantic_errors_name_the_field_too() -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        Txt2ImgBody.model_validate({"steps": "7.5"})
    assert err.value.errors()[0]["loc"] == ("steps",)


def test_booleans_accept_json_bools_and_text() -> None:
    body = parse_body(Img2ImgBody, {"send_images": "false", "save_images": "True", "inpaint_full_res": False,
                                    "inpainting_mask_invert": True})
    assert (body.send_images, body.save_images, body.inpaint_full_res, body.inpainting_mask_invert) == (False, True, False, 1)


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert refused_fields(parse_body, Txt2ImgBody, [1, 2]) == {"body"}


def test_seed_up_to_max_is_accepted() -> None:
    request = txt2img({"seed": 4294967295, "subseed": "4294967295", "subseed_strength": 0.5})
    assert request.seed == MAX_SEED and request.variation_seed == MAX_SEED
    validate_request(request)
    assert refused_fields(validate_request, txt2img({"seed": 4294967296})) == {"seed"}


# --- sampler and schedule --------------------------------------------------------------------------


def test_sampler_name_wins_over_sampler_index() -> None:
    assert txt2img({"sampler_index": "LMS"}).sampler == "LMS"
    assert txt2img({"sampler_index": "LMS", "sampler_name": "Heun"}).sampler == "Heun"
    assert txt2img({"sampler_index": "LMS", "sampler_name": None}).sampler == "LMS"


def test_legacy_combined_names_and_aliases() -> None:
    request = txt2img({"sampler_name": "DPM++ 2M Karras"})
    assert (request.sampler, request.schedule) == ("DPM++ 2M", ScheduleType.KARRAS)
    request = txt2img({"sampler_name": "DPM++ 2M Karras", "scheduler": "exponential"})
    assert (request.sampler, request.schedule) == ("DPM++ 2M", ScheduleType.EXPONENTIAL)
    assert txt2img({"sampler_name": "k_euler_a"}).sampler == "Euler a"


@pytest.mark.parametrize("name, expected", [
    ("karras", ScheduleType.KARRAS), ("Karras", ScheduleType.KARRAS), ("automatic", ScheduleType.AUTOMATIC),
    ("sgm_uniform", ScheduleType.SGM_UNIFORM), ("SGM Uniform", ScheduleType.SGM_UNIFORM),
    ("normal", ScheduleType.NORMAL), ("align_your_steps", ScheduleType.ALIGN_YOUR_STEPS), ("", ScheduleType.AUTOMATIC),
])
def test_schedule_names_in_any_form(name: str, expected: ScheduleType) -> None:
    assert txt2img({"sampler_name": "Euler", "scheduler": name}).schedule is expected


def test_unknown_scheduler_is_refused_naming_it() -> None:
    with pytest.raises(ValidationError) as err:
        txt2img({"scheduler": "wobbly"})
    assert [e.field for e in err.value.errors] == ["scheduler"]
    assert "karras" in err.value.errors[0].message  # the valid names are listed


def test_unknown_sampler_is_left_for_validation_to_name() -> None:
    request = txt2img({"sampler_name": "Euler b"})
    assert request.sampler == "Euler b"
    assert refused_fields(validate_request, request) == {"sampler"}


# --- settings: body > override_settings > infotext > server options --------------------------------


SERVER = {"sd_model_checkpoint": "server.safetensors [aaaaaaaaaa]", "CLIP_stop_at_last_layers": 2,
          "eta_noise_seed_delta": 31337, "randn_source": "CPU", "sd_vae": "Automatic"}


def test_server_options_apply_when_the_request_says_nothing() -> None:
    bare = txt2img({})
    assert (bare.checkpoint, bare.clip_skip, bare.eta_noise_seed_delta, bare.rng, bare.vae) == (None,) * 5
    request = txt2img({}, SERVER)  # the front fills them; the checkpoint is the worker's selected one
    assert (request.checkpoint, request.clip_skip, request.eta_noise_seed_delta, request.rng, request.vae) == (
        None, 2, 31337, RngSource.CPU, "Automatic")


def test_override_settings_win_over_server_options() -> None:
    request = txt2img({"override_settings": {"sd_model_checkpoint": "other", "CLIP_stop_at_last_layers": "3",
                                             "eta_noise_seed_delta": 0, "randn_source": "gpu"}}, SERVER)
    assert (request.checkpoint, request.clip_skip, request.eta_noise_seed_delta, request.rng) == (
        "other", 3, 0, RngSource.GPU)


def test_clip_skip_field_wins_over_override_settings() -> None:
    assert txt2img({"clip_skip": 4, "override_settings": {"CLIP_stop_at_last_layers": 3}}, SERVER).clip_skip == 4
    assert txt2img({"clip_skip": None}, SERVER).clip_skip == 2


@pytest.mark.parametrize("key, value", [
    ("CLIP_stop_at_last_layers", "two"), ("randn_source", "NV"), ("sd_model_checkpoint", 5),
    ("eta_noise_seed_delta", 1.5),
])
def test_bad_override_values_are_refused_naming_them(key: str, value: object) -> None:
    assert refused_fields(txt2img, {"override_settings": {key: value}}) == {f"override_settings.{key}"}


INFOTEXT = ("a castle\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, "
            "Seed: 1234, Size: 640x768, Model hash: 6ce0161689, Model: v1-5, Clip skip: 2, Denoising strength: 0.4, "
            "Mask blur: 8, Version: v1.10.1")


def test_infotext_fills_unset_fields_only() -> None:
    request = txt2img({"infotext": INFOTEXT, "prompt": "a dog", "steps": 50, "override_settings": {"randn_source": "CPU"}},
                      {**SERVER, "CLIP_stop_at_last_layers": 1})
    assert (request.prompt, request.steps) == ("a dog", 50)  # set by the body, even when equal to the default
    assert (request.negative_prompt, request.sampler, request.schedule, request.cfg_scale) == (
        "blurry", "DPM++ 2M", ScheduleType.KARRAS, 5.5)
    assert (request.seed, request.width, request.height) == (1234, 640, 768)
    assert (request.clip_skip, request.checkpoint) == (2, "v1-5")  # infotext ranks above server options
    assert request.rng is RngSource.CPU  # override_settings rank above the infotext
    assert request.denoising_strength == 0.75  # txt2img takes no denoising from it


def test_infotext_settings_yield_to_the_request() -> None:
    request = txt2img({"infotext": INFOTEXT, "clip_skip": 3, "override_settings": {"sd_model_checkpoint": "mine"},
                       "sampler_name": "Euler", "scheduler": "exponential"})
    assert (request.clip_skip, request.checkpoint, request.sampler, request.schedule) == (
        3, "mine", "Euler", ScheduleType.EXPONENTIAL)
    combined = txt2img({"infotext": INFOTEXT, "sampler_name": "DPM++ SDE Exponential"})
    assert (combined.sampler, combined.schedule) == ("DPM++ SDE", ScheduleType.EXPONENTIAL)


def test_infotext_fills_img2img_fields() -> None:
    request = img2img({"infotext": INFOTEXT, "mask": PNG_B64})
    assert (request.denoising_strength, request.mask_blur) == (0.4, 8)
    assert img2img({"infotext": INFOTEXT, "denoising_strength": 0.9}).denoising_strength == 0.9


# --- images in -------------------------------------------------------------------------------------


def test_raw_base64_and_data_urls_decode_alike() -> None:
    assert decode_base64_image(PNG_B64, "init_images") == PNG
    assert decode_base64_image(f"data:image/png;base64,{PNG_B64}", "init_images") == PNG
    assert decode_base64_image(PNG_B64.rstrip("=") + "\n", "init_images") == PNG  # padding cut, newline added


@pytest.mark.parametrize("value", ["not base64 at all!", "data:image/png,abc", "", "QQ=Q"])
def test_garbage_base64_is_refused_naming_the_field(value: str) -> None:
    assert refused_fields(decode_base64_image, value, "init_images") == {"init_images"}
    assert refused_fields(img2img, {"init_images": [value]}) == {"init_images"}


def test_img2img_maps_images_and_inpaint_fields() -> None:
    request = img2img({"init_images": [f"data:image/png;base64,{PNG_B64}"], "mask": PNG_B64,
                       "denoising_strength": "0.5", "mask_blur": 6, "inpainting_fill": 1, "resize_mode": 2})
    assert (request.init_image, request.mask, request.denoising_strength, request.mask_blur) == (PNG, PNG, 0.5, 6)
    assert request.is_img2img
    validate_request(request)


def test_img2img_without_init_image_is_refused() -> None:
    assert refused_fields(to_generation_request, Img2ImgBody()) == {"init_images"}


def test_inpaint_fields_map_to_the_request() -> None:
    request = img2img({"mask": base64.b64encode(png(200)).decode(), "inpainting_mask_invert": 1, "resize_mode": 2,
                       "inpainting_fill": 2, "inpaint_full_res": True, "inpaint_full_res_padding": 24})
    assert request.invert_mask and request.inpaint_only_masked and request.only_masked_padding == 24
    assert request.resize_mode is ResizeMode.RESIZE_AND_FILL and request.masked_content is MaskedContent.LATENT_NOISE
    assert refused_fields(img2img, {"resize_mode": 4}) == {"resize_mode"}
    assert refused_fields(img2img, {"inpainting_fill": -1}) == {"inpainting_fill"}


# --- results out -----------------------------------------------------------------------------------


INFO_KEYS = {
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds",
    "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size", "restore_faces",
    "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
    "seed_resize_from_h", "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts",
    "styles", "job_timestamp", "clip_skip", "is_using_inpainting_conditioning", "version",
}


def make_result(count: int, grid: bool, variation: float = 0.0) -> GenerationResult:
    request = GenerationRequest(prompt="cat", negative_prompt="ugly", seed=100, batch_size=count, clip_skip=2,
                                variation_seed=7 if variation else -1, variation_strength=variation)
    images = tuple(GeneratedImage(Path(f"{i}.png"), request.seed_for(i), f"cat\nSteps: 20, Seed: {request.seed_for(i)}", i)
                   for i in range(count))
    grid_image = GeneratedImage(Path("grid.png"), 100, images[0].infotext, -1) if grid else None
    used = ModelsUsed(checkpoint_title="sub/v1-5-pruned.safetensors [6ce0161689]", checkpoint_name="v1-5-pruned",
                      checkpoint_hash="6ce0161689", vae_name="vae-ft-mse.safetensors", vae_hash="735e4c3a44")
    return GenerationResult(request=request, images=images, grid=grid_image, model_title=used.checkpoint_title,
                            elapsed_seconds=2.0, models=used)


def bytes_of(image: GeneratedImage) -> bytes:
    return f"png of {image.path}".encode()


def test_info_has_every_a1111_key_and_per_image_seeds() -> None:
    body = parse_body(Txt2ImgBody, {"prompt": "cat", "batch_size": 3})
    reply = images_response(make_result(3, grid=True), body, True, bytes_of, now=datetime(2024, 5, 6, 7, 8, 10))
    info = json.loads(reply.info)
    assert INFO_KEYS <= set(info)
    assert (info["seed"], info["all_seeds"], info["all_prompts"]) == (100, [100, 101, 102], ["cat"] * 3)
    assert (info["sd_model_name"], info["sd_model_hash"], info["clip_skip"]) == ("v1-5-pruned", "6ce0161689", 2)
    assert (info["sd_vae_name"], info["sd_vae_hash"]) == ("vae-ft-mse.safetensors", "735e4c3a44")  # not from infotext
    assert (info["index_of_first_image"], len(info["infotexts"]), info["job_timestamp"]) == (1, 4, "20240506070808")
    assert info["all_subseeds"] == [-1, -1, -1] and info["denoising_strength"] is None


def test_variation_seeds_go_up_while_the_seed_stays() -> None:
    info = json.loads(images_response(make_result(2, grid=False, variation=0.3), Txt2ImgBody(), True, bytes_of).info)
    assert (info["all_seeds"], info["subseed"], info["all_subseeds"], info["subseed_strength"]) == ([100, 100], 7, [7, 8], 0.3)
    assert info["index_of_first_image"] == 0


def test_images_are_raw_base64_with_the_grid_first() -> None:
    reply = images_response(make_result(2, grid=True), Txt2ImgBody(), True, bytes_of)
    assert not any(image.startswith("data:") for image in reply.images)
    assert [base64.b64decode(image) for image in reply.images] == [b"png of grid.png", b"png of 0.png", b"png of 1.png"]
    assert images_response(make_result(2, grid=True), Txt2ImgBody(), False, bytes_of).images == []


def test_parameters_echo_the_body_without_input_images() -> None:
    body = parse_body(Img2ImgBody, {"init_images": [PNG_B64], "mask": PNG_B64, "prompt": "cat", "steps": "20"})
    echo = images_response(make_result(1, grid=False), body, True, bytes_of).parameters
    assert (echo["prompt"], echo["steps"], echo["init_images"], echo["mask"]) == ("cat", 20, None, None)
    json.dumps(echo)
    kept = parse_body(Img2ImgBody, {"init_images": [PNG_B64], "include_init_images": True})
    assert images_response(make_result(1, grid=False), kept, True, bytes_of).parameters["init_images"] == [PNG_B64]


def test_list_items_come_from_the_tables() -> None:
    assert [item.name for item in sampler_items()] == [spec.name for spec in SAMPLERS]
    karras = next(item for item in scheduler_items() if item.name == "karras")
    assert (karras.label, karras.default_rho) == ("Karras", 7.0)


# --- property: valid JSON-ish bodies always convert ------------------------------------------------


def _int_like(low: int, high: int) -> st.SearchStrategy:
    n = st.integers(low, high)
    return st.one_of(n, n.map(float), n.map(str), n.map(lambda v: f"{v}.0"), st.none())


def _float_like(low: float, high: float) -> st.SearchStrategy:
    x = st.floats(low, high, allow_nan=False)
    return st.one_of(x, x.map(repr), st.integers(int(low), int(high)), st.none())


_SAMPLER_NAMES = [n for s in SAMPLERS for n in (s.name, *s.aliases)] + ["DPM++ 2M Karras", "Euler a exponential"]
_SCHEDULES = [v for s in ScheduleType for v in (s.value, s.api_name, s.value.upper())]
VALID_FIELDS = {
    "prompt": st.text(max_size=50), "negative_prompt": st.text(max_size=50),
    "styles": st.lists(st.sampled_from(["None", "anime"])),
    "seed": _int_like(-1, MAX_SEED), "subseed": _int_like(-1, MAX_SEED), "subseed_strength": _float_like(0, 1),
    "sampler_name": st.sampled_from(_SAMPLER_NAMES) | st.none(), "sampler_index": st.sampled_from(_SAMPLER_NAMES),
    "scheduler": st.sampled_from(_SCHEDULES) | st.none(),
    "batch_size": _int_like(1, 8), "n_iter": _int_like(1, 10), "steps": _int_like(1, 150),
    # Up to 1024: hires fix (enable_hr, scale 2 by default) must stay within the 2048 limit.
    "cfg_scale": _float_like(1, 30), "width": st.integers(8, 128).map(lambda v: v * 8),
    "height": st.integers(8, 128).map(lambda v: str(v * 8)), "clip_skip": _int_like(1, 12),
    "hr_upscaler": st.sampled_from(upscaler_names() + ["latent", "LANCZOS"]) | st.none(),
    "hr_second_pass_steps": _int_like(0, 150), "hr_resize_x": st.sampled_from([0, 64, 128]),  # keeps h <= 2048
    "hr_sampler_name": st.sampled_from(_SAMPLER_NAMES) | st.none(), "hr_scheduler": st.sampled_from(_SCHEDULES),
    "seed_resize_from_w": st.sampled_from([-1, 0, 256]), "seed_resize_from_h": st.sampled_from([-1, 0, 320]),
    "refiner_checkpoint": st.sampled_from(["", "None", "b.safetensors"]) | st.none(),
    "refiner_switch_at": _float_like(0, 1),
    "restore_faces": st.sampled_from([True, False, "true", "false"]) | st.none(),
    "tiling": st.sampled_from([True, False, "true", "false", None]),
    "enable_hr": st.booleans(), "denoising_strength": _float_like(0, 1),
    "override_settings": st.fixed_dictionaries({}, optional={
        "sd_model_checkpoint": st.sampled_from(["a.safetensors [0123456789]", "b"]),
        "CLIP_stop_at_last_layers": _int_like(1, 12), "eta_noise_seed_delta": _int_like(0, 100000),
        "randn_source": st.sampled_from(["GPU", "CPU", "cpu"]),
        "sd_vae": st.sampled_from(["Automatic", "None", "vae-ft-mse.safetensors"]),
        "face_restoration_model": st.sampled_from(["CodeFormer", "GFPGAN", "gfpgan"]),
        "code_former_weight": _float_like(0, 1),
    }),
    "alwayson_scripts": st.just({}), "send_images": st.booleans(), "infotext": st.just(INFOTEXT) | st.none(),
    "some_client_field": st.text(max_size=5), "mask_blur": _int_like(0, 64),
    "inpainting_mask_invert": st.sampled_from([0, 1, True, False]),
}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.fixed_dictionaries({}, optional=VALID_FIELDS), img=st.booleans(), data_url=st.booleans())
def test_valid_bodies_convert_to_valid_requests(data: dict, img: bool, data_url: bool) -> None:
    if img:
        prefix = "data:image/png;base64," if data_url else ""
        data = {**data, "init_images": [prefix + PNG_B64], "mask": PNG_B64}
    request = with_server(to_generation_request(parse_body(Img2ImgBody if img else Txt2ImgBody, data)), SERVER)
    validate_request(request)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(data=st.dictionaries(st.sampled_from(sorted(Img2ImgBody.model_fields) + ["other"]), JSON, max_size=8))
def test_any_json_body_raises_nothing_but_validation_error(data: dict) -> None:
    try:
        to_generation_request(parse_body(Img2ImgBody, data))
    except ValidationError:
        pass


@pytest.mark.parametrize(("sent", "tiled"), [({}, False), ({"tiling": True}, True), ({"tiling": "true"}, True),
                                             ({"tiling": None}, False), ({"tiling": "false"}, False)])
def test_tiling_reaches_the_request(sent: dict, tiled: bool) -> None:
    for body in (Txt2ImgBody, Img2ImgBody):
        data = {**sent, "init_images": [PNG_B64]} if body is Img2ImgBody else sent
        assert to_generation_request(parse_body(body, data)).tiling is tiled


@pytest.mark.parametrize(("sent", "restored"), [({}, False), ({"restore_faces": True}, True),
                                                ({"restore_faces": "true"}, True), ({"restore_faces": None}, False),
                                                ({"restore_faces": "false"}, False)])
def test_restore_faces_reaches_the_request(sent: dict, restored: bool) -> None:
    for body in (Txt2ImgBody, Img2ImgBody):
        data = {**sent, "init_images": [PNG_B64]} if body is Img2ImgBody else sent
        assert to_generation_request(parse_body(body, data)).restore_faces is restored


def test_face_restoration_options_come_from_the_server_unless_overridden() -> None:
    served = txt2img({"restore_faces": True}, {"face_restoration_model": "GFPGAN", "code_former_weight": 0.25})
    assert (served.face_restoration_model, served.code_former_weight) == ("GFPGAN", 0.25)
    default = txt2img({"restore_faces": True}, {})
    assert (default.face_restoration_model, default.code_former_weight) == ("CodeFormer", 0.5)
    own = txt2img({"override_settings": {"face_restoration_model": "codeformer", "code_former_weight": "0.75"}},
                  {"face_restoration_model": "GFPGAN"})
    assert (own.face_restoration_model, own.code_former_weight) == ("CodeFormer", 0.75)
    assert refused_fields(txt2img, {"override_settings": {"face_restoration_model": "RestoreFormer"}}) == {
        "override_settings.face_restoration_model"}
    for weight in (1.5, -0.1, "strong", True):
        assert refused_fields(txt2img, {"override_settings": {"code_former_weight": weight}}) == {
            "override_settings.code_former_weight"}


def test_an_infotext_with_face_restoration_turns_it_on_unless_the_body_says() -> None:
    text = INFOTEXT.replace("Seed: 1234,", "Seed: 1234, Face restoration: GFPGAN,")
    pasted = txt2img({"infotext": text})
    assert pasted.restore_faces and pasted.face_restoration_model == "GFPGAN"
    assert txt2img({"infotext": text, "restore_faces": False}).restore_faces is False
    assert txt2img({"infotext": INFOTEXT}).restore_faces is False
