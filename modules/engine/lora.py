"""LoRAs on a loaded pipeline: keeping exactly the requested set active from one job to the next.

This is the public entry: a job names the LoRAs it wants as :class:`LoraUse` values and
:func:`apply_loras` makes them the pipeline's active adapters. Reading and recognising files lives in
:mod:`modules.engine.lora_files` (:func:`read_lora_metadata` is re-exported here), matching their
layers to the model's in :mod:`modules.engine.lora_layers`.

This module owns the adapters themselves. They are peft's, attached and weighted through diffusers'
pipeline LoRA API (``load_lora_into_unet``, ``load_lora_into_text_encoder``, the transformer's
``load_lora_adapter`` that every flow pipeline's ``load_lora_into_transformer`` calls, ``set_adapters``,
``delete_adapters``, ``unload_lora_weights``), so SD UNets and flow transformers take them alike. Attaching is all or nothing: on failure the pipeline
goes back to the adapters it had. What is loaded is recorded on the pipeline object, whose state it
describes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from modules.engine.lora_files import DENOISERS, FileStamp, file_stamp, first_line, read_lora_metadata, refuse
from modules.engine.lora_layers import PreparedLora, adaptable_components, index_targets, prepare

__all__ = ["LoraUse", "apply_loras", "read_lora_metadata"]

log = logging.getLogger(__name__)

_STATE_ATTRIBUTE = "_atelier_lora_state"


@dataclass(frozen=True)
class LoraUse:
    """One LoRA a job asks for: ``<lora:name:weight>`` or ``<lora:name:te_weight:unet_weight>``."""

    name: str
    path: Path
    unet_weight: float
    te_weight: float


@dataclass(frozen=True)
class _LoadedAdapter:
    adapter: str  # peft's adapter name
    stamp: FileStamp
    components: frozenset[str]


@dataclass
class _LoraState:
    """What is attached to one pipeline. Mutable on purpose: it follows the pipeline's own state."""

    loaded: dict[str, _LoadedAdapter] = field(default_factory=dict)  # by LoraUse.name
    active: tuple[LoraUse, ...] = ()
    counter: int = 0
    fused: bool = False  # the active adapters are merged into the base weights (the fast path)


# --------------------------------------------------------------------------- adapters on the pipeline


def _state_of(pipe: DiffusionPipeline) -> _LoraState:
    state = getattr(pipe, _STATE_ATTRIBUTE, None)
    if not isinstance(state, _LoraState):
        state = _LoraState()
        setattr(pipe, _STATE_ATTRIBUTE, state)
    return state


def _adapter_name(name: str, counter: int) -> str:
    # peft keeps adapters in ModuleDicts: no dots, and nothing that shadows a Module attribute.
    safe = re.sub(r"[^0-9A-Za-z_]", "_", name)[:48]
    return f"a{counter}_{safe}"


def _settle(model: torch.nn.Module, adapter: str) -> None:
    """Keep the new adapter's weights on the base layer's device and dtype, and out of autograd."""
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        weight = module.get_base_layer().weight
        if weight.device.type == "meta":
            continue
        for layer_name in module.adapter_layer_names:
            layers = getattr(module, layer_name, None)
            if isinstance(layers, torch.nn.ModuleDict) and adapter in layers:
                layers[adapter].to(device=weight.device, dtype=weight.dtype).requires_grad_(False)


