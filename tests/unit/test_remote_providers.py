"""The remote engines' provider clients against the offline fake of both APIs, with the official
``openai`` and ``google-genai`` clients: what reaches the server, what comes back, every failure as
a ProviderError naming the provider and the reason, and the key never in a message."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from modules.devtools.fake_image_apis import FakeImageApis
from modules.errors import ProviderError, ProviderFailure
from modules.services.remote.calls import ImageCall, ProviderAccess, ProviderClient, scrub
from modules.services.remote.google_provider import GoogleProvider
from modules.services.remote.openai_provider import OpenAIProvider

KEY = "sk-fake-SECRET-key-4711"
WRONG_KEY = "sk-wrong-SECRET-key-0815"
IMAGEN = "imagen-4.0-generate-001"


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeImageApis]:
    with FakeImageApis(key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh(fake: FakeImageApis) -> None:
    fake.clear()


def client(fake: FakeImageApis, provider: str, key: str = KEY, base_url: str | None = None,
           **access: float) -> ProviderClient:
    if provider == "openai":
        return OpenAIProvider(ProviderAccess(api_key=key, base_url=base_url or fake.openai_base_url, **access))
    return GoogleProvider(ProviderAccess(api_key=key, base_url=base_url or fake.google_base_url, **access),
                          retry_delay=0.01)


def call_for(provider: str, prompt: str) -> ImageCall:
    model, size = ("dall-e-2", 256) if provider == "openai" else (IMAGEN, 1024)
    return ImageCall(model=model, prompt=prompt, width=size, height=size)


def png(width: int, height: int, colour: object = (40, 80, 120), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height), colour).save(out, format="PNG")  # type: ignore[arg-type]
    return out.getvalue()


def size_of(data: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(data)).size


def failure_of(provider: ProviderClient, call: ImageCall) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        provider.generate(call)
    return caught.value


def assert_no_key(error: ProviderError, name: str, *keys: str) -> None:
    assert str(error).startswith(f"{name}: ")
    for key in (KEY, WRONG_KEY, *keys):
        assert key not in str(error) and key not in repr(error)


# OpenAI


def test_dalle3_sends_size_quality_style_and_reads_the_revised_prompt(fake: FakeImageApis) -> None:
    result = client(fake, "openai").generate(
        ImageCall("dall-e-3", "a lighthouse", 1792, 1024, quality="hd", style="natural"))
    assert result.revised_prompts == ("revised: a lighthouse",)
    assert len(result.images) == 1 and size_of(result.images[0]) == (1792, 1024)
    (sent,) = fake.calls
    assert (sent["model"], sent["size"], sent["quality"], sent["style"]) == ("dall-e-3", "1792x1024", "hd", "natural")
    assert sent["n"] == 1 and sent["response_format"] == "b64_json"


def test_dalle2_makes_three_different_images(fake: FakeImageApis) -> None:
    result = client(fake, "openai").generate(ImageCall("dall-e-2", "three cats", 512, 512, count=3))
    assert len(result.images) == 3 and len(set(result.images)) == 3
    assert all(size_of(image) == (512, 512) for image in result.images)
    assert result.revised_prompts == (None, None, None)
    assert fake.calls[0]["n"] == 3


def test_gpt_image_is_never_sent_response_format(fake: FakeImageApis) -> None:
    result = client(fake, "openai").generate(ImageCall("gpt-image-1", "a fox", 1536, 1024, quality="high"))
    assert size_of(result.images[0]) == (1536, 1024)
    (sent,) = fake.calls
    assert sent["response_format"] is None and sent["quality"] == "high" and sent["status"] == 200
    refused = httpx.post(f"{fake.openai_base_url}/images/generations", headers={"Authorization": f"Bearer {KEY}"},
                         json={"model": "gpt-image-1", "prompt": "a fox", "response_format": "b64_json"})
    assert refused.status_code == 400 and "response_format" in refused.json()["error"]["message"]


def test_edit_sends_the_mask_as_transparent_where_ours_is_white(fake: FakeImageApis) -> None:
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (0, 0, 128, 256))  # change the left half
    mask_png = io.BytesIO()
    mask.save(mask_png, format="PNG")
    init = png(256, 256)
    result = client(fake, "openai").generate(ImageCall("dall-e-2", "a boat", 256, 256, init_image=init,
                                                       mask=mask_png.getvalue()))
    (sent,) = fake.calls
    assert sent["path"].endswith("/images/edits") and sent["image"] == init
    sent_mask = Image.open(io.BytesIO(sent["mask"]))
    assert sent_mask.mode == "RGBA" and sent_mask.size == (256, 256)
    alpha = sent_mask.getchannel("A")
    assert alpha.getpixel((10, 10)) == 0 and alpha.getpixel((127, 255)) == 0
    assert alpha.getpixel((128, 0)) == 255 and alpha.getpixel((250, 250)) == 255
    generated = client(fake, "openai").generate(ImageCall("dall-e-2", "a boat", 256, 256))
    assert size_of(result.images[0]) == (256, 256) and result.images[0] != generated.images[0]


def test_url_answers_are_fetched(fake: FakeImageApis) -> None:
    result = client(fake, "openai").generate(ImageCall("dall-e-2", "a tree [url]", 256, 256, count=2))
    assert [size_of(image) for image in result.images] == [(256, 256), (256, 256)]
    error = failure_of(client(fake, "openai"), ImageCall("dall-e-2", "a tree [url:missing]", 256, 256))
    assert error.failure is ProviderFailure.NETWORK and error.status == 404


def test_openai_lists_the_server_models(fake: FakeImageApis) -> None:
    models = client(fake, "openai").list_models()
    assert {"dall-e-2", "dall-e-3", "gpt-image-1", "fake-image-model", "gpt-4o"} <= set(models)


def test_openai_refusals(fake: FakeImageApis) -> None:
    openai = client(fake, "openai")
    policy = failure_of(openai, ImageCall("dall-e-3", "a thing [policy]", 1024, 1024))
    assert policy.failure is ProviderFailure.CONTENT_POLICY and "safety system" in str(policy)
    too_many = failure_of(openai, ImageCall("dall-e-3", "two", 1024, 1024, count=2))
    assert too_many.failure is ProviderFailure.BAD_REQUEST and too_many.status == 400
    bad_size = failure_of(openai, ImageCall("dall-e-3", "small", 512, 512))
    assert bad_size.failure is ProviderFailure.BAD_REQUEST and "size" in str(bad_size)
    for error in (policy, too_many, bad_size):
        assert_no_key(error, "openai")


def test_scrub_hides_a_masked_key() -> None:
    said = "Incorrect API key provided: sk-abc1*************************wxyz. You can find your API key at ..."
    assert "wxyz" not in scrub(said, "sk-abc1-rest-wxyz") and scrub("x" * 500, None).endswith("…")


# Google


def test_imagen_sends_the_aspect_ratio_and_reads_the_enhanced_prompt(fake: FakeImageApis) -> None:
    google = client(fake, "google")
    result = google.generate(ImageCall(IMAGEN, "a harbour", 1408, 768, count=2))
    assert result.revised_prompts == ("enhanced: a harbour",) * 2
    assert [size_of(image) for image in result.images] == [(1408, 768)] * 2
    google.generate(ImageCall("imagen-3.0-generate-001", "a harbour", 896, 1280, negative_prompt="boats"))
    plain, negative = fake.calls
    assert (plain["aspect_ratio"], plain["n"], plain["negative_prompt"]) == ("16:9", 2, None)
    assert "negativePrompt" not in plain["parameters"]
    assert (negative["aspect_ratio"], negative["negative_prompt"]) == ("3:4", "boats")


def test_imagen_safety_filter_is_a_content_policy_failure(fake: FakeImageApis) -> None:
    error = failure_of(client(fake, "google"), ImageCall(IMAGEN, "a thing [policy]", 1024, 1024))
    assert error.failure is ProviderFailure.CONTENT_POLICY and "safety filter" in str(error)
    assert_no_key(error, "google")


def test_imagen_refuses_edits_and_other_sizes_without_a_call(fake: FakeImageApis) -> None:
    google = client(fake, "google")
    edit = failure_of(google, ImageCall(IMAGEN, "x", 1024, 1024, init_image=png(1024, 1024)))
    assert edit.failure is ProviderFailure.BAD_REQUEST and "edits are not offered" in str(edit)
    assert failure_of(google, ImageCall(IMAGEN, "x", 512, 512)).failure is ProviderFailure.BAD_REQUEST
    unknown = failure_of(google, ImageCall("imagen-nope", "x", 1024, 1024))
    assert unknown.failure is ProviderFailure.BAD_REQUEST and unknown.status == 404
    assert len(fake.calls) == 1  # only the unknown model reached the server


def test_google_lists_the_server_models(fake: FakeImageApis) -> None:
    models = client(fake, "google").list_models()
    assert IMAGEN in models and "gemini-2.5-flash" in models


# failures, both providers


@pytest.mark.parametrize("provider", ["openai", "google"])
def test_a_wrong_key_is_refused_and_never_shown(fake: FakeImageApis, provider: str) -> None:
    wrong = client(fake, provider, key=WRONG_KEY)
    error = failure_of(wrong, call_for(provider, "a cat"))
    assert error.failure is ProviderFailure.BAD_KEY
    assert_no_key(error, provider)
    with pytest.raises(ProviderError) as listed:
        wrong.list_models()
    assert listed.value.failure is ProviderFailure.BAD_KEY
    assert KEY not in repr(client(fake, provider)) and KEY not in repr(fake.calls)


@pytest.mark.parametrize("provider", ["openai", "google"])
def test_rate_limit_and_server_errors(fake: FakeImageApis, provider: str) -> None:
    limited = failure_of(client(fake, provider, max_retries=0), call_for(provider, "a cat [fail:429]"))
    assert limited.failure is ProviderFailure.RATE_LIMIT and limited.status == 429
    failed = failure_of(client(fake, provider, max_retries=2), call_for(provider, "a cat [fail:500]"))
    assert failed.failure is ProviderFailure.SERVER and failed.status == 500
    assert [c["prompt"] for c in fake.calls].count("a cat [fail:500]") == 3  # max_retries + 1
    for error in (limited, failed):
        assert_no_key(error, provider)


@pytest.mark.parametrize("provider", ["openai", "google"])
def test_one_rate_limit_is_retried(fake: FakeImageApis, provider: str) -> None:
    result = client(fake, provider, max_retries=2).generate(call_for(provider, "a dog [fail:429x1]"))
    assert len(result.images) == 1
    assert [c["status"] for c in fake.calls] == [429, 200]


@pytest.mark.parametrize("provider", ["openai", "google"])
def test_no_answer_in_time_is_a_timeout(fake: FakeImageApis, provider: str) -> None:
    start = time.monotonic()
    error = failure_of(client(fake, provider, timeout_seconds=0.3, max_retries=0),
                       call_for(provider, "a snail [slow:2]"))
    assert error.failure is ProviderFailure.TIMEOUT and time.monotonic() - start < 1.5
    assert_no_key(error, provider)


@pytest.mark.parametrize("provider", ["openai", "google"])
def test_a_closed_port_is_a_network_failure(fake: FakeImageApis, provider: str) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}" + ("/v1" if provider == "openai" else "")
    error = failure_of(client(fake, provider, base_url=base, max_retries=0), call_for(provider, "a cat"))
    assert error.failure is ProviderFailure.NETWORK and error.status is None
    assert_no_key(error, provider)


def test_a_provider_needs_a_key() -> None:
    for make in (OpenAIProvider, GoogleProvider):
        with pytest.raises(ProviderError) as caught:
            make(ProviderAccess(api_key=None))
        assert caught.value.failure is ProviderFailure.BAD_KEY
