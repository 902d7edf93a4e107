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

from modules.paths import MODEL_FOLDER_FLAGS, TEXT_ENCODER_FOLDER
from modules.precision import Precision


@dataclass(frozen=True)
class Flags:
    """What the user typed. Paths stay as given; :mod:`modules.paths` resolves them."""

    listen: bool = False
    port: int = 7860
    ckpt: str | None = None
    ckpt_dir: Path | None = None
    lora_dir: Path | None = None
    embeddings_dir: Path | None = None
    vae_dir: Path | None = None
    data_dir: Path | None = None
    models_dir: Path | None = None
    model_folders: tuple[tuple[str, Path], ...] = ()  # (models folder, extra folder) from --esrgan-models-path etc.
    device_id: int | None = None
    use_cpu: tuple[str, ...] = ()
    no_half: bool = False
    no_half_vae: bool = False
    precision: Precision = Precision.AUTOCAST
    upcast_sampling: bool = False
    xformers: bool = False
    opt_sdp_attention: bool = False
    medvram: bool = False
    medvram_sdxl: bool = False
    lowvram: bool = False
    text_encoder_cpu: bool = False  # the flow families' T5 / LLM text encoders stay on the CPU
    loglevel: str = "INFO"
    autolaunch: bool = False
    exit: bool = False
    api: bool = False
    nowebui: bool = False
    gradio_auth: str | None = None  # "user:pass[,user2:pass2]": a secret, never logged or echoed
    gradio_auth_path: Path | None = None
    api_auth: str | None = None  # a secret too
    cors_allow_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides loopback (and this machine's with --listen)
    forwarded_allow_ips: tuple[str, ...] = ()  # proxies whose X-Forwarded-For/-Proto are believed
    tls_keyfile: Path | None = None
    tls_certfile: Path | None = None
    subpath: str = ""
    share: bool = False
    enable_insecure_extension_access: bool = False
    disable_all_extensions: bool = False
    ray_address: str | None = None  # "auto" or HOST:PORT: run jobs on Ray workers (docs/scale-out.md)
    ray_allow_public: bool = False

    @property
    def host(self) -> str:
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def memory_mode(self) -> str | None:
        """The memory flag given (``medvram``, ``medvram-sdxl``, ``lowvram``), or None."""
        for name in ("lowvram", "medvram_sdxl", "medvram"):
            if getattr(self, name):
                return name.replace("_", "-")
        return None

    @property
    def serves_api(self) -> bool:
        return self.api or self.nowebui

    def public_view(self) -> dict[str, object]:
        """The flags as ``/sdapi/v1/cmd-flags`` shows them: every secret redacted."""
        view: dict[str, object] = {}
        for name, value in vars(self).items():
            if name in SECRET_FLAGS and value:
                value = "<redacted>"
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, enum.Enum):
                value = value.value
            elif name == "model_folders":
                value = {folder: str(path) for folder, path in value}
            elif isinstance(value, tuple):
                value = list(value)
            view[name] = value
        return view


