"""Command-line flags, with A1111's names, parsed into a frozen value.

``COMMANDLINE_ARGS`` from the environment is read too, as A1111 does. Parsing happens only when the
composition root calls :func:`parse_flags`; nothing reads ``sys.argv`` at import time.
"""

from __future__ import annotations

import argparse
import enum
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path



class Precision(enum.Enum):
    """A1111's ``--precision`` values."""

    FULL = "full"
    HALF = "half"
    AUTOCAST = "autocast"


@dataclass(frozen=True)
class Flags:
    """What the user typed. Paths stay as given; :mod:`modules.paths` resolves them."""

    listen: bool = False
    port: int = 7860
    ckpt: str | None = None
    ckpt_dir: Path | None = None
    data_dir: Path | None = None
    models_dir: Path | None = None
    device_id: int | None = None
    use_cpu: tuple[str, ...] = ()
    no_half: bool = False
    precision: Precision = Precision.AUTOCAST
    loglevel: str = "INFO"
    autolaunch: bool = False
    exit: bool = False

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description="Atelier: a text-to-image studio for Stable Diffusion.")
    p.add_argument("--listen", action="store_true", help="serve on all interfaces (0.0.0.0) instead of 127.0.0.1")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--ckpt", help="checkpoint to load at startup (file name, title, or path)")
    p.add_argument("--ckpt-dir", type=Path, help="extra folder to look for checkpoints in")
    p.add_argument("--data-dir", type=Path, help="where outputs, config and user extensions live (default: the project folder)")
    p.add_argument("--models-dir", type=Path, help="base folder of models (default: <data-dir>/models)")
    p.add_argument("--device-id", type=int, help="CUDA device index to use")
    p.add_argument("--use-cpu", nargs="+", default=[], metavar="MODULE", help="run these on the CPU; 'all' for everything")
    p.add_argument("--no-half", action="store_true", help="keep weights in full precision (fp32)")
    p.add_argument("--precision", choices=[p.value for p in Precision], default=Precision.AUTOCAST.value,
                   help="'full' forces fp32; 'half'/'autocast' use fp16 on a GPU")
    p.add_argument("--loglevel", default="INFO", type=str.upper,
                   choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], help="logging level")
    p.add_argument("--autolaunch", action="store_true", help="open the UI in the default browser once it serves")
    p.add_argument("--exit", action="store_true", help="stop after installing (used by webui.sh)")
    return p


def parse_flags(argv: Sequence[str], environ: Mapping[str, str]) -> Flags:
    """Flags from ``argv`` preceded by ``COMMANDLINE_ARGS`` (explicit arguments win)."""
    args = [*shlex.split(environ.get("COMMANDLINE_ARGS", "")), *argv]
    ns = build_parser().parse_args(args)
    if not 1 <= ns.port <= 65535:
        build_parser().error(f"--port must be between 1 and 65535, got {ns.port}")
    return Flags(
        listen=ns.listen, port=ns.port, ckpt=ns.ckpt, ckpt_dir=ns.ckpt_dir, data_dir=ns.data_dir,
        models_dir=ns.models_dir, device_id=ns.device_id, use_cpu=tuple(m.lower() for m in ns.use_cpu),
        no_half=ns.no_half, precision=Precision(ns.precision), loglevel=ns.loglevel,
        autolaunch=ns.autolaunch, exit=ns.exit,
    )
