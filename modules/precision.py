"""The precision a user may ask models to run in (A1111's ``--precision``), shared by the command
line (:mod:`modules.cmd_args`) and the engine's device choice (:mod:`modules.engine.devices`)."""

from __future__ import annotations

import enum


class Precision(enum.Enum):
    """A1111's ``--precision`` values."""

    FULL = "full"
    HALF = "half"
    AUTOCAST = "autocast"
    BF16 = "bf16"  # not A1111's: bfloat16 weights where the device supports them
