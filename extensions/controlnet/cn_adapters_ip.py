"""IP-Adapter units of the ControlNet extension (plain and plus, SD1.5 and SDXL).

Owns: reading IP-Adapter files (``.safetensors`` with ``image_proj.*`` / ``ip_adapter.*`` keys,
``.bin`` with two nested dicts), encoding each unit's image once per job with the CLIP image encoder
found in ``models/clip_vision`` (:mod:`cn_adapters_clip`), patching the UNet for the job through
diffusers' own loader (``UNet2DConditionModel._load_ip_adapter_weights``, as ``load_ip_adapter``
does) and undoing that exactly when the job ends (the original attention processor objects, the
``encoder_hid_proj`` module and the config value come back), and per UNet call the image embeddings
(the unit's on the prompt rows, the unconditional ones on the negative rows) with each unit's weight
as its scale (0 outside its guidance window).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cn_adapters import CROSS_ATTENTION_FAMILIES, check_family, guidance_active, model_family, read_shapes
from cn_adapters_clip import EncoderNeed, encode_image, find_image_encoder, load_image_encoder

from modules.extension_api import JobStart, ModelCall

if TYPE_CHECKING:  # torch is imported where used: loading the extension must not import it
    import torch

log = logging.getLogger(__name__)

# FaceID variants (they need insightface), told apart after plain and full-face adapters
_UNSUPPORTED_PROJ = ("perceiver_resampler.proj_in.weight", "norm.weight")


@dataclass(frozen=True)
class IpUnit:
    """One IP-Adapter unit of a request: the adapter file, its image and how strongly it acts."""

    path: Path
    image: Any  # PIL image
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    encoder: Path | None = None  # an explicit image encoder (default: the first matching one in clip_vision)


@dataclass(frozen=True)
class IpRun:
    """A job's IP-Adapters, loaded into its UNet: per unit the (uncond, cond) embeddings."""

    units: tuple[IpUnit, ...]
    embeds: tuple[torch.Tensor, ...]  # per unit (2, ...): row 0 unconditional, row 1 the image's
    processors: tuple[Any, ...]  # the IP attention processors (their ``scale`` is set per call)


