"""Tiny random FLUX.2 [klein] models for tests: the full pipeline at toy width, offline.

:func:`build_tiny_pipeline` makes a ``Flux2KleinPipeline`` with a generated Qwen-style BPE
tokenizer (the ``tokenizers`` library, Qwen2's pre-tokenizer and special tokens, the chat
template the pipeline renders), a 28-layer Qwen3 encoder 32 wide (the pipeline stacks layers 9,
18 and 27), a one-block transformer and a four-level VAE with 32 latent channels (so the sampler
latent has the real 128 channels at 1/16 size) and non-trivial batch-norm statistics.
:func:`write_tiny` writes it as one self-contained single file (the transformer in BFL's layout
under ComfyUI's ``model.diffusion_model.``, ``text_encoders.qwen3_4b.``, the VAE in LDM names
under ``vae.``, the tokenizer in the metadata), a GGUF transformer, or a diffusers folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from safetensors.torch import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

from modules.devtools.ldm_keys import vae_to_ldm
from modules.engine.families import flux2_files
from modules.engine.families.flux2_flow import QWEN3_CHAT_TEMPLATE

# transformers' Qwen2Tokenizer pre-tokenizer pattern
_QWEN_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_CORPUS = ("a photo of a cat holding a sign that says hello world", "a red fox in the snow, detailed fur",
           "a painting of a lighthouse at dusk", "portrait of an old man, dramatic light", "user assistant")
TEXT_ENCODER_NAME = "qwen3_4b"


def tiny_tokenizer_json() -> str:
    """A small byte-level BPE with Qwen's pre-tokenizer and special tokens (deterministic)."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(_SPECIAL), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(_CORPUS) * 4, trainer)
    tok.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    return tok.to_str()


def tiny_tokenizer() -> Qwen2TokenizerFast:
    tokenizer = Qwen2TokenizerFast(tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json()),
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def tiny_text_encoder_config(vocab_size: int) -> Qwen3Config:
    config = flux2_files.shipped_config("text_encoder")
    config.update(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=28,
                  max_window_layers=28, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                  tie_word_embeddings=True, bos_token_id=None, eos_token_id=None)
    return Qwen3Config(**config)


def _transformer_config() -> dict:
    config = flux2_files.shipped_config("transformer")
    config.update(num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                  joint_attention_dim=96, timestep_guidance_channels=32, axes_dims_rope=[4, 4, 4, 4])
    return config


def _vae_config() -> dict:
    config = flux2_files.shipped_config("vae")
    config.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1)
    return config


def build_tiny_pipeline(arch: object = "flux2-klein", seed: int = 0) -> Flux2KleinPipeline:
    """A random-weight fp32 CPU klein pipeline; equal seeds give equal weights."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = Qwen3ForCausalLM(tiny_text_encoder_config(len(tokenizer))).eval()
    transformer = Flux2Transformer2DModel.from_config(_transformer_config()).eval()
    vae = AutoencoderKLFlux2.from_config(_vae_config()).eval()
    with torch.no_grad():  # statistics far from (0, 1), so a wrong normalisation shows
        vae.bn.running_mean.copy_(torch.randn_like(vae.bn.running_mean) * 0.3)
        vae.bn.running_var.copy_(torch.rand_like(vae.bn.running_var) + 0.5)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(flux2_files.shipped_config("scheduler"))
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


_DOUBLE = {"attn.to_out.0": "img_attn.proj", "attn.to_add_out": "txt_attn.proj",
           "attn.norm_q.weight": "img_attn.norm.query_norm.scale", "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
           "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
           "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
           "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
           "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2"}
_SINGLE = {"attn.to_qkv_mlp_proj": "linear1", "attn.to_out": "linear2",
           "attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}
_TOP = {"x_embedder": "img_in", "context_embedder": "txt_in", "proj_out": "final_layer.linear",
        "time_guidance_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_guidance_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "double_stream_modulation_img.linear": "double_stream_modulation_img.lin",
        "double_stream_modulation_txt.linear": "double_stream_modulation_txt.lin",
        "single_stream_modulation.linear": "single_stream_modulation.lin"}


def _rename(rest: str, table: dict[str, str]) -> str:
    for new, old in table.items():
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(f"no BFL name for {rest!r}")


def transformer_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' Flux2Transformer2DModel names -> BFL's (the inverse of diffusers'
    convert_flux2_transformer_checkpoint_to_diffusers: fused q/k/v, (shift, scale) final modulation)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] == "transformer_blocks":
            rest = ".".join(parts[2:])
            if rest.startswith(("attn.to_q", "attn.to_k", "attn.to_v", "attn.add_q_proj", "attn.add_k_proj",
                                "attn.add_v_proj")):
                continue  # fused below
            out[f"double_blocks.{parts[1]}.{_rename(rest, _DOUBLE)}"] = tensor
        elif parts[0] == "single_transformer_blocks":
            out[f"single_blocks.{parts[1]}.{_rename('.'.join(parts[2:]), _SINGLE)}"] = tensor
        elif key == "norm_out.linear.weight":
            scale, shift = tensor.chunk(2, dim=0)
            out["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale], dim=0)
        else:
            out[_rename(key, _TOP)] = tensor
    blocks = {k.split(".")[1] for k in state if k.startswith("transformer_blocks.")}
    for i in sorted(blocks):
        p = f"transformer_blocks.{i}.attn."
        out[f"double_blocks.{i}.img_attn.qkv.weight"] = torch.cat([state[p + f"to_{c}.weight"] for c in "qkv"])
        out[f"double_blocks.{i}.txt_attn.qkv.weight"] = torch.cat([state[p + f"add_{c}_proj.weight"] for c in "qkv"])
    return out


def single_file_state(pipe: Flux2KleinPipeline) -> dict[str, torch.Tensor]:
    """The pipeline as one ComfyUI-style all-in-one state dict."""
    state = {flux2_files.COMFY_PREFIX + k: v for k, v in transformer_to_bfl(pipe.transformer.state_dict()).items()}
    encoder = {k: v for k, v in pipe.text_encoder.state_dict().items() if k != "lm_head.weight"}  # tied
    state.update({f"text_encoders.{TEXT_ENCODER_NAME}.{k}": v for k, v in encoder.items()})
    vae = pipe.vae.state_dict()
    body = {k: v for k, v in vae.items() if not k.startswith("bn.")}
    ldm = vae_to_ldm(body, dict(pipe.vae.config))
    state.update({"vae." + k.split(".", 1)[1]: v for k, v in ldm.items()})
    state.update({f"vae.{k}": v for k, v in vae.items() if k.startswith("bn.")})
    return {k: v.detach().contiguous() for k, v in state.items()}


def _save_atomically(state: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_tiny(arch: object, out: Path, seed: int = 0, gguf: str | None = None) -> Path:
    """``*.safetensors``: one self-contained file; ``gguf``: the transformer alone (BFL names) as
    GGUF of that quantisation; another suffix: a diffusers folder."""
    pipe = build_tiny_pipeline(arch, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if gguf is not None:
        try:
            from modules.devtools.tiny_gguf import write_gguf
        except ImportError as exc:
            raise ValueError("GGUF writing is not available in this build") from exc
        return write_gguf(transformer_to_bfl(pipe.transformer.state_dict()), out, gguf, architecture="flux2")
    if out.suffix == ".safetensors":
        _save_atomically(single_file_state(pipe), out, {"format": "pt", "atelier.tokenizer.qwen3": tiny_tokenizer_json()})
    else:
        pipe.save_pretrained(out, safe_serialization=True)
    return out
