"""Generation parameters text: exact A1111 output, real A1111 texts, and write -> read round trips."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from modules import prompt_parser
from modules.infotext import (
    INFOTEXT_KEY_ORDER,
    REQUEST_KEYS,
    ModelIdentity,
    ParsedInfotext,
    build_infotext,
    parse_infotext,
)
from modules.infotext_request import request_from_infotext
from modules.params import MAX_SEED, GenerationRequest, HiresFix
from modules.samplers import SAMPLERS, RngSource, ScheduleType
from modules.upscalers import upscaler_names

SD15 = ModelIdentity(name="v1-5-pruned-emaonly", hash="6ce0161689")

A1111_HIRES_LORA = (
    "masterpiece, best quality, 1girl, <lora:add_detail:0.5>\n"
    "Negative prompt: (worst quality, low quality:1.4), easynegative\n"
    "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.4, "
    "Clip skip: 2, Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
    'Lora hashes: "add_detail: 7c6bad76eb54", Version: v1.10.1'
)


# --- writer ------------------------------------------------------------------------------------


def test_writer_matches_a1111_format_exactly() -> None:
    request = GenerationRequest(
        prompt="a castle on a hill,\nsunset", negative_prompt="blurry, lowres", sampler="DPM++ 2M",
        schedule=ScheduleType.KARRAS, steps=25, cfg_scale=7.0, width=512, height=768, clip_skip=2,
    )
    assert build_infotext(request, 1234567890, SD15, "v1.10.1") == (
        "a castle on a hill,\nsunset\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
        "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, Version: v1.10.1"
    )


def test_writer_leaves_out_empty_negative_default_clip_skip_and_unknown_model() -> None:
    request = GenerationRequest(prompt="cat", sampler="Euler a", cfg_scale=7.5, clip_skip=1)
    assert build_infotext(request, 1, None, "v1") == (
        "cat\nSteps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.5, Seed: 1, "
        "Size: 512x512, Version: v1"
    )
    no_hash = build_infotext(request, 1, ModelIdentity("sd", None), "v1")
    assert "Model: sd," in no_hash and "Model hash" not in no_hash


def test_tiling_is_written_after_rng_only_when_on_and_read_back() -> None:
    request = GenerationRequest(prompt="tiles", sampler="Euler", tiling=True, rng=RngSource.CPU, mask_blur=4)
    text = build_infotext(request, 3, None, "v1", extra={"Lora hashes": "a: 1"})
    assert "RNG: CPU, Tiling: True, Lora hashes:" in text
    assert request_from_infotext(parse_infotext(text))[0].tiling is True
    untiled = build_infotext(replace(request, tiling=False), 3, None, "v1")
    assert "Tiling" not in untiled and request_from_infotext(parse_infotext(untiled))[0].tiling is False
    assert request_from_infotext(parse_infotext(text.replace("Tiling: True", "Tiling: False")))[0].tiling is False


def test_writer_places_extra_keys_in_a1111_order() -> None:
    extra = {
        "My extension": "on",
        "Lora hashes": "add_detail: 7c6bad76eb54",
        "Refiner": "sdxl-refiner [7440042bbd]",
        "Image CFG scale": None,  # None = left out
        "VAE": "sdxl_vae.safetensors",
    }
    request = GenerationRequest(seed_resize_from_width=64, seed_resize_from_height=64, hires=HiresFix(), tiling=True)
    text = build_infotext(request, 1, None, "v1", extra)
    assert text.endswith(
        "Size: 512x512, VAE: sdxl_vae.safetensors, Seed resize from: 64x64, Denoising strength: 0.7, Tiling: True, "
        'Hires upscale: 2, Hires upscaler: Latent, Refiner: sdxl-refiner [7440042bbd], '
        'Lora hashes: "add_detail: 7c6bad76eb54", My extension: on, Version: v1'
    )


@pytest.mark.parametrize(("cfg", "written"), [(7, "7"), (7.0, "7"), (7.5, "7.5"), (4.25, "4.25")])
def test_cfg_scale_is_written_like_a1111(cfg: float, written: str) -> None:
    text = build_infotext(GenerationRequest(cfg_scale=cfg), 1, None, "v1")
    assert f"CFG scale: {written}," in text


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("plain", "plain"),
        ('mid"quote', 'mid"quote'),
        ("a, b", '"a, b"'),
        ("a: b", '"a: b"'),
        ("two\nlines", '"two\\nlines"'),
        ('"leading quote', '"\\"leading quote"'),  # else a reader would take it for a quoted value
        (" edge ", '" edge "'),  # else the reader would eat the spaces
    ],
)
def test_values_are_quoted_only_when_a_reader_needs_it(value: str, written: str) -> None:
    text = build_infotext(GenerationRequest(), 1, None, "v1", {"Note": value})
    assert f"Note: {written}, Version" in text
    assert parse_infotext(text).params["Note"] == value


@pytest.mark.parametrize("key", ["Steps", "Model", "Version", "bad: key", "x", "trailing "])
def test_writer_refuses_extra_keys_it_cannot_own_or_read_back(key: str) -> None:
    with pytest.raises(ValueError):
        build_infotext(GenerationRequest(), 1, None, "v1", {key: "v"})


# --- parser on real A1111 texts ----------------------------------------------------------------


def test_parses_a1111_text_with_quoted_value() -> None:
    parsed = parse_infotext(A1111_HIRES_LORA)
    assert parsed.prompt == "masterpiece, best quality, 1girl, <lora:add_detail:0.5>"
    assert parsed.negative_prompt == "(worst quality, low quality:1.4), easynegative"
    assert parsed.params["Lora hashes"] == "add_detail: 7c6bad76eb54"
    assert parsed.params["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert parsed.params["Version"] == "v1.10.1"
    assert (parsed.params["Size"], parsed.params["Size-1"], parsed.params["Size-2"]) == ("512x768", "512", "768")

    request, warnings = request_from_infotext(parsed, upscaler_models=["4x-UltraSharp"])
    # An upscaler model not installed here is named in a warning; the latent one stands in.
    assert warnings == ["Hires upscaler: 'R-ESRGAN 4x+ Anime6B' is not available here; using Latent"]
    assert request == GenerationRequest(
        prompt=parsed.prompt, negative_prompt=parsed.negative_prompt, sampler="DPM++ 2M",
        schedule=ScheduleType.KARRAS, steps=25, cfg_scale=7.0, width=512, height=768, seed=1234567890,
        clip_skip=2, checkpoint="v1-5-pruned-emaonly", eta_noise_seed_delta=0, rng=RngSource.GPU,
        hires=HiresFix(scale=2.0, steps=10, upscaler="Latent", denoising_strength=0.4),
        emphasis="Original",  # no Emphasis key, and the negative prompt weighs words (as A1111 reads it)
    )
    assert parsed.params["Model hash"] == "6ce0161689"
    # Installed, the model is used; with no list given (the API), the name is kept for validation to check.
    for models in (["r-esrgan 4x+ anime6b"], None):
        kept, warnings = request_from_infotext(parsed, upscaler_models=models)
        assert kept.hires is not None and kept.hires.upscaler == "R-ESRGAN 4x+ Anime6B" and warnings == []


def test_multiline_prompt_and_negative_prompt() -> None:
    text = (
        "a red fox,\n  in the snow  \n\nwinter\n"
        "Negative prompt: blurry,\nlowres\n  jpeg artifacts\n"
        "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 7, Size: 768x512"
    )
    parsed = parse_infotext(text)
    assert parsed.prompt == "a red fox,\nin the snow\n\nwinter"  # lines stripped, as A1111 does
    assert parsed.negative_prompt == "blurry,\nlowres\njpeg artifacts"
    request, _ = request_from_infotext(parsed)
    assert (request.steps, request.cfg_scale, request.width, request.height) == (30, 6.5, 768, 512)


def test_missing_negative_prompt_and_defaults() -> None:
    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 512x512"
    parsed = parse_infotext(text)
    assert (parsed.prompt, parsed.negative_prompt) == ("a cat", "")
    assert "Clip skip" not in parsed.params and "Schedule type" not in parsed.params
    base = GenerationRequest(negative_prompt="old", clip_skip=2, schedule=ScheduleType.KARRAS, checkpoint="x")
    request, warnings = request_from_infotext(parsed, base)
    assert warnings == []
    # Missing keys with an A1111 default take it; the rest keep the base's values.
    assert (request.clip_skip, request.schedule, request.negative_prompt) == (1, ScheduleType.AUTOMATIC, "")
    assert request.checkpoint == "x"


def test_old_combined_sampler_name() -> None:
    text = "a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 42, Size: 512x512, Model hash: 6ce0161689"
    request, warnings = request_from_infotext(parse_infotext(text))
    assert (request.sampler, request.schedule, warnings) == ("DPM++ 2M", ScheduleType.KARRAS, [])
    assert request.checkpoint == "6ce0161689"  # only the hash is known: the caller matches hashes too


@pytest.mark.parametrize(("label", "expected"), [("karras", ScheduleType.KARRAS), ("sgm_uniform", ScheduleType.SGM_UNIFORM)])
def test_schedule_type_in_api_form(label: str, expected: ScheduleType) -> None:
    text = f"x\nSteps: 20, Sampler: Euler, Schedule type: {label}, CFG scale: 7"
    assert request_from_infotext(parse_infotext(text))[0].schedule is expected


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    parsed = parse_infotext("a photo\nstyle: oil, mood: calm")
    assert parsed == ParsedInfotext("a photo\nstyle: oil, mood: calm", "", {})
    assert parse_infotext("Negative prompt: ugly\nSteps: 20, Seed: 1").negative_prompt == "ugly\nSteps: 20, Seed: 1"


def test_wxh_values_split_and_bad_quotes_stay_raw() -> None:
    params = parse_infotext('x\nSteps: 1, Seed resize from: 640x480, Hires resize: "1024x768", Odd: "no json\\q"').params
    assert (params["Seed resize from-1"], params["Seed resize from-2"]) == ("640", "480")
    assert (params["Hires resize-1"], params["Hires resize-2"]) == ("1024", "768")
    assert params["Odd"] == '"no json\\q"'


@pytest.mark.parametrize("text", ["", None, "   \n  "])
def test_empty_text(text: str | None) -> None:
    assert parse_infotext(text) == ParsedInfotext()


def test_unusable_values_become_warnings() -> None:
    text = "x\nSteps: many, Sampler: Euler c, Schedule type: Cosine, CFG scale: high, Seed: 3, Size: big"
    base = GenerationRequest(steps=12, cfg_scale=5.0, width=640, height=448)
    request, warnings = request_from_infotext(parse_infotext(text), base)
    assert (request.steps, request.sampler, request.cfg_scale, request.seed) == (12, base.sampler, 5.0, 3)
    assert (request.width, request.height, request.schedule) == (640, 448, ScheduleType.AUTOMATIC)
    assert [w.split(":")[0] for w in warnings] == ["Sampler", "Schedule type", "Size", "Steps", "CFG scale"]


def test_any_sampler_takes_any_schedule_and_noise_keys_are_read() -> None:
    text = ("x\nSteps: 20, Sampler: Euler a, Schedule type: Align Your Steps, CFG scale: 7, Seed: 5, "
            "Variation seed: 9, Variation seed strength: 0.25, ENSD: 31337, RNG: CPU")
    request, warnings = request_from_infotext(parse_infotext(text))
    assert (request.sampler, request.schedule) == ("Euler a", ScheduleType.ALIGN_YOUR_STEPS)
    assert (request.variation_seed, request.variation_strength, request.eta_noise_seed_delta) == (9, 0.25, 31337)
    assert request.rng is RngSource.CPU and warnings == []


def test_prompt_line_that_looks_like_parameters_survives() -> None:
    # The writer always ends with a parameters line of 3+ pairs, so only that line is read as one.
    request = GenerationRequest(prompt="Steps: 5, Sampler: Euler, Seed: 9", negative_prompt="CFG scale: 2, Seed: 1, Size: 8x8")
    parsed = parse_infotext(build_infotext(request, 4, None, "v1"))
    assert (parsed.prompt, parsed.negative_prompt) == (request.prompt, request.negative_prompt)
    assert parsed.params["Seed"] == "4"


# --- round trips -------------------------------------------------------------------------------

FRAGMENTS = (",", ":", '"', "\\", "\n", "\r\n", " ", "\t", "é", "日本", "\\n", '\\"', "Negative prompt",
             "Steps: 20, Sampler: Euler, Seed: 1", '"a, b"', "512x512", "(x:1.2)")
tricky_text = st.lists(st.one_of(st.text(max_size=6), st.sampled_from(FRAGMENTS)), max_size=8).map("".join)


def a1111_prompt(text: str) -> str:
    """What A1111 keeps of a prompt: every line stripped, then the whole stripped."""
    return "\n".join(line.strip() for line in text.split("\n")).strip()


@st.composite
def hires_fixes(draw: st.DrawFn, sampler: str, schedule: ScheduleType, prompt: str, negative: str) -> HiresFix:
    """Hires settings as the writer can express them: a sampler, schedule or prompt equal to the
    first pass's is not written (A1111 leaves it out), so it reads back as "the same"."""
    by_size = draw(st.booleans())
    hr_sampler = draw(st.one_of(st.none(), st.sampled_from([s.name for s in SAMPLERS if s.name != sampler])))
    return HiresFix(
        scale=2.0 if by_size else draw(st.one_of(st.just(2.0), st.floats(1.0, 4.0))),  # unwritten with a size
        resize_width=draw(st.integers(8, 256)) * 8 if by_size else 0,
        resize_height=draw(st.integers(8, 256)) * 8 if by_size else 0,
        upscaler=draw(st.sampled_from(upscaler_names())), steps=draw(st.integers(0, 150)),
        denoising_strength=draw(st.floats(0.0, 1.0)), sampler=hr_sampler,
        schedule=draw(st.one_of(st.none(), st.sampled_from([t for t in ScheduleType if t is not schedule]))),
        prompt=draw(st.one_of(st.just(""), tricky_text.map(a1111_prompt).filter(
            lambda p: p != prompt and not p.startswith(" ") and p == p.strip()))),
        negative_prompt=draw(st.one_of(st.just(""), tricky_text.map(a1111_prompt).filter(
            lambda p: p != negative and p == p.strip()))),
    )