def load_ip_state(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from either file layout."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in load_file(str(path)).items():
            group, _, name = key.partition(".")
            if group in state:
                state[group][name] = value
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not state.get("image_proj") or not state.get("ip_adapter"):
        raise ValueError(f"{path.name} is not an IP-Adapter (no image_proj / ip_adapter weights)")
    return state


def _group(shapes: dict[str, tuple[int, ...]], group: str) -> dict[str, tuple[int, ...]]:
    return {k[len(group) + 1:]: v for k, v in shapes.items() if k.startswith(group + ".")}


def encoder_need(proj: dict[str, tuple[int, ...]], name: str) -> EncoderNeed:
    """What image encoder output an adapter's image projection (its keys' shapes) takes, and its width."""
    if "proj.weight" in proj:  # plain: the projected image embedding
        return EncoderNeed(hidden_states=False, width=int(proj["proj.weight"][-1]))
    if "proj.3.weight" in proj:  # full face: every token of the penultimate layer
        return EncoderNeed(hidden_states=True, width=int(proj["proj.0.weight"][0]))
    if any(k in proj for k in _UNSUPPORTED_PROJ):
        raise ValueError(f"{name} is an IP-Adapter FaceID model, which is not supported")
    if "proj_in.weight" in proj:  # plus: a resampler over the penultimate layer's tokens
        return EncoderNeed(hidden_states=True, width=int(proj["proj_in.weight"][1]))
    raise ValueError(f"{name}: unknown IP-Adapter image projection")


def check_ip_adapter(start: JobStart, path: Path, encoder: Path | None = None) -> Path:
    """ValueError (naming both sides) unless the IP-Adapter at ``path`` fits the job's UNet and an
    image encoder for it is installed; the encoder's path. Reads the file's header only."""
    name = f"The IP-Adapter {Path(path).stem}"
    unet = start.model.unet
    shapes = read_shapes(Path(path))
    attention = {k: v for k, v in _group(shapes, "ip_adapter").items() if k.endswith("to_k_ip.weight")}
    if not attention or not _group(shapes, "image_proj"):
        raise ValueError(f"{Path(path).name} is not an IP-Adapter")
    widths = {int(v[1]) for v in attention.values()}
    cross = int(unet.config.cross_attention_dim)
    if widths != {cross}:
        family = CROSS_ATTENTION_FAMILIES.get(next(iter(widths))) if len(widths) == 1 else None
        check_family(name, family, model_family(start.model.family))
        raise ValueError(f"{name} has cross-attention width {sorted(widths)}, the loaded model's is {cross}")
    layers = sum(1 for n in unet.attn_processors if n.endswith("attn2.processor"))
    if len(attention) != layers:
        raise ValueError(f"{name} has weights for {len(attention)} attention layers, the loaded model has {layers}")
    need = encoder_need(_group(shapes, "image_proj"), name)
    return encoder or find_image_encoder(start.host.model_dirs("clip_vision"), need, name)


def _patch_unet(start: JobStart, states: list[dict[str, dict[str, torch.Tensor]]]) -> tuple[Any, ...]:
    """Load the adapters into the UNet for this job; the undo restores every object it replaced."""
    unet = start.model.unet
    processors = dict(unet.attn_processors)  # the very objects, so custom processors come back too
    hid_proj = unet.encoder_hid_proj
    hid_type = unet.config.encoder_hid_dim_type
    had_text_proj = "text_encoder_hid_proj" in unet.__dict__ or "text_encoder_hid_proj" in unet._modules

    def undo() -> None:
        unet.encoder_hid_proj = hid_proj  # first: a plus adapter's resampler has attention processors too
        unet.set_attn_processor(processors)
        # diffusers sets the config's attribute (not its dict item): put that attribute back
        setattr(unet.config, "encoder_hid_dim_type", hid_type)
        if not had_text_proj and hasattr(unet, "text_encoder_hid_proj"):
            delattr(unet, "text_encoder_hid_proj")

    start.patches.on_undo(undo)  # registered first: a load that fails halfway is undone too
    unet._load_ip_adapter_weights(states, low_cpu_mem_usage=False)
    return tuple(p for p in unet.attn_processors.values() if hasattr(p, "to_k_ip"))


def start_ip(start: JobStart, units: Sequence[IpUnit]) -> IpRun | None:
    """JOB_START: encode every unit's image and load all IP-Adapter units of the job into its UNet
    (one call to diffusers' loader with all of them, as it expects). None when no unit acts (all
    weights 0): the UNet is then left as it is. ValueError for an adapter of another family, or no
    fitting image encoder in ``clip_vision``."""
    import torch

    units = tuple(units)  # every unit keeps its place: MODEL_CALL's ``allowed`` follows this order
    if all(u.weight == 0 for u in units):
        return None
    model = start.model
    encoders = [check_ip_adapter(start, unit.path, unit.encoder) for unit in units]  # all refusals before any work
    states, embeds = [], []
    for unit, encoder_path in zip(units, encoders, strict=True):
        state = load_ip_state(unit.path)
        need = encoder_need({k: tuple(v.shape) for k, v in state["image_proj"].items()}, str(unit.path))
        encoder = load_image_encoder(encoder_path).to(device=model.device, dtype=model.dtype)
        cond, uncond = encode_image(encoder, unit.image, need.hidden_states)
        del encoder  # only the embeddings are needed for the rest of the job
        embeds.append(torch.cat([uncond, cond]).to(device=model.device, dtype=model.dtype))
        states.append(state)
    processors = _patch_unet(start, states)
    log.info("IP-Adapter: %d unit(s) loaded for this job", len(units))
    return IpRun(units, tuple(embeds), processors)


def ip_model_call(call: ModelCall, run: IpRun, allowed: Sequence[bool] | None = None) -> None:
    """MODEL_CALL: the units' image embeddings for this call's rows, and their scales for this step
    (0 outside a unit's guidance window, or where ``allowed`` says no, e.g. its hires option)."""
    gates = allowed if allowed is not None else [True] * len(run.units)
    scales = [u.weight if gate and guidance_active(call.step, call.total, u.guidance_start, u.guidance_end) else 0.0
              for u, gate in zip(run.units, gates, strict=True)]
    for processor in run.processors:
        processor.scale = list(scales)
    rows = call.cond_rows.to(device=run.embeds[0].device).long()  # 1 = the prompt rows
    # diffusers' layout: one tensor per adapter, (rows, images per prompt = 1, ...)
    call.changes.add_condition("image_embeds", [both.index_select(0, rows).unsqueeze(1) for both in run.embeds])
