"""Where a pipeline's weights live while it runs: all on the device, or offloaded to RAM.

* ``FULL``: every component on the device.
* ``MEDVRAM``: model-level offload (accelerate's hooks through diffusers): a component is moved to
  the device when its forward runs and the one before it in the pipeline's order goes back to RAM.
  Every component's inputs must be sent to :func:`execution_device`, never to ``module.device``
  (the hook moves weights, not arguments).
* ``LOWVRAM``: sequential offload: each layer's weights are brought in for its forward only; the
  parameters sit on the ``meta`` device in between, so ``module.device`` means nothing there.

A component swapped in later (an external VAE) joins the same scheme (:func:`place_component`), and
after each job the offloaded components are sent back to RAM (:func:`offload_idle`), so a job starts
with nothing of the last one left on the device.

Text encoders on the CPU (``--text-encoder-cpu``, Forge's and SD.Next's "text encoder on CPU"): the big
T5 / LLM encoders of the flow families stay in RAM in every memory mode and run there; only their
output embeddings go to the execution device (:func:`keep_on_cpu`). CLIP encoders are small and stay
with the rest of the pipeline.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import torch
from accelerate import cpu_offload
from accelerate.hooks import remove_hook_from_module
from diffusers import DiffusionPipeline

from modules.engine.devices import Attention, DeviceInfo, MemoryMode
from modules.engine.model_detect import ModelArch

log = logging.getLogger(__name__)


def effective_mode(device: DeviceInfo, arch: ModelArch) -> MemoryMode:
    """The memory mode a model of ``arch`` runs in (medvram-sdxl is full for SD1/SD2)."""
    return device.memory.offload_for(arch.is_sdxl)


def execution_device(pipe: DiffusionPipeline) -> torch.device:
    """Where the pipeline computes: the device even while offloading keeps the weights in RAM."""
    return pipe._execution_device


def _modules(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def _offload_sequentially(module: torch.nn.Module, device: torch.device) -> None:
    # accelerate's own sequential offload, called with the device as given: diffusers' wrapper
    # always adds an index ("cpu:0"), which a CPU execution device (the tests' stand-in for a GPU)
    # does not survive.
    cpu_offload(module, device, offload_buffers=len(module._parameters) > 0)


# Encoder classes worth keeping off the GPU: T5 (FLUX.1, SD3.5, Chroma) and LLMs (Z-Image and FLUX.2
# klein use Qwen3; Lumina 2 Gemma; HiDream Llama). CLIP-L / CLIP-G are a few hundred MB: left alone.
_BIG_ENCODERS = ("T5", "UMT5", "Qwen", "Gemma", "Llama", "Mistral")
_CPU_MARK = "_atelier_text_encoder_cpu"  # set on an encoder module that keeps_on_cpu placed: (pre, post) handles


def cpu_encoder_names(pipe: DiffusionPipeline, arch: ModelArch) -> tuple[str, ...]:
    """The components of a flow pipeline that ``--text-encoder-cpu`` keeps in RAM: its text encoders
    (``text_encoder``, ``text_encoder_2``, ``text_encoder_3``) whose class is a T5 or an LLM."""
    if not arch.is_flow:
        return ()
    return tuple(name for name, module in _modules(pipe).items()
                 if name.startswith("text_encoder") and type(module).__name__.startswith(_BIG_ENCODERS))


def kept_on_cpu(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a text encoder that stays on the CPU (moving a model whole skips it)."""
    return hasattr(module, _CPU_MARK)


def _moved(value: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    """``value`` with every tensor in it on ``device`` (floating ones in ``dtype`` when given):
    tensors, tuples and lists of them (``hidden_states``), dicts and ModelOutputs (changed in place,
    so a ModelOutput keeps its class and attributes)."""
    if isinstance(value, torch.Tensor):
        return value.to(device, dtype if dtype is not None and value.is_floating_point() else None)
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(v, device, dtype) for v in value)
    if type(value) is dict:
        return {k: _moved(v, device, dtype) for k, v in value.items()}
    if isinstance(value, MutableMapping):  # a ModelOutput (an OrderedDict): its __setitem__ sets the attribute too
        for key in list(value.keys()):
            value[key] = _moved(value[key], device, dtype)
    return value


