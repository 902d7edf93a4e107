"""The sigma-space wrapper (eps and v prediction), guidance, prompt schedules and AND weights."""

from __future__ import annotations

import pytest
import torch

from modules.engine.sampling.denoiser import (
    Conditioning,
    CondSchedule,
    Embeds,
    GuidedDenoiser,
    LatentMask,
    SamplingStopped,
    SigmaDenoiser,
)
from modules.engine.sampling.schedules import ModelSigmas

BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
SIGMAS = ModelSigmas(torch.cumprod(1 - BETAS, 0))


class OracleUNet(torch.nn.Module):
    """Knows the clean image; answers eps or v exactly as a perfect model would."""

    def __init__(self, x0: torch.Tensor, eps: torch.Tensor, v: bool) -> None:
        super().__init__()
        self.x0, self.eps, self.v = x0, eps, v
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x_in, t, encoder_hidden_states=None, added_cond_kwargs=None, return_dict=False):
        sigma = SIGMAS.t_to_sigma(t).view(-1, 1, 1, 1)
        alpha = 1 / (sigma**2 + 1) ** 0.5  # VP scaling of the k-diffusion input
        if self.v:
            return (alpha * self.eps - sigma * alpha * self.x0,)  # v = alpha*eps - sigma_vp*x0
        return (self.eps.expand_as(x_in),)


@pytest.mark.parametrize("v_prediction", [False, True])
def test_perfect_model_recovers_the_clean_image(v_prediction: bool) -> None:
    torch.manual_seed(0)
    x0, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    sigma = torch.tensor([3.0])
    denoiser = SigmaDenoiser(OracleUNet(x0, eps, v_prediction), SIGMAS, v_prediction)
    denoised = denoiser(x0 + eps * 3.0, sigma, torch.zeros(1, 77, 8), None, None)
    assert torch.allclose(denoised, x0, atol=1e-4)


class ByPrompt:
    """Inner denoiser stand-in: the output is the prompt's first embedding value everywhere."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x, sigma, tokens, added, concat):
        self.batches.append(x.shape[0])
        return tokens[:, :1, :1].reshape(-1, 1, 1, 1).expand_as(x).clone()


def embeds(value: float) -> Embeds:
    return Embeds(tokens=torch.full((1, 77, 4), value))


def guided(conditioning: Conditioning, cfg: float, stop=lambda: False, mask=None) -> tuple[GuidedDenoiser, ByPrompt]:
    inner = ByPrompt()
    return GuidedDenoiser(inner, conditioning, cfg, None, None, mask, stop), inner  # type: ignore[arg-type]


def test_cfg_combines_and_weights_over_one_batched_call() -> None:
    cond = Conditioning(positive=((CondSchedule.constant(embeds(2.0)), 1.0), (CondSchedule.constant(embeds(5.0)), 0.5)),
                        negative=CondSchedule.constant(embeds(1.0)))
    model, inner = guided(cond, cfg=3.0)
    out = model(torch.zeros(2, 4, 8, 8), torch.ones(2))
    # uncond + sum_i w_i * cfg * (cond_i - uncond) = 1 + 1*3*(2-1) + 0.5*3*(5-1) = 10
    assert torch.allclose(out, torch.full_like(out, 10.0))
    assert inner.batches == [6]  # 2 prompts + the negative, for 2 images, in one call


def test_prompt_editing_switches_embeddings_by_model_call() -> None:
    schedule = CondSchedule(parts=((2, embeds(1.0)), (2**31, embeds(4.0))))
    model, _ = guided(Conditioning(positive=((schedule, 1.0),), negative=CondSchedule.constant(embeds(0.0))), cfg=1.0)
    x = torch.zeros(1, 1, 2, 2)
    values = [float(model(x, torch.ones(1)).mean()) for _ in range(4)]
    assert values == [1.0, 1.0, 4.0, 4.0]


def test_cfg_one_skips_the_negative() -> None:
    model, inner = guided(Conditioning(positive=((CondSchedule.constant(embeds(2.0)), 1.0),),
                                       negative=CondSchedule.constant(embeds(9.0))), cfg=1.0)
    assert float(model(torch.zeros(1, 1, 2, 2), torch.ones(1)).mean()) == 2.0 and inner.batches == [1]


def test_stop_is_checked_before_every_model_call() -> None:
    model, inner = guided(Conditioning(positive=((CondSchedule.constant(embeds(2.0)), 1.0),),
                                       negative=CondSchedule.constant(embeds(0.0))), cfg=7.0, stop=lambda: True)
    with pytest.raises(SamplingStopped):
        model(torch.zeros(1, 1, 2, 2), torch.ones(1))
    assert inner.batches == []


def test_latent_mask_keeps_the_original_where_asked() -> None:
    init = torch.full((1, 1, 2, 2), 7.0)
    keep = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
    model, _ = guided(Conditioning(positive=((CondSchedule.constant(embeds(2.0)), 1.0),),
                                   negative=CondSchedule.constant(embeds(0.0))), cfg=1.0, mask=LatentMask(init, keep))
    out = model(torch.zeros(1, 1, 2, 2), torch.ones(1))
    assert out.flatten().tolist() == [7.0, 2.0, 2.0, 2.0]
