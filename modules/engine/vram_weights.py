"""How many bytes each component of a loaded pipeline weighs, read exactly from its tensors.

Parameters and buffers are counted at their own dtype wherever they sit (GPU, RAM, or the meta
device that sequential offload leaves behind), so the numbers do not depend on the memory mode in
force. The largest single layer is what sequential offload (lowvram) has on the device at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")  # SD3 has three; flow families one or two
UNET = "unet"
TRANSFORMER = "transformer"  # a flow family's denoiser
DENOISERS = (UNET, TRANSFORMER)
VAE = "vae"


@dataclass(frozen=True)
class ComponentWeights:
    """One model of a pipeline: its weights in bytes and its largest layer's."""

    name: str
    bytes: int
    largest_layer_bytes: int
    dtype_bytes: int  # bytes per element of its floating-point weights


@dataclass(frozen=True)
class PipelineWeights:
    """Every model of a pipeline, by component name."""

    components: tuple[ComponentWeights, ...]

    @property
    def total(self) -> int:
        return sum(c.bytes for c in self.components)

    def of(self, name: str) -> ComponentWeights | None:
        return next((c for c in self.components if c.name == name), None)

    def bytes_of(self, *names: str) -> int:
        return sum(c.bytes for c in self.components if c.name in names)

    def largest_layer_of(self, *names: str) -> int:
        return max((c.largest_layer_bytes for c in self.components if c.name in names), default=0)

    @property
    def text_encoders(self) -> tuple[ComponentWeights, ...]:
        return tuple(c for c in self.components if c.name in TEXT_ENCODERS)


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _own_bytes(module: torch.nn.Module) -> int:
    """A module's own parameters and buffers, not its children's: one offloading step of lowvram."""
    return _tensor_bytes(module.parameters(recurse=False)) + _tensor_bytes(module.buffers(recurse=False))


def _float_element_size(module: torch.nn.Module) -> int:
    sizes = [p.element_size() for p in module.parameters() if p.is_floating_point()]
    return max(set(sizes), key=sizes.count) if sizes else 4


def component_weights(name: str, module: torch.nn.Module) -> ComponentWeights:
    """The exact weight bytes of one model, and of its largest layer."""
    total = _tensor_bytes(module.parameters()) + _tensor_bytes(module.buffers())
    largest = max((_own_bytes(m) for m in module.modules()), default=0)
    return ComponentWeights(name=name, bytes=total, largest_layer_bytes=largest,
                            dtype_bytes=_float_element_size(module))


def pipeline_weights(components: Mapping[str, object]) -> PipelineWeights:
    """Weights of every ``torch.nn.Module`` among a pipeline's components (tokenizers and
    schedulers hold none)."""
    found = tuple(component_weights(name, module) for name, module in components.items()
                  if isinstance(module, torch.nn.Module))
    return PipelineWeights(components=found)