class _DropLoadReports(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _quiet_multi_adapter_noise() -> Iterator[None]:
    """Silence two false alarms of loading a second adapter, which :func:`_verify` makes redundant.

    transformers reports every other adapter's weights as "missing, newly initialized" (they are
    not touched), and peft warns that the model already has a peft_config (it has, on purpose).
    """
    report_logger = logging.getLogger("transformers.integrations.peft")
    report_filter = _DropLoadReports()
    report_logger.addFilter(report_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        report_logger.removeFilter(report_filter)


def _verify(model: torch.nn.Module, adapter: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """Every weight of the new adapter holds exactly what was prepared for it."""
    for key, expected in tensors.items():
        layer, _, slot = key.removesuffix(".weight").rpartition(".")
        holder = getattr(model.get_submodule(layer), slot, None)
        if not isinstance(holder, torch.nn.ModuleDict) or adapter not in holder:
            raise RuntimeError(f"adapter weight {key} was not attached")
        if holder[adapter].weight.device == expected.device and not torch.equal(holder[adapter].weight, expected):
            raise RuntimeError(f"adapter weight {key} does not hold the file's values")


def _attach(pipe: DiffusionPipeline, adapter: str, lora: PreparedLora) -> None:
    for component, tensors in lora.tensors.items():
        prefixed = {f"{component}.{key}": value for key, value in tensors.items()}
        model = getattr(pipe, component)
        with _quiet_multi_adapter_noise():
            if component == "unet":
                pipe.load_lora_into_unet(prefixed, network_alphas=None, unet=model, adapter_name=adapter,
                                         _pipeline=pipe)
            elif component == "transformer":
                # What FluxLoraLoaderMixin / SD3LoraLoaderMixin / ZImageLoraLoaderMixin.load_lora_into_transformer
                # do; called on the model because their signatures differ from family to family.
                model.load_lora_adapter(prefixed, prefix=component, network_alphas=None, adapter_name=adapter,
                                        _pipeline=pipe)
            else:
                pipe.load_lora_into_text_encoder(prefixed, network_alphas=None, text_encoder=model,
                                                 prefix=component, adapter_name=adapter, _pipeline=pipe)
        _settle(model, adapter)
        _verify(model, adapter, tensors)


def _activate(pipe: DiffusionPipeline, state: _LoraState, uses: Sequence[LoraUse]) -> None:
    names, weights = [], []
    for use in uses:
        loaded = state.loaded[use.name]
        names.append(loaded.adapter)
        weights.append({c: use.unet_weight if c in DENOISERS else use.te_weight for c in loaded.components})
    pipe.set_adapters(names, weights)
    for component in adaptable_components(pipe):
        for name, param in getattr(pipe, component).named_parameters():
            if ".lora_" in name:  # peft turns gradients on for active adapters; inference needs none
                param.requires_grad_(False)
    state.active = tuple(uses)


def _has_adapter_layers(pipe: DiffusionPipeline) -> bool:
    return any(isinstance(m, BaseTunerLayer) for component in adaptable_components(pipe)
               for m in getattr(pipe, component).modules())


def _unload_all(pipe: DiffusionPipeline, state: _LoraState) -> None:
    if state.loaded or _has_adapter_layers(pipe):
        pipe.unload_lora_weights()  # puts every original layer back: the model is the base again
        log.info("LoRA: all adapters removed")
    state.loaded.clear()
    state.active = ()


def _attach_all(pipe: DiffusionPipeline, state: _LoraState, prepared: Mapping[str, PreparedLora]) -> list[str]:
    """Attach every prepared LoRA, or none: on failure the pipeline returns to its previous adapters.

    Returns the adapters that newer versions of their files replace, for the caller to delete.
    """
    attached: list[str] = []
    name = ""
    try:
        for name, lora in prepared.items():
            state.counter += 1
            adapter = _adapter_name(name, state.counter)
            attached.append(adapter)
            _attach(pipe, adapter, lora)
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError) as exc:
        _roll_back(pipe, state, attached)
        raise refuse(prepared[name].stamp.path, f"the adapter could not be attached: {first_line(exc)}") from exc
    replaced = [state.loaded[n].adapter for n in prepared if n in state.loaded]
    for (name, lora), adapter in zip(prepared.items(), attached, strict=True):
        state.loaded[name] = _LoadedAdapter(adapter, lora.stamp, frozenset(lora.tensors))
    return replaced


def _roll_back(pipe: DiffusionPipeline, state: _LoraState, adapters: Sequence[str]) -> None:
    if not state.loaded:
        pipe.unload_lora_weights()
        return
    pipe.delete_adapters(list(adapters))
    if state.active:
        _activate(pipe, state, state.active)


# ------------------------------------------------------------------------------------------ the entry


def _merged(uses: Sequence[LoraUse]) -> dict[str, LoraUse]:
    """One entry per LoRA; the same LoRA named twice adds its weights, as applying it twice would."""
    merged: dict[str, LoraUse] = {}
    for use in uses:
        if not (math.isfinite(use.unet_weight) and math.isfinite(use.te_weight)):
            raise ValueError(f"LoRA {use.name!r}: weights must be finite numbers")
        use = replace(use, path=Path(use.path))
        if (seen := merged.get(use.name)) is None:
            merged[use.name] = use
        elif os.path.normcase(seen.path) != os.path.normcase(use.path):
            raise ValueError(f"LoRA name {use.name!r} given for two files: {seen.path} and {use.path}")
        else:
            merged[use.name] = replace(seen, unet_weight=seen.unet_weight + use.unet_weight,
                                       te_weight=seen.te_weight + use.te_weight)
    return merged


def _unfuse(pipe: DiffusionPipeline, state: _LoraState) -> None:
    if state.fused:
        pipe.unfuse_lora()
        state.fused = False


def _fuse(pipe: DiffusionPipeline, state: _LoraState) -> None:
    """Merge the active adapters into the weights: one GEMM a layer instead of three, and nothing a
    compiled UNet would guard on (each adapter's scale is a Python float: a new weight would
    otherwise mean a new compilation)."""
    adapters = [state.loaded[use.name].adapter for use in state.active]
    pipe.fuse_lora(components=adaptable_components(pipe), lora_scale=1.0, adapter_names=adapters)
    state.fused = True


def apply_loras(pipe: DiffusionPipeline, uses: Sequence[LoraUse], fuse: bool = False) -> None:
    """Make exactly ``uses`` the active LoRAs of ``pipe``, at their weights; with ``fuse`` (the fast
    path), merged into the base weights, and unmerged again before the next change.

    Files already attached stay attached (a changed file, by size or mtime, is read again); LoRAs no
    longer used are deleted; with no LoRA at all every adapter layer is removed, so the pipeline
    computes bit for bit what the freshly loaded checkpoint does. Every file is read and checked
    before the pipeline changes: a bad one raises :class:`AddonLoadError` and leaves the pipeline
    with the adapters and weights it had.
    """
    state = _state_of(pipe)
    wanted = _merged(uses)
    if state.fused and fuse and tuple(wanted.values()) == state.active and all(
            state.loaded[u.name].stamp == file_stamp(u.path) for u in state.active):
        return  # the same LoRAs at the same weights, already merged
    _unfuse(pipe, state)
    if not wanted:
        _unload_all(pipe, state)
        return
    takes_loras = hasattr(pipe, "load_lora_into_unet") or hasattr(pipe, "load_lora_into_transformer")
    if not takes_loras or not hasattr(pipe, "set_adapters"):
        first = next(iter(wanted.values()))
        raise refuse(first.path, f"{type(pipe).__name__} models do not take LoRAs")
    fresh = [use for use in wanted.values()
             if (loaded := state.loaded.get(use.name)) is None or loaded.stamp != file_stamp(use.path)]
    outdated: list[str] = []
    if fresh:
        index = index_targets(pipe)
        prepared = {use.name: prepare(pipe, use.path, index) for use in fresh}  # may raise; nothing changed yet
        outdated = _attach_all(pipe, state, prepared)
        log.info("LoRA: attached %s", ", ".join(prepared))
    _activate(pipe, state, list(wanted.values()))
    unused = [name for name in state.loaded if name not in wanted]
    outdated += [state.loaded.pop(name).adapter for name in unused]
    if outdated:
        pipe.delete_adapters(outdated)  # adapters stop costing time once no longer active
        log.info("LoRA: detached %s", ", ".join(unused) or "outdated versions")
    if fuse:
        _fuse(pipe, state)
