"""The tiny-model factory: deterministic files, an exact LDM key mapping, and models that run.

A single-file checkpoint written by the factory must load through diffusers' own single-file
loader bit-identical to the diffusers folder written from the same seed; otherwise every test
built on tiny models would test a model with silently re-randomised weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from PIL import Image

from modules.devtools.ldm_keys import (
    SD1_CLIP_PREFIX,
    SDXL_CLIP_PREFIX,
    SDXL_OPENCLIP_PREFIX,
    pipeline_to_ldm,
)
from modules.devtools.tiny_model import (
    CLIP_BPE_DIR,
    TinyArch,
    build_tiny_pipeline,
    write_tiny_model,
)

PIPELINES: dict[TinyArch, type[DiffusionPipeline]] = {
    TinyArch.SD15: StableDiffusionPipeline,
    TinyArch.SDXL: StableDiffusionXLPipeline,
    TinyArch.SD15_INPAINT: StableDiffusionInpaintPipeline,
}
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
ARCHS = list(PIPELINES)  # the other families' tiny models are tested with their family (test_family_*)


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """No network: huggingface_hub and diffusers read the flag into constants at import."""
    import diffusers.utils.constants as diffusers_constants
    import huggingface_hub.constants as hub_constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        if hasattr(diffusers_constants, "HF_HUB_OFFLINE"):
            mp.setattr(diffusers_constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """The shipped CLIP vocabulary, or a byte-level stand-in when it is not in the tree."""
    if all((CLIP_BPE_DIR / n).is_file() or (CLIP_BPE_DIR / f"{n}.gz").is_file() for n in ("vocab.json", "merges.txt")):
        return None
    folder = tmp_path_factory.mktemp("bpe")
    # GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100 onwards.
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = (b for b in range(256) if b not in printable)
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(extra)}
    symbols = [chars[b] for b in range(256)]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory, bpe_dir: Path | None) -> dict[TinyArch, tuple[Path, Path]]:
    """Per architecture: (single file, diffusers folder), both from seed 7."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        arch: (
            write_tiny_model(arch, root / f"{arch.value}.safetensors", seed=7, bpe_dir=bpe_dir),
            write_tiny_model(arch, root / arch.value, seed=7, bpe_dir=bpe_dir),
        )
        for arch in ARCHS
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert sorted(actual) == sorted(expected), f"{what}: key sets differ"
    unequal = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not unequal, f"{what}: {len(unequal)} tensors differ, e.g. {unequal[:3]}"


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.value)
def test_ldm_keys_invert_diffusers_converters(arch: TinyArch, bpe_dir: Path | None) -> None:
    """diffusers' LDM -> diffusers converters give back every tensor, norms and biases included."""
    pipe = build_tiny_pipeline(arch, seed=1, bpe_dir=bpe_dir)
    ldm = pipeline_to_ldm(pipe)
    assert all(k.split(".")[0] in {"model", "first_stage_model", "cond_stage_model", "conditioner"} for k in ldm)
    _assert_same_tensors(convert_ldm_unet_checkpoint(ldm, dict(pipe.unet.config)), pipe.unet.state_dict(), "unet")
    _assert_same_tensors(convert_ldm_vae_checkpoint(ldm, dict(pipe.vae.config)), pipe.vae.state_dict(), "vae")
    clip_prefix = SDXL_CLIP_PREFIX if arch is TinyArch.SDXL else SD1_CLIP_PREFIX
    assert clip_prefix + "text_model.embeddings.position_embedding.weight" in ldm
    foreign = "cond_stage_model." if arch is TinyArch.SDXL else "conditioner."
    assert not any(k.startswith(foreign) for k in ldm)
    clip = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm).items()}
    _assert_same_tensors(clip, pipe.text_encoder.state_dict(), "text_encoder")
    if arch is TinyArch.SDXL:
        open_clip = convert_open_clip_checkpoint(pipe.text_encoder_2, ldm, prefix=SDXL_OPENCLIP_PREFIX)
        _assert_same_tensors(open_clip, pipe.text_encoder_2.state_dict(), "text_encoder_2")
        assert ldm[SDXL_OPENCLIP_PREFIX + "transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 64, 64)
        assert ldm[SDXL_OPENCLIP_PREFIX + "text_projection"].shape == (64, 32)  # OpenCLIP: x @ proj
    else:
        assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (32, 32, 1, 1)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.value)
def test_single_file_loads_bit_identical_to_folder(arch: TinyArch, written: dict[TinyArch, tuple[Path, Path]]) -> None:
    single, folder = written[arch]
    cls = PIPELINES[arch]
    from_file = cls.from_single_file(str(single), config=str(folder), local_files_only=True)
    from_folder = cls.from_pretrained(str(folder), local_files_only=True)
    compared = 0
    for name in COMPONENTS:
        reference = getattr(from_folder, name, None)
        if reference is None:
            continue
        loaded = dict(getattr(from_file, name).named_parameters())
        expected = dict(reference.named_parameters())
        assert sorted(loaded) == sorted(expected), name
        on_meta = [k for k, p in loaded.items() if p.device.type == "meta"]
        assert not on_meta, f"{name}: never loaded from the file: {on_meta[:3]}"
        unequal = [k for k in expected if not torch.equal(loaded[k], expected[k])]
        assert not unequal, f"{name}: {len(unequal)} parameters differ, e.g. {unequal[:3]}"
        compared += len(expected)
    assert compared > 400


@pytest.mark.parametrize("arch", [TinyArch.SD15, TinyArch.SDXL], ids=lambda a: a.value)
def test_same_seed_same_bytes(arch: TinyArch, tmp_path: Path, bpe_dir: Path | None) -> None:
    first = write_tiny_model(arch, tmp_path / "a.safetensors", seed=3, bpe_dir=bpe_dir)
    again = write_tiny_model(arch, tmp_path / "b.safetensors", seed=3, bpe_dir=bpe_dir)
    other = write_tiny_model(arch, tmp_path / "c.safetensors", seed=4, bpe_dir=bpe_dir)
    assert _sha256(first) == _sha256(again)
    assert _sha256(first) != _sha256(other)


def test_factory_leaves_global_rng_alone(bpe_dir: Path | None) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    build_tiny_pipeline(TinyArch.SD15, seed=0, bpe_dir=bpe_dir)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.value)
def test_folder_pipeline_generates_with_h_over_8_latents(
    arch: TinyArch, written: dict[TinyArch, tuple[Path, Path]]
) -> None:
    pipe = PIPELINES[arch].from_pretrained(str(written[arch][1]), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    shapes: list[tuple[int, ...]] = []

    def record(_pipe: DiffusionPipeline, _step: int, _t: object, tensors: dict) -> dict:
        shapes.append(tuple(tensors["latents"].shape))
        return tensors

    extra = {}
    if arch is TinyArch.SD15_INPAINT:
        mask = np.zeros((64, 64), dtype=np.uint8)
        mask[16:48, 16:48] = 255
        extra = {"image": Image.new("RGB", (64, 64), (120, 80, 40)), "mask_image": Image.fromarray(mask)}
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="np",
        generator=torch.Generator("cpu").manual_seed(0),
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents"],
        **extra,
    )
    assert out.images.shape == (1, 64, 64, 3)
    assert np.isfinite(out.images).all()
    assert shapes and all(s == (1, 4, 8, 8) for s in shapes)
