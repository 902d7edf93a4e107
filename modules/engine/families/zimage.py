"""Z-Image (Turbo): a single-stream flow transformer with a Qwen3 text encoder and the FLUX VAE.

Conventions follow diffusers' ``ZImagePipeline``: the prompt goes through Qwen3's chat template,
the second-to-last hidden layer is the caption, and only its valid tokens are passed (the
transformer takes a list of variable-length captions). The transformer is called at time
``1 - sigma`` and predicts ``x0 - noise``, so the velocity is its output negated. Noise levels use
the scheduler config's static shift (3.0), which a job's shift overrides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ZImagePipeline

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.families import zimage_files as files
from modules.engine.families.base import EngineFamily, FileLoad, FlowJob, FlowParts, FolderLoad
from modules.engine.families.text_weights import apply_weights, weighted_tokens
from modules.engine.latent_format import LatentFormat
from modules.engine.loaded_model import LoadedModel
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.denoiser import Embeds
from modules.engine.sampling.flow import compute_dtype, dynamic_shift, flow_sigmas
from modules.engine.sampling.schedules import ModelSigmas

CAPTION_MASK = "caption_mask"
MAX_SEQUENCE_LENGTH = 512  # ZImagePipeline.encode_prompt's max_sequence_length
_PIPELINES = ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline")
_PROMPT_MARK = "\x00prompt\x00"


@dataclass(frozen=True)
class MaskedEmbeds(Embeds):
    """A caption padded to the job's common token count; ``mask`` (1, T) is 1 on its own tokens."""

    mask: torch.Tensor | None = None


# --- detection and loading -------------------------------------------------------------------


def detect_file(index: TensorIndex) -> ModelArch | None:
    return ModelArch.ZIMAGE if files.transformer_prefix(index) is not None else None


def detect_folder(folder: Path, model_index: Mapping[str, Any]) -> ModelArch | None:
    return ModelArch.ZIMAGE if model_index.get("_class_name") in _PIPELINES else None


def _pipeline(transformer: Any, text_encoder: Any, vae: Any, tokenizer: Any) -> ZImagePipeline:
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(files.shipped_config("scheduler"))
    return ZImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                          transformer=transformer)


def load_file(load: FileLoad) -> DiffusionPipeline:
    """A single file: its transformer, and its bundled encoder and VAE or those in the component folders."""
    prefix = files.transformer_prefix(load.index)
    assert prefix is not None
    dtype = load.device.dtype
    if load.path.suffix.lower() == ".gguf":
        transformer = files.load_gguf_transformer(load.path, load.index, load.config_cache, dtype)
    else:
        transformer = files.load_transformer(load.path, prefix, dtype)
    width, channels = transformer.config.cap_feat_dim, transformer.config.in_channels
    encoder_prefix = files.text_encoder_prefix(load.index, files.TEXT_ENCODER_PREFIX)
    encoder_file = load.path
    if encoder_prefix is None:
        encoder_file, encoder_prefix = files.find_text_encoder(load.path, load.components, width)
    vae_file = load.path if files.vae_latent_channels(load.index, files.VAE_PREFIX) == channels else None
    vae_prefix = files.VAE_PREFIX if vae_file is not None else ""
    if vae_file is None:
        vae_file = files.find_vae(load.path, load.components, channels)
    tokenizer = files.load_tokenizer(load.path, load.index, load.components)
    text_encoder = files.load_text_encoder(encoder_file, encoder_prefix, dtype)
    vae = files.load_vae(vae_file, vae_prefix, dtype)
    return _pipeline(transformer, text_encoder, vae, tokenizer)


def load_folder(load: FolderLoad) -> DiffusionPipeline:
    extra: dict[str, Any] = {}
    if not (load.path / "tokenizer").is_dir():  # a folder downloaded without it: the shared copy
        extra["tokenizer"] = files.load_tokenizer(load.path, TensorIndex(shapes={}), load.components)
    return ZImagePipeline.from_pretrained(str(load.path), local_files_only=True, dtype=load.device.dtype, **extra)


def default_sigmas(pipe: DiffusionPipeline) -> ModelSigmas:
    return flow_sigmas(float(pipe.scheduler.config.get("shift", 3.0)))


def latent_format(pipe: DiffusionPipeline) -> LatentFormat:
    return LatentFormat(scale=int(pipe.vae_scale_factor))


# --- the flow parts --------------------------------------------------------------------------