SECRET_FLAGS = frozenset({"gradio_auth", "api_auth"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="app.py", description="Atelier: a text-to-image studio for Stable Diffusion.",
                                allow_abbrev=False)  # every flag spelled out, so a secret's value is always found
    _add_model_flags(p)
    _add_device_flags(p)
    _add_server_flags(p)
    return p


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ckpt", help="checkpoint to load at startup (file name, title, or path)")
    p.add_argument("--ckpt-dir", type=Path, help="extra folder to look for checkpoints in")
    p.add_argument("--lora-dir", type=Path, help="extra folder to look for LoRA files in (besides models/Lora)")
    p.add_argument("--embeddings-dir", type=Path,
                   help="extra folder to look for textual inversion embeddings in (besides embeddings/)")
    p.add_argument("--vae-dir", type=Path, help="extra folder to look for VAE files in (besides models/VAE)")
    p.add_argument("--data-dir", type=Path, help="where outputs, config and user extensions live (default: the project folder)")
    p.add_argument("--models-dir", type=Path, help="base folder of models (default: <data-dir>/models)")
    for flag, folder in MODEL_FOLDER_FLAGS.items():
        p.add_argument(f"--{flag}-models-path", type=Path, metavar="DIR",
                       help=f"extra folder to look for {folder} models in (besides models/{folder})")
    p.add_argument("--controlnet-dir", type=Path, metavar="DIR",
                   help="extra folder to look for ControlNet models in (besides models/ControlNet)")
    p.add_argument("--text-encoder-dir", type=Path, metavar="DIR",
                   help="extra folder to look for text encoders (clip_l, clip_g, t5xxl, ...) in (besides "
                        "models/text_encoder)")
    p.add_argument("--disable-all-extensions", action="store_true",
                   help="start without loading any extension (built-in ones included)")


def _add_device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-id", type=int, help="CUDA device index to use")
    p.add_argument("--use-cpu", nargs="+", default=[], metavar="MODULE", help="run these on the CPU; 'all' for everything")
    p.add_argument("--no-half", action="store_true", help="keep weights in full precision (fp32)")
    p.add_argument("--no-half-vae", action="store_true", help="keep the VAE in fp32 (avoids black or NaN images)")
    p.add_argument("--precision", choices=[p.value for p in Precision], default=Precision.AUTOCAST.value,
                   help="'full' forces fp32; 'half'/'autocast' use fp16 on a GPU; 'bf16' bfloat16 where supported")
    p.add_argument("--upcast-sampling", action="store_true", help="accepted for A1111 compatibility: sampling "
                   "math already runs in fp32")
    p.add_argument("--xformers", action="store_true", help="use xformers attention (CUDA; install with "
                   "./webui.sh --xformers)")
    p.add_argument("--opt-sdp-attention", action="store_true", help="PyTorch SDPA attention (the default)")
    memory = p.add_mutually_exclusive_group()
    memory.add_argument("--medvram", action="store_true", help="keep each model on the GPU only while it runs")
    memory.add_argument("--medvram-sdxl", action="store_true", help="--medvram for SDXL models only")
    memory.add_argument("--lowvram", action="store_true", help="move weights to the GPU layer by layer (slowest, "
                        "least memory)")
    p.add_argument("--text-encoder-cpu", action="store_true",
                   help="keep the T5 / LLM text encoders of FLUX, SD3.5, FLUX.2 and Z-Image on the CPU (in RAM); only "
                        "their output goes to the GPU. Saves 4-9 GB of VRAM; prompts encode more slowly")
    p.add_argument("--ray-address", metavar="auto|HOST:PORT",
                   help="run jobs on GPU workers through Ray: HOST:PORT of the head (this machine's LAN address "
                        "starts it here), or 'auto' for the cluster this machine belongs to; see docs/scale-out.md")
    p.add_argument("--ray-allow-public", action="store_true",
                   help="allow a Ray address that is not private or loopback (Ray's ports run any code sent to them)")


def _add_server_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", action="store_true", help="serve on all interfaces (0.0.0.0) instead of 127.0.0.1")
    p.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    p.add_argument("--loglevel", default="INFO", type=str.upper,
                   choices=["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"], help="logging level")
    p.add_argument("--autolaunch", action="store_true", help="open the UI in the default browser once it serves")
    p.add_argument("--exit", action="store_true", help="stop after installing (used by webui.sh)")
    p.add_argument("--api", action="store_true", help="serve the A1111-compatible REST API at /sdapi/v1")
    p.add_argument("--nowebui", action="store_true", help="serve the REST API only, without the UI")
    p.add_argument("--gradio-auth", metavar="USER:PASS[,USER2:PASS2]",
                   help="require a login for the UI (and, unless --api-auth is given, the API)")
    p.add_argument("--gradio-auth-path", type=Path, metavar="FILE",
                   help="file of USER:PASS entries (comma- or line-separated) for the login")
    p.add_argument("--api-auth", metavar="USER:PASS[,USER2:PASS2]", help="separate credentials for the API")
    p.add_argument("--cors-allow-origins", default="", metavar="ORIGINS",
                   help="comma-separated origins allowed to call the API from a browser")
    p.add_argument("--allowed-hosts", default="", metavar="NAMES",
                   help="comma-separated host names the server answers to besides 127.0.0.1/localhost (and, with "
                        "--listen, this machine's own names and addresses): a reverse proxy's public name, or "
                        "'.example.com' for a domain and its subdomains. Other names get 421 (DNS rebinding)")
    p.add_argument("--forwarded-allow-ips", default="", metavar="ADDRESSES",
                   help="comma-separated addresses of reverse proxies whose X-Forwarded-For/-Proto headers are "
                        "trusted (default: none; the connecting address is the client)")
    p.add_argument("--tls-keyfile", type=Path, help="TLS private key file (serve HTTPS)")
    p.add_argument("--tls-certfile", type=Path, help="TLS certificate file (serve HTTPS)")
    p.add_argument("--subpath", default="", help="serve the UI under this path, for a reverse proxy (e.g. /atelier)")
    p.add_argument("--share", action="store_true", help="refused: Atelier does not open public tunnels")
    p.add_argument("--enable-insecure-extension-access", action="store_true",
                   help="allow installing extensions even when serving to the network")


def parse_flags(argv: Sequence[str], environ: Mapping[str, str]) -> Flags:
    """Flags from ``argv`` preceded by ``COMMANDLINE_ARGS`` (explicit arguments win)."""
    args = [*shlex.split(environ.get("COMMANDLINE_ARGS", "")), *argv]
    parser = build_parser()
    ns = parser.parse_args(args)
    if not 1 <= ns.port <= 65535:
        parser.error(f"--port must be between 1 and 65535, got {ns.port}")
    if bool(ns.tls_keyfile) != bool(ns.tls_certfile):
        parser.error("--tls-keyfile and --tls-certfile go together")
    subpath = ns.subpath.strip()
    if subpath and (not subpath.startswith("/") or subpath.endswith("/") or ".." in subpath):
        parser.error(f"--subpath must look like /name, got {ns.subpath!r}")
    return Flags(
        listen=ns.listen, port=ns.port, ckpt=ns.ckpt, ckpt_dir=ns.ckpt_dir, lora_dir=ns.lora_dir,
        embeddings_dir=ns.embeddings_dir, vae_dir=ns.vae_dir, data_dir=ns.data_dir,
        models_dir=ns.models_dir, model_folders=_model_folders(ns), device_id=ns.device_id, use_cpu=tuple(m.lower() for m in ns.use_cpu),
        no_half=ns.no_half, no_half_vae=ns.no_half_vae, precision=Precision(ns.precision),
        upcast_sampling=ns.upcast_sampling, xformers=ns.xformers, opt_sdp_attention=ns.opt_sdp_attention,
        medvram=ns.medvram, medvram_sdxl=ns.medvram_sdxl, lowvram=ns.lowvram,
        text_encoder_cpu=ns.text_encoder_cpu, loglevel=ns.loglevel,
        autolaunch=ns.autolaunch, exit=ns.exit, api=ns.api, nowebui=ns.nowebui, gradio_auth=ns.gradio_auth,
        gradio_auth_path=ns.gradio_auth_path, api_auth=ns.api_auth,
        cors_allow_origins=_items(ns.cors_allow_origins), allowed_hosts=_items(ns.allowed_hosts),
        forwarded_allow_ips=_items(ns.forwarded_allow_ips),
        tls_keyfile=ns.tls_keyfile, tls_certfile=ns.tls_certfile, subpath=subpath, share=ns.share,
        enable_insecure_extension_access=ns.enable_insecure_extension_access,
        disable_all_extensions=ns.disable_all_extensions, ray_address=ns.ray_address,
        ray_allow_public=ns.ray_allow_public,
    )


def _model_folders(ns: argparse.Namespace) -> tuple[tuple[str, Path], ...]:
    found = tuple((folder, getattr(ns, f"{flag}_models_path")) for flag, folder in MODEL_FOLDER_FLAGS.items()
                  if getattr(ns, f"{flag}_models_path") is not None)
    found += (("ControlNet", ns.controlnet_dir),) if ns.controlnet_dir is not None else ()
    return found + (((TEXT_ENCODER_FOLDER, ns.text_encoder_dir),) if ns.text_encoder_dir is not None else ())


def _items(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def redacted_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of secret flags replaced, for the process title."""
    secret = tuple(f"--{name.replace('_', '-')}" for name in sorted(SECRET_FLAGS))
    shown: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            shown.append("<redacted>")
            hide_next = False
        elif arg in secret:
            shown.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{flag}=" for flag in secret)):
            shown.append(arg.partition("=")[0] + "=<redacted>")
        else:
            shown.append(arg)
    return shown
