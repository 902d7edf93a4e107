"""The remote engines' rules without a server: what a job on a remote model keeps, notes or refuses,
prices, the daily limit's arithmetic, the infotext, and settings that never quote a key."""

from __future__ import annotations

import pytest

from modules.config import setting_problem
from modules.errors import ForbiddenError, RateLimitError, ValidationError
from modules.identity import UserLimits
from modules.infotext import parse_infotext
from modules.params import GenerationRequest, HiresFix
from modules.remote_prices import DEFAULT_PRICES, merged_prices, price_per_image, prices_problem
from modules.services.remote.catalog import KNOWN_MODELS, Provider, split_title
from modules.services.remote.remote_front import remote_request
from modules.services.remote.remote_render import remote_infotext
from modules.services.user_limits import DAY, check_remote_images

MODELS = {m.title: m for m in KNOWN_MODELS}
DALLE3, IMAGEN3 = MODELS["openai/dall-e-3"], MODELS["google/imagen-3.0-generate-001"]
SQUARE = {"width": 1024, "height": 1024}


def test_unused_sampling_fields_are_reset_and_named_in_a_note() -> None:
    done = remote_request(GenerationRequest(prompt="p", steps=35, cfg_scale=4.0, clip_skip=2, **SQUARE), DALLE3)
    assert (done.steps, done.cfg_scale, done.clip_skip) == (20, 7.0, None)
    assert len(done.notes) == 1 and all(name in done.notes[0] for name in ("steps", "cfg_scale", "clip_skip"))
    assert (done.quality, done.style, done.checkpoint) == ("standard", "vivid", "openai/dall-e-3")
    untouched = remote_request(GenerationRequest(prompt="p", clip_skip=1, **SQUARE), DALLE3)
    assert untouched.notes == ()  # defaults (and clip skip 1, which skips nothing) say nothing


@pytest.mark.parametrize(("fields", "named"), [
    ({"seed": 3}, "seed"), ({"variation_strength": 0.5}, "subseed_strength"),
    ({"hires": HiresFix(scale=2.0)}, "enable_hr"), ({"tiling": True}, "tiling"),
    ({"width": 1024, "height": 768}, "width"), ({"quality": "high"}, "quality"), ({"batch_size": 2}, "batch_size"),
    ({"negative_prompt": "x"}, "negative_prompt"), ({"prompt": "<hypernet:thing:1> a"}, "prompt"),
    ({"init_image": b"png"}, "init_images"),
])
def test_what_would_change_the_result_is_refused(fields, named) -> None:
    with pytest.raises(ValidationError) as refused:
        remote_request(GenerationRequest(**{"prompt": "p", **SQUARE, **fields}), DALLE3)
    assert named in [e.field for e in refused.value.errors]


def test_a_scripts_fixed_seed_is_noted_not_refused() -> None:
    cell = remote_request(GenerationRequest(prompt="p", seed=77, variation_seed=78, part_of=(2, 4), **SQUARE), DALLE3)
    assert (cell.seed, cell.variation_seed) == (-1, -1) and "seed" in cell.notes[0]


def test_a_negative_prompt_goes_to_a_model_that_takes_one() -> None:
    done = remote_request(GenerationRequest(prompt="p", negative_prompt="fog", width=1280, height=896), IMAGEN3)
    assert done.negative_prompt == "fog" and done.quality is None


def test_prices_take_the_most_specific_entry_and_config_corrects_them() -> None:
    table = merged_prices({"openai/dall-e-3": {"1024x1024 hd": 0.5}, "openai/local": {"*": 0}})
    assert price_per_image(table, "openai/dall-e-3", 1024, 1024, "hd") == 0.5
    assert price_per_image(table, "openai/dall-e-3", 1792, 1024, "standard") == 0.08
    assert price_per_image(table, "openai/local", 512, 512, None) == 0.0
    assert price_per_image(table, "google/imagen-4.0-generate-001", 768, 1408, None) == 0.04
    assert price_per_image(table, "openai/unknown", 512, 512, None) is None
    assert all(title in MODELS for title in DEFAULT_PRICES) and set(MODELS) <= set(DEFAULT_PRICES)
    assert prices_problem({"dall-e-3": {"*": 1}}) and prices_problem({"openai/x": {"big": 1}})
    assert prices_problem({"openai/x": {"*": -1}}) and prices_problem({"openai/x": {"1024x1024 hd": 0.1}}) is None


def test_the_daily_limit_counts_a_rolling_day_and_says_when_to_come_back() -> None:
    limits, now = UserLimits(remote_images_per_day=5), 1_000_000.0
    recent = [(now - DAY - 10, 9), (now - 3600, 2), (now - 60, 2)]  # the first is out of the window
    check_remote_images(limits, 1, recent, now)
    with pytest.raises(RateLimitError) as later:
        check_remote_images(limits, 2, recent, now)
    assert later.value.retry_after == DAY - 3600  # when the job of an hour ago leaves the window
    with pytest.raises(ForbiddenError):
        check_remote_images(limits, 6, [], now)
    check_remote_images(UserLimits(), 1000, recent, now)


def test_the_infotext_reads_back_as_a1111_reads_it() -> None:
    request = remote_request(GenerationRequest(prompt="a cat, at night", quality="hd", applied_styles=("ink",),
                                               **SQUARE), DALLE3)
    parsed = parse_infotext(remote_infotext(request, DALLE3, 'A cat: "at night"'))
    assert parsed.prompt == "a cat, at night"
    assert parsed.params["Model"] == "openai/dall-e-3" and parsed.params["Revised prompt"] == 'A cat: "at night"'
    assert parsed.params["Quality"] == "hd" and parsed.params["Styles array"] == '["ink"]'
    assert "Seed" not in parsed.params and "Steps" not in parsed.params


def test_titles_and_secret_settings() -> None:
    assert split_title("openai/dall-e-3") == (Provider.OPENAI, "dall-e-3")
    assert split_title("Google/imagen-4.0-generate-001") == (Provider.GOOGLE, "imagen-4.0-generate-001")
    assert split_title("sd15/model.safetensors") is None and split_title("openai/") is None
    problem = setting_problem("openai_api_key", "sk-\nsecret-value")
    assert problem is not None and "secret-value" not in problem
    assert setting_problem("google_base_url", "ftp://x") is not None