def _template_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The chat template's tokens before and after the prompt (ZImagePipeline._encode_prompt's
    template: one user message, generation prompt, enable_thinking=True)."""
    template = getattr(tokenizer, "chat_template", None) or files.QWEN3_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template([{"role": "user", "content": _PROMPT_MARK}], tokenize=False,
                                         add_generation_prompt=True, enable_thinking=True, chat_template=template)
    before, after = text.split(_PROMPT_MARK)
    return (tokenizer(before, add_special_tokens=False)["input_ids"],
            tokenizer(after, add_special_tokens=False)["input_ids"])


def _caption(pipe: Any, text: str, emphasis: str, device: torch.device) -> torch.Tensor:
    """One prompt's valid caption tokens (T, width): the hidden states ``encode_prompt`` keeps."""
    before, after = _template_ids(pipe.tokenizer)
    prompt = weighted_tokens(pipe.tokenizer, text, emphasis)
    ids = (before + list(prompt.ids) + after)[:MAX_SEQUENCE_LENGTH]
    weights = ([1.0] * len(before) + list(prompt.weights) + [1.0] * len(after))[:MAX_SEQUENCE_LENGTH]
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    # Alone and unpadded: a causal encoder gives the valid tokens the same states as the pipeline's
    # right-padded batch, without the padding.
    hidden = pipe.text_encoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids, dtype=torch.bool),
                               output_hidden_states=True).hidden_states[-2]
    return apply_weights(hidden, torch.tensor(weights), emphasis)[0]


@torch.inference_mode()
def encode(model: LoadedModel, texts: Sequence[str], emphasis: str) -> dict[str, Embeds]:
    """Each text's caption, zero-padded to the longest with its mask, so a job's prompts batch."""
    device = model.execution_device
    captions = [_caption(model.pipeline, text, emphasis, device) for text in texts]
    length = max(len(caption) for caption in captions)
    result: dict[str, Embeds] = {}
    for text, caption in zip(texts, captions, strict=True):
        tokens = torch.nn.functional.pad(caption, (0, 0, 0, length - len(caption)))[None]
        mask = (torch.arange(length, device=caption.device) < len(caption)).float()[None]
        result[text] = MaskedEmbeds(tokens=tokens, mask=mask)
    return result


class ZImageNetwork:
    """The transformer in Atelier's flow convention: velocity ``noise - x0`` at sigma."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer
        self.dtype = compute_dtype(transformer)

    def conditions(self, embeds: Embeds) -> dict[str, torch.Tensor]:
        mask = embeds.mask if isinstance(embeds, MaskedEmbeds) else None
        if mask is None:
            mask = torch.ones(embeds.tokens.shape[:2], device=embeds.tokens.device)
        return {CAPTION_MASK: mask}

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor,
                 conditions: dict[str, torch.Tensor] | None, concat: torch.Tensor | None) -> torch.Tensor:
        tokens = tokens.to(self.dtype)
        if conditions and CAPTION_MASK in conditions:
            masks = conditions[CAPTION_MASK].bool()
            captions = [row[mask] for row, mask in zip(tokens, masks, strict=True)]  # each row's own tokens
        else:
            captions = list(tokens)
        latents = list(x.to(self.dtype).unsqueeze(2).unbind(0))  # (C, frames=1, h, w) per row
        # ZImagePipeline.__call__: timestep = (1000 - t) / 1000 with t = 1000 * sigma, and
        # noise_pred = -output; the scheduler steps with it as d x / d sigma, i.e. noise - x0.
        time = 1.0 - sigma.float()
        out = self.transformer(latents, time, captions, return_dict=False)[0]
        return -torch.stack([row.float() for row in out]).squeeze(2)


def network(model: LoadedModel, job: FlowJob) -> ZImageNetwork:
    return ZImageNetwork(model.pipeline.transformer)


def sigmas(model: LoadedModel, job: FlowJob) -> ModelSigmas:
    """The scheduler config's static shift (Z-Image Turbo: 3.0, no dynamic shifting); a job's own
    shift overrides it. A config with dynamic shifting gets FLUX's rule from the image size."""
    if job.shift is not None:
        return flow_sigmas(job.shift)
    config = model.base_scheduler_config
    if config.get("use_dynamic_shifting"):
        scale = model.latent_format.scale * 2  # 2x2 patches
        tokens = (job.height // scale) * (job.width // scale)
        return flow_sigmas(dynamic_shift(tokens, config.get("base_image_seq_len", 256),
                                         config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                         config.get("max_shift", 1.15)))
    return flow_sigmas(float(config.get("shift", 3.0)))


FAMILY = EngineFamily(
    name="Z-Image",
    archs=(ModelArch.ZIMAGE,),
    detect_file=detect_file,
    detect_folder=detect_folder,
    load_file=load_file,
    load_folder=load_folder,
    flow=FlowParts(encode=encode, network=network, sigmas=sigmas),
    default_sigmas=default_sigmas,
    latent_format=latent_format,
)