@st.composite
def requests(draw: st.DrawFn) -> GenerationRequest:
    spec = draw(st.sampled_from(SAMPLERS))
    prompt, negative = a1111_prompt(draw(tricky_text)), a1111_prompt(draw(tricky_text))
    # A line starting "Negative prompt:" is where A1111's reader starts the negative prompt, so such
    # a prompt cannot come back. No filter is needed for a prompt's last line looking like
    # parameters: the writer always follows it with the real parameters line.
    assume(not any(line.startswith("Negative prompt:") for line in f"{prompt}\n{negative}".split("\n")))
    strength = draw(st.one_of(st.just(0.0), st.floats(0.01, 1.0)))
    schedule = draw(st.sampled_from(list(ScheduleType)))
    resize = draw(st.one_of(st.just((0, 0)), st.tuples(st.integers(1, 256), st.integers(1, 256)).map(
        lambda wh: (wh[0] * 8, wh[1] * 8))))
    return GenerationRequest(
        prompt=prompt, negative_prompt=negative, sampler=spec.name,
        seed_resize_from_width=resize[0], seed_resize_from_height=resize[1],
        hires=draw(st.one_of(st.none(), hires_fixes(spec.name, schedule, prompt, negative))),
        schedule=schedule, steps=draw(st.integers(1, 150)),
        cfg_scale=draw(st.one_of(st.integers(1, 30).map(float), st.floats(1.0, 30.0))),
        width=draw(st.integers(8, 256)) * 8, height=draw(st.integers(8, 256)) * 8,
        seed=draw(st.integers(0, MAX_SEED)), clip_skip=draw(st.integers(1, 12)),
        checkpoint=draw(st.text(min_size=1, max_size=20).filter(str.strip)),
        variation_strength=strength, variation_seed=draw(st.integers(0, MAX_SEED)) if strength else -1,
        eta_noise_seed_delta=draw(st.integers(0, MAX_SEED)) if spec.uses_ensd else 0,
        rng=draw(st.sampled_from(list(RngSource))),
        tiling=draw(st.booleans()),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests(), model_hash=st.one_of(st.none(), st.text("0123456789abcdef", min_size=10, max_size=10)))