def inputs_to_cpu(_module: torch.nn.Module, args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook: the encoder's inputs (made on the execution device by the families) to the CPU."""
    cpu = torch.device("cpu")
    return _moved(args, cpu, None), _moved(kwargs, cpu, None)


def outputs_to(device: torch.device, dtype: torch.dtype) -> Any:
    """Forward hook: the encoder's outputs to the execution device, floating ones in the pipeline's
    dtype (what the encoder would have given there), so the families' code after it is unchanged."""
    def hook(_module: torch.nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
        return _moved(output, device, dtype)
    return hook


def _cpu_dtype(tensor: torch.Tensor) -> torch.Tensor:
    # float16 matmuls on the CPU are slow (and T5 overflows in fp16 anyway); bfloat16 has float32's
    # range at half its memory. float32 weights (a CPU device, --no-half) and fp8 ones stay as they are.
    return tensor.to(torch.bfloat16) if tensor.dtype == torch.float16 else tensor


def _unchain(pipe: DiffusionPipeline, module: torch.nn.Module) -> None:
    """Take ``module`` out of model offload's chain (text_encoder -> text_encoder_2 -> transformer ...):
    the part after it now sends the part before it back to RAM, as it would have sent ``module``
    (accelerate's CpuOffload.pre_forward offloads its ``prev_module_hook``)."""
    hooks = list(getattr(pipe, "_all_hooks", []))
    mine = next((h for h in hooks if getattr(h, "model", None) is module), None)
    if mine is None:
        return
    for hook in hooks:
        if getattr(hook.hook, "prev_module_hook", None) is mine:
            hook.hook.prev_module_hook = mine.hook.prev_module_hook
    pipe._all_hooks = [h for h in hooks if h is not mine]


def keep_on_cpu(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo) -> tuple[str, ...]:
    """Keep the pipeline's big text encoders in RAM under whatever scheme placed the rest (call after
    it): offload hooks off them, weights on the CPU (bfloat16 for half ones), and hooks that move
    their inputs to the CPU and their outputs to the execution device. Returns their names."""
    names = cpu_encoder_names(pipe, arch)
    if not names:
        return ()
    # diffusers' _execution_device skips these names: a hook-less encoder in RAM must not make the
    # pipeline look as if it computed on the CPU (pipeline_utils.DiffusionPipeline._execution_device).
    pipe._exclude_from_cpu_offload = [*dict.fromkeys([*type(pipe)._exclude_from_cpu_offload, *names])]
    for name in names:
        module = getattr(pipe, name)
        if any(hasattr(m, "_hf_hook") for m in module.modules()):  # model offload hooked it into its chain
            _unchain(pipe, module)
            remove_hook_from_module(module, recurse=True)
        module.to("cpu")
        module._apply(_cpu_dtype)
        if not kept_on_cpu(module):
            handles = (module.register_forward_pre_hook(inputs_to_cpu, with_kwargs=True),
                       module.register_forward_hook(outputs_to(device.device, device.dtype)))
            setattr(module, _CPU_MARK, handles)
    log.info("Text encoders kept on the CPU: %s", ", ".join(f"{n} ({type(getattr(pipe, n)).__name__})"
                                                             for n in names))
    return names


def place(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo) -> None:
    """Put a pipeline (fresh from loading, on the CPU, with no hooks) where it runs: the VAE's own
    dtype, the attention kernels, and the device, whole or offloaded as the memory mode says."""
    # 1. Precision and attention kernels, before any weights move.
    if pipe.vae.dtype != device.vae:
        pipe.vae.to(dtype=device.vae)
    if device.attention is Attention.XFORMERS:
        pipe.enable_xformers_memory_efficient_attention()
    # 2. The weights.
    mode = effective_mode(device, arch)
    on_cpu = cpu_encoder_names(pipe, arch) if device.text_encoders_on_cpu else ()
    if mode is MemoryMode.MEDVRAM:
        pipe.enable_model_cpu_offload(device=device.device)
    elif mode is MemoryMode.LOWVRAM:
        for name, module in _modules(pipe).items():
            if name not in on_cpu:
                _offload_sequentially(module, device.device)
    elif device.device.type != "cpu":  # weights load on the CPU; moving there again only warns
        for name, module in _modules(pipe).items():  # one by one: a T5 kept in RAM never visits the GPU
            if name not in on_cpu:
                module.to(device.device)
    if on_cpu:
        keep_on_cpu(pipe, arch, device)


def replace_mode(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo) -> None:
    """Move a placed pipeline to the memory mode ``device`` names: hooks off, back in RAM, placed again."""
    pipe.remove_all_hooks()
    for module in _modules(pipe).values():
        if any(parameter.is_meta for parameter in module.parameters()):
            raise RuntimeError("a sequentially offloaded pipeline lost its weights' home; load it again")
        module.to("cpu")
    place(pipe, arch, device)
    log.info("Memory mode for %s is now %s", arch.label, effective_mode(device, arch).value)


def place_component(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo, module: torch.nn.Module) -> None:
    """Put a component just swapped into ``pipe`` (an external VAE) under the pipeline's scheme."""
    mode = effective_mode(device, arch)
    if mode is MemoryMode.MEDVRAM:
        pipe.enable_model_cpu_offload(device=device.device)  # hooks the whole chain again, the new part included
        if device.text_encoders_on_cpu:
            keep_on_cpu(pipe, arch, device)  # and takes the CPU text encoders out of it again
    elif mode is MemoryMode.LOWVRAM:
        if not hasattr(module, "_hf_hook"):  # a VAE swapped back in keeps the hooks it had
            _offload_sequentially(module, device.device)
    else:
        module.to(device.device)


def offload_idle(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo) -> None:
    """After a job under model-level offload: every component back to RAM (the last one to run,
    usually the VAE, would otherwise stay on the device through the next job's sampling)."""
    if effective_mode(device, arch) is MemoryMode.MEDVRAM:
        for hook in getattr(pipe, "_all_hooks", ()):
            hook.offload()
