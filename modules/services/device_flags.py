"""The device policy the command line asks for: A1111's flags turned into the engine's value.

The engine takes a :class:`~modules.engine.devices.DevicePolicy` and never sees flags; the front
(``app.py``) and the scale-out worker launcher convert theirs here.
"""

from __future__ import annotations

from modules.cmd_args import Flags
from modules.engine.devices import DevicePolicy, MemoryMode


def device_policy(flags: Flags) -> DevicePolicy:
    """The policy the command line asks for."""
    memory = MemoryMode(flags.memory_mode) if flags.memory_mode else None
    return DevicePolicy(use_cpu="all" in flags.use_cpu, device_id=flags.device_id, no_half=flags.no_half,
                        no_half_vae=flags.no_half_vae, precision=flags.precision, upcast_sampling=flags.upcast_sampling,
                        xformers=flags.xformers, memory=memory, text_encoders_on_cpu=flags.text_encoder_cpu)