def test_request_round_trips(request: GenerationRequest, model_hash: str | None) -> None:
    model = ModelIdentity(request.checkpoint, model_hash)  # type: ignore[arg-type]
    text = build_infotext(request, request.seed, model, "v1.10.1")
    parsed = parse_infotext(text)
    back, warnings = request_from_infotext(parsed, GenerationRequest(batch_count=3))
    assert warnings == []
    assert back == replace(request, batch_count=3, emphasis=_read_as_a1111(request))
    assert parsed.params.get("Model hash") == model_hash


def _read_as_a1111(request: GenerationRequest) -> str | None:
    """The emphasis A1111 reads from an infotext without an Emphasis key: "Original" where the
    prompts weigh words (it writes the key only for another mode), else nothing."""
    return "Original" if prompt_parser.uses_weights(request.prompt, request.negative_prompt) else None


# REQUEST_KEYS are taken from the request itself; an extra naming one is refused.
extra_keys = st.one_of(
    st.sampled_from([k for k in INFOTEXT_KEY_ORDER if k not in REQUEST_KEYS]),
    # No digits: a WxH value also yields "<key>-1"/"<key>-2", which a generated key must not collide with.
    st.from_regex(r"[A-Za-zé][A-Za-zé _/\-]{0,12}[A-Za-zé]", fullmatch=True).filter(lambda k: k not in REQUEST_KEYS),
)
extra_values = st.one_of(st.none(), tricky_text, st.integers(), st.booleans(),
                         st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests(), extra=st.dictionaries(extra_keys, extra_values, max_size=6), version=tricky_text)
def test_extra_values_round_trip(request: GenerationRequest, extra: dict[str, object], version: str) -> None:
    text = build_infotext(request, request.seed, None, version, extra)
    parsed = parse_infotext(text)
    written = {k: v for k, v in extra.items() if v is not None}
    for key, value in written.items():
        if isinstance(value, float):
            assert float(parsed.params[key]) == value
        else:
            assert parsed.params[key] == str(value)
    assert parsed.params["Version"] == version
    expected_order = [k for k in INFOTEXT_KEY_ORDER if k in written] + [k for k in written if k not in INFOTEXT_KEY_ORDER]
    read_order = [k for k in parsed.params if k in written]
    assert read_order == expected_order
    # "VAE" and "Refiner" come from extra here, and read back into the request.
    back = request_from_infotext(parsed)[0]
    assert replace(back, vae=None, refiner=None) == replace(request, checkpoint=None, emphasis=_read_as_a1111(request))
