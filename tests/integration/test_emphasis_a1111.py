"""A1111's emphasis modes ("Original", "No norm", "Ignore", "None") on tiny CLIP text encoders,
checked against a restatement of A1111's method (sd_hijack_clip + sd_emphasis): the texts one
prompt is scheduled to are encoded as one batch, and "Original" restores the mean of that whole
batch, chunk by chunk, for each text encoder on its own."""

from __future__ import annotations

import pytest
import torch

from modules.devtools.tiny_model import TinyArch, build_tiny_pipeline
from modules.engine.model_detect import ModelArch
from modules.engine.prompt_encoding import build_conditioning

# Steps 4: "[...:...:2]" schedules two texts, encoded together by A1111.
PROMPT = "[(cat:1.5) sat:a dog sat:2]"
TEXTS = [[("cat", 1.5), (" sat", 1.0)], [("a dog sat", 1.0)]]  # A1111's parse_prompt_attention of each
LITERAL = [[("(cat:1.5) sat", 1.0)], [("a dog sat", 1.0)]]  # "None": brackets are text


@pytest.fixture(scope="module")
def sd15():
    pipe = build_tiny_pipeline(TinyArch.SD15, seed=3)
    with torch.no_grad():  # a real CLIP's outputs have a clear mean; a random tiny one's is ~0
        getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm.bias.add_(0.25)
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    return build_tiny_pipeline(TinyArch.SDXL, seed=3)


def a1111_batch(tokenizer, texts: list[list[tuple[str, float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A1111's one-chunk batch: start token, the fragments' tokens with their weights, end token, padding."""
    rows, weights = [], []
    for fragments in texts:
        ids, mults = [], []
        for text, weight in fragments:
            found = tokenizer(text, add_special_tokens=False).input_ids
            ids += found
            mults += [weight] * len(found)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        row = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        rows.append(row + [pad] * (77 - len(row)))
        weights.append([1.0, *mults] + [1.0] * (76 - len(mults)))
    return torch.tensor(rows), torch.tensor(weights)


def a1111_emphasis(z: torch.Tensor, multipliers: torch.Tensor, mode: str) -> torch.Tensor:
    """sd_emphasis: Original = multiply, then scale by original_mean / new_mean over the whole z."""
    if mode in ("None", "Ignore"):
        return z
    original_mean = z.mean()
    z = z * multipliers.reshape(multipliers.shape + (1,)).expand(z.shape)
    return z if mode == "No norm" else z * (original_mean / z.mean())


def positive_texts(pipe, arch: ModelArch, mode: str) -> list[torch.Tensor]:
    conditioning = build_conditioning(pipe, arch, PROMPT, "", 1, 4, emphasis=mode)
    schedule = conditioning.positive[0][0]
    return [embeds.tokens[0] for _until, embeds in schedule.parts]


@torch.no_grad()
@pytest.mark.parametrize("mode", ["Original", "No norm", "Ignore", "None"])
def test_sd15_modes_match_a1111(sd15, mode: str) -> None:
    rows, weights = a1111_batch(sd15.tokenizer, LITERAL if mode == "None" else TEXTS)
    z = sd15.text_encoder(rows).last_hidden_state  # both texts in one batch, as A1111 encodes a schedule
    expected = a1111_emphasis(z, weights, mode)
    got = positive_texts(sd15, ModelArch.SD1, mode)
    assert len(got) == 2
    for ours, theirs in zip(got, expected, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_original_restores_the_mean_of_both_texts_not_of_each(sd15) -> None:
    got = positive_texts(sd15, ModelArch.SD1, "Original")
    alone = build_conditioning(sd15, ModelArch.SD1, "a dog sat", "", 1, 4).positive[0][0].parts[0][1].tokens[0]
    # "a dog sat" has no weights, yet the batch's rescale moves it: A1111's mean is over the batch.
    assert not torch.allclose(got[1], alone)
    rows, weights = a1111_batch(sd15.tokenizer, TEXTS)
    z = sd15.text_encoder(rows).last_hidden_state
    assert torch.allclose(torch.stack(got).mean(), z.mean(), atol=1e-6)  # the batch's mean is kept
    assert not torch.allclose(got[0].mean(), z[0].mean(), atol=1e-4)  # each text's own mean is not


@torch.no_grad()
@pytest.mark.parametrize("mode", ["Original", "No norm"])
def test_sdxl_weighs_each_encoder_on_its_own(sdxl, mode: str) -> None:
    parts = []
    for tokenizer, encoder in ((sdxl.tokenizer, sdxl.text_encoder), (sdxl.tokenizer_2, sdxl.text_encoder_2)):
        rows, weights = a1111_batch(tokenizer, TEXTS)
        out = encoder(rows, output_hidden_states=True)
        parts.append(a1111_emphasis(out.hidden_states[-2], weights, mode))
        pooled = getattr(out, "text_embeds", None)
    expected = torch.cat(parts, dim=-1)
    conditioning = build_conditioning(sdxl, ModelArch.SDXL, PROMPT, "", 1, 4, emphasis=mode)
    got = [embeds for _until, embeds in conditioning.positive[0][0].parts]
    for i, embeds in enumerate(got):
        torch.testing.assert_close(embeds.tokens[0], expected[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(embeds.pooled[0], pooled[i], atol=1e-5, rtol=1e-5)  # emphasis leaves it


def test_an_unknown_mode_is_refused(sd15) -> None:
    with pytest.raises(ValueError, match="No norm"):
        build_conditioning(sd15, ModelArch.SD1, PROMPT, "", 1, 4, emphasis="Loud")


def test_sdxl_empty_negative_prompt_is_zeros_as_in_a1111(sdxl, sd15) -> None:
    # A1111's SDXL conditioner runs with force_zero_embeddings=["txt"] for a batch of empty negative
    # prompts: both text encoders' tokens and the pooled vector are zeros. Only for "" exactly, and only SDXL.
    pipe, arch = sdxl, ModelArch.SDXL
    empty = build_conditioning(pipe, arch, "a red cube", "", 1, 4).negative.parts[0][1]
    assert not empty.tokens.any() and empty.pooled is not None and not empty.pooled.any()
    spaced = build_conditioning(pipe, arch, "a red cube", " ", 1, 4).negative.parts[0][1]
    assert spaced.tokens.abs().sum() > 0 and spaced.pooled.abs().sum() > 0
    positive = build_conditioning(pipe, arch, "", "", 1, 4).positive[0][0].parts[0][1]
    assert positive.tokens.abs().sum() > 0  # an empty positive prompt is encoded as usual
    sd_pipe, sd_arch = sd15, ModelArch.SD1
    assert build_conditioning(sd_pipe, sd_arch, "a red cube", "", 1, 4).negative.parts[0][1].tokens.abs().sum() > 0
