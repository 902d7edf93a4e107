"""Textual inversion embeddings in prompt encoding, on the tiny SD1.5 and SDXL models."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from modules.devtools.tiny_embedding import write_tiny_embedding
from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.embeddings import Embedding, encoder_slots, fits, load_embedding
from modules.engine.loader import LoadedModel, load_model
from modules.engine.prompt_encoding import CHUNK_TOKENS, EmbeddingFix, build_conditioning, encode_texts, weighted_chunks
from modules.engine.sampling.denoiser import Embeds
from modules.engine.token_count import count_tokens
from modules.errors import AddonLoadError


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, LoadedModel]:
    device = choose_device(DevicePolicy(use_cpu=True))
    cache = tmp_path_factory.mktemp("config-cache")
    return {"sd15": load_model(tiny_models.sd15_file, device, cache),
            "sdxl": load_model(tiny_models.sdxl_file, device, cache)}


@pytest.fixture(scope="module")
def embeddings(tiny_models, tmp_path_factory) -> dict[str, Embedding]:
    folder = tmp_path_factory.mktemp("embeddings")
    return {"sd15": load_embedding(write_tiny_embedding(folder / "tinyemb.pt", checkpoint=tiny_models.sd15_file)),
            "sdxl": load_embedding(write_tiny_embedding(folder / "tinyemb.safetensors",
                                                        checkpoint=tiny_models.sdxl_file, seed=1))}


ARCHS = ["sd15", "sdxl"]


def encode(model: LoadedModel, text: str, offered: Mapping[str, Embedding] | None = None, *others: str) -> Embeds:
    return encode_texts(model.pipeline, model.arch, [text, *others], 1, offered)[text]


def same(a: Embeds, b: Embeds) -> bool:
    pooled = (a.pooled is None and b.pooled is None) or torch.equal(a.pooled, b.pooled)
    return torch.equal(a.tokens, b.tokens) and pooled


def close(a: Embeds, b: Embeds) -> bool:
    pooled = (a.pooled is None and b.pooled is None) or torch.allclose(a.pooled, b.pooled, atol=1e-6)
    return torch.allclose(a.tokens, b.tokens, atol=1e-6) and pooled


@pytest.mark.parametrize("arch", ARCHS)
def test_name_in_the_prompt_uses_the_embedding(models, embeddings, arch) -> None:
    model, offered = models[arch], {"tinyemb": embeddings[arch]}
    used = encode(model, "a photo of tinyemb", offered)
    assert not same(used, encode(model, "a photo of tinyemb"))
    if arch == "sdxl":
        assert not torch.equal(used.pooled, encode(model, "a photo of tinyemb").pooled)
    assert same(used, encode(model, "a photo of TinyEmb", offered))  # any case
    for word in ("tinyembx", "xtinyemb"):  # part of a longer word: plain text
        assert same(encode(model, f"a photo of {word}", offered), encode(model, f"a photo of {word}"))
    assert not same(encode(model, "a photo of (tinyemb:1.5)", offered), used)  # takes the emphasis
    for encoder in (e for _, e in encoder_slots(model.pipeline, model.arch)):  # nothing stays on the model
        assert not encoder.get_input_embeddings()._forward_hooks


@pytest.mark.parametrize("arch", ARCHS)
def test_vectors_replace_the_name_exactly(models, arch) -> None:
    """An embedding holding the token rows of "red cat" encodes exactly as the words do."""
    model = models[arch]
    ids = model.pipeline.tokenizer_2.encode if arch == "sdxl" else model.pipeline.tokenizer.encode
    rows = ids("red cat", add_special_tokens=False)
    vectors = {slot: encoder.get_input_embeddings().weight[rows].detach().clone()
               for slot, encoder in encoder_slots(model.pipeline, model.arch)}
    offered = {"redcat": Embedding(name="redcat", vectors=vectors)}
    assert close(encode(model, "a (redcat:1.2) on a mat", offered), encode(model, "a (red cat:1.2) on a mat"))


@pytest.mark.parametrize("arch", ARCHS)
def test_without_embeddings_nothing_changes(models, embeddings, arch) -> None:
    model = models[arch]
    pipe, text = model.pipeline, "a photo of tinyemb, cat"
    plain = encode(model, text)
    assert same(plain, encode(model, text, {})) and same(plain, encode(model, text, {"other": embeddings[arch]}))
    # The reference: the encoders called directly on the padded tokens, as diffusers does.
    hidden, pooled = [], None
    with torch.inference_mode():
        for _, encoder in encoder_slots(pipe, model.arch):
            tokenizer = pipe.tokenizer_2 if arch == "sdxl" and encoder is pipe.text_encoder_2 else pipe.tokenizer
            ids = tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2] if arch == "sdxl" else out.last_hidden_state)
            pooled = getattr(out, "text_embeds", None)
    assert same(plain, Embeds(tokens=torch.cat(hidden, dim=-1), pooled=pooled))


@pytest.mark.parametrize("arch", ARCHS)
def test_embedding_never_splits_across_chunks(models, embeddings, arch) -> None:
    model, emb = models[arch], embeddings[arch]
    offered, tokenizer = {"tinyemb": emb}, model.pipeline.tokenizer
    words = " ".join(["cat"] * (CHUNK_TOKENS - 1))  # one free position: the 2 vectors do not fit
    chunks = weighted_chunks(tokenizer, f"{words} tinyemb", offered)
    assert [len(c.ids) for c in chunks] == [CHUNK_TOKENS - 1, 2]
    assert chunks[1].fixes == (EmbeddingFix(0, "tinyemb"),) and not chunks[0].fixes
    long = encode(model, f"{words} tinyemb", offered, "tinyemb")
    alone = encode(model, "tinyemb", offered, f"{words} tinyemb")
    assert torch.equal(long.tokens[:, 77:], alone.tokens[:, :77])  # the second chunk is the embedding alone
    # A full chunk breaks after a close comma: the embedding after it moves with the words.
    chunks = weighted_chunks(tokenizer, " ".join(["cat"] * 70) + ", tinyemb dog dog dog", offered)
    assert [len(c.ids) for c in chunks] == [71, 5] and chunks[1].fixes == (EmbeddingFix(0, "tinyemb"),)
    assert str(count_tokens("a tinyemb", embeddings=offered)) == "3/75" and str(count_tokens("a tinyemb")) == "4/75"


def test_embedding_in_negative_and_edited_prompts(models, embeddings) -> None:
    model, offered = models["sd15"], {"tinyemb": embeddings["sd15"]}
    args = (model.pipeline, model.arch, "a [cat:tinyemb:2]", "tinyemb", 1, 4)
    with_emb, without = build_conditioning(*args, offered), build_conditioning(*args)
    assert not same(with_emb.negative.parts[0][1], without.negative.parts[0][1])
    (first, a), (_, b) = with_emb.positive[0][0].parts
    assert first == 3 and same(a, without.positive[0][0].parts[0][1]) and not same(b, a)


def test_fits_only_the_matching_architecture(models, embeddings) -> None:
    for model_arch, model in models.items():
        for emb_arch, emb in embeddings.items():
            assert fits(emb, model.pipeline, model.arch) == (model_arch == emb_arch)
    with pytest.raises(AddonLoadError):  # offering one that does not fit is the caller's bug, said clearly
        encode(models["sd15"], "tinyemb", {"tinyemb": embeddings["sdxl"]})
