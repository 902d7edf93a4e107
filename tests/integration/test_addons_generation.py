"""LoRA, textual inversion and VAE choice through the one service path on tiny models."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.infotext import parse_infotext
from modules.params import GenerationRequest

BASE = GenerationRequest(prompt="a red cube, studio light", negative_prompt="blurry", steps=3, width=64, height=64,
                         seed=321, sampler="Euler", checkpoint="tiny-sd15.safetensors", save_images=False)


@pytest.fixture(scope="module")
def addon_services(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Services whose data dir holds a tiny LoRA, embeddings and VAEs made for the tiny checkpoints."""
    from modules.devtools.tiny_embedding import write_tiny_embedding
    from modules.devtools.tiny_lora import LoraStyle, write_tiny_lora
    from modules.devtools.tiny_vae import write_tiny_vae
    from tests.conftest import make_services

    data = tmp_path_factory.mktemp("addon-data")
    lora_dir, vae_dir, emb_dir = data / "models" / "Lora", data / "models" / "VAE", data / "embeddings"
    for folder in (lora_dir, vae_dir, emb_dir):
        folder.mkdir(parents=True)
    write_tiny_lora(tiny_models.sd15_file, lora_dir / "tiny.safetensors", seed=3)
    (lora_dir / "styles").mkdir()  # LoRAs in subfolders are found too, by their stem
    write_tiny_lora(tiny_models.sd15_file, lora_dir / "styles" / "other.safetensors", seed=4, style=LoraStyle.PEFT)
    write_tiny_lora(tiny_models.sdxl_file, lora_dir / "tiny-xl.safetensors", seed=5)
    write_tiny_embedding(emb_dir / "shinyemb.pt", checkpoint=tiny_models.sd15_file, seed=2)
    write_tiny_embedding(emb_dir / "xlemb.safetensors", checkpoint=tiny_models.sdxl_file, seed=2)
    write_tiny_vae(tiny_models.sd15_file, vae_dir / "other-vae.safetensors", seed=9)
    write_tiny_vae(tiny_models.sd15_file, vae_dir / "tiny-sd15.safetensors", seed=10)  # "Automatic" picks it
    svc = make_services(data, tiny_models.folder)
    yield svc
    svc.close()


def pixels_of(result) -> np.ndarray:
    with Image.open(io.BytesIO(result.images[0].png)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def run(services, request: GenerationRequest) -> tuple[object, np.ndarray]:
    result = services.generation.generate(request)
    return result, pixels_of(result)


def test_lora_tag_changes_the_image_and_leaves_no_trace(addon_services, tiny_models, tmp_path: Path) -> None:
    from tests.conftest import make_services

    svc = addon_services
    plain_request = replace(BASE, vae="None")
    _, plain = run(svc, plain_request)
    result, with_lora = run(svc, replace(plain_request, prompt=BASE.prompt + " <lora:tiny:1>"))
    _, zero = run(svc, replace(plain_request, prompt=BASE.prompt + " <lora:tiny:0>"))
    _, after = run(svc, plain_request)
    assert not np.array_equal(plain, with_lora)
    assert np.array_equal(plain, zero)
    parsed = parse_infotext(result.images[0].infotext)
    assert parsed.prompt.endswith("<lora:tiny:1>")  # the infotext keeps the tag, as A1111's does
    assert parsed.params["Lora hashes"] == f"tiny: {svc.addons.loras.short_hash(svc.addons.loras.require('tiny'))}"
    # After the LoRA is removed, the next job matches a job on a freshly loaded checkpoint.
    fresh = make_services(tmp_path, tiny_models.folder)
    try:
        _, fresh_pixels = run(fresh, plain_request)
    finally:
        fresh.close()
    assert np.array_equal(after, fresh_pixels) and np.array_equal(plain, fresh_pixels)


def test_two_loras_and_separate_weights(addon_services) -> None:
    svc = addon_services
    request = replace(BASE, vae="None")
    _, one = run(svc, replace(request, prompt="cube <lora:tiny:0.8>"))
    result, two = run(svc, replace(request, prompt="cube <lora:tiny:0.8> <lora:other:1>"))
    _, te_only = run(svc, replace(request, prompt="cube <lora:tiny:0.8:0>"))
    assert not np.array_equal(one, two) and not np.array_equal(one, te_only)
    assert parse_infotext(result.images[0].infotext).params["Lora hashes"].count(": ") == 2


def test_unknown_lora_and_bad_weight_are_refused_before_queuing(addon_services) -> None:
    with pytest.raises(ValidationError, match="nope"):
        addon_services.generation.prepare(replace(BASE, prompt="x <lora:nope:1>"))
    with pytest.raises(ValidationError, match="not a number"):
        addon_services.generation.prepare(replace(BASE, prompt="x <lora:tiny:lots>"))
    with pytest.raises(ValidationError, match="LoRA not found"):  # a path is a name like any other
        addon_services.generation.prepare(replace(BASE, prompt="x <lora:../../secret:1>"))


def test_sdxl_lora_on_sdxl(addon_services) -> None:
    request = replace(BASE, checkpoint="tiny-sdxl", vae="None")
    _, plain = run(addon_services, request)
    _, lora = run(addon_services, replace(request, prompt="cube <lora:tiny-xl:1>"))
    assert not np.array_equal(plain, lora)


@pytest.mark.parametrize(("checkpoint", "name"), [("tiny-sd15.safetensors", "shinyemb"), ("tiny-sdxl", "xlemb")])
def test_embedding_name_changes_the_image(addon_services, checkpoint: str, name: str) -> None:
    request = replace(BASE, checkpoint=checkpoint, vae="None", prompt="a photo of shiny")
    _, plain = run(addon_services, request)
    result, embedded = run(addon_services, replace(request, prompt=f"a photo of {name}"))
    _, word = run(addon_services, replace(request, prompt=f"a photo of {name}x"))  # not a whole word: plain text
    assert not np.array_equal(plain, embedded) and not np.array_equal(embedded, word)
    assert parse_infotext(result.images[0].infotext).params["TI hashes"].startswith(f"{name}: ")


def test_embeddings_listing_splits_by_model(addon_services) -> None:
    addon_services.generation.switch_model("tiny-sd15.safetensors").future.result()
    listing = addon_services.addons.listing(addon_services.models.loaded_model())
    assert set(listing["loaded"]) == {"shinyemb"} and set(listing["skipped"]) == {"xlemb"}
    assert listing["loaded"]["shinyemb"]["vectors"] == 2


def test_vae_choice_changes_the_image_and_is_named(addon_services) -> None:
    svc = addon_services
    _, own = run(svc, replace(BASE, vae="None"))
    result, other = run(svc, replace(BASE, vae="other-vae.safetensors"))
    auto_result, auto = run(svc, replace(BASE, vae="Automatic"))
    _, own_again = run(svc, replace(BASE, vae="None"))
    assert not np.array_equal(own, other) and not np.array_equal(own, auto) and not np.array_equal(other, auto)
    assert np.array_equal(own, own_again)
    params = parse_infotext(result.images[0].infotext).params
    assert params["VAE"] == "other-vae.safetensors"
    assert params["VAE hash"] == svc.addons.vaes.short_hash(svc.addons.vaes.require("other-vae.safetensors"))
    assert parse_infotext(auto_result.images[0].infotext).params["VAE"] == "tiny-sd15.safetensors"
    assert "VAE" not in parse_infotext(run(svc, replace(BASE, vae="None"))[0].images[0].infotext).params
    with pytest.raises(ValidationError, match="sd_vae"):
        svc.generation.prepare(replace(BASE, vae="missing.safetensors"))
