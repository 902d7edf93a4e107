"""The checkpoints the GPU benchmark (``tests/bench/gpu.py``) measures: random weights in the
real-size configs (or tiny models on the CPU), a fresh copy of them for the cold switch, and
evicting that copy from the page cache, with a check of how much of it stayed cached.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from gpu_parts import Plan, free_memory
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modules.devtools.tiny_model import TinyArch, write_tiny_model
from modules.engine.config_folders import SHIPPED_CONFIGS, read_bpe_file

# --- models --------------------------------------------------------------------------------------------


def _real_size_builders(source: Path) -> dict[str, Callable[[], torch.nn.Module]]:
    def text(name: str, cls: type) -> Callable[[], torch.nn.Module]:
        return lambda: cls(CLIPTextConfig.from_pretrained(str(source / name), local_files_only=True))

    builders: dict[str, Callable[[], torch.nn.Module]] = {
        "unet": lambda: UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(source / "unet"))),
        "vae": lambda: AutoencoderKL.from_config(AutoencoderKL.load_config(str(source / "vae"))),
        "text_encoder": text("text_encoder", CLIPTextModel),
    }
    if (source / "text_encoder_2").is_dir():
        builders["text_encoder_2"] = text("text_encoder_2", CLIPTextModelWithProjection)
    return builders


def build_real_size(arch: str, out: Path, device: torch.device) -> Path:
    """A diffusers folder of ``arch``'s shipped configs with random fp16 weights. Each component is
    initialised on ``device`` (seconds on a GPU, against minutes of CPU init for SDXL), saved and
    freed before the next, so at most one fp32 component is in memory at a time."""
    source = SHIPPED_CONFIGS / arch
    shutil.copytree(source, out)  # model_index, scheduler and tokenizer configs as shipped
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if (out / tokenizer).is_dir():
            for name in ("vocab.json", "merges.txt"):
                (out / tokenizer / name).write_bytes(read_bpe_file(name))
    torch.manual_seed(0)
    for name, build in _real_size_builders(source).items():
        with torch.device(device):
            module = build()
        module.to(torch.float16).save_pretrained(str(out / name))
        del module
        free_memory()
    return out


def _files(root: Path) -> list[Path]:
    return [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())


def fresh_copy(source: Path, target: Path) -> Path:
    """A second checkpoint with the same weights in new files (new inodes: no hard links), so
    reading it cannot be served by the first one's cached pages."""
    for path in _files(source):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        if os.stat(path).st_ino == os.stat(dest).st_ino:
            raise RuntimeError(f"{dest} shares its inode with {path}: not a fresh copy")
    return target


def make_checkpoints(arch: str, plan: Plan, root: Path) -> tuple[Path, Path]:
    """Two checkpoints of ``arch`` in their own checkpoint folder: the one measured, and a second to
    switch to and back from."""
    folder = root / arch
    first, second = folder / f"{arch}-a", folder / f"{arch}-b"
    if plan.cuda or plan.real_size:
        build_real_size(arch, first, torch.device("cuda" if plan.cuda else "cpu"))
        fresh_copy(first, second)
    else:
        write_tiny_model(TinyArch(arch), first, seed=0)
        write_tiny_model(TinyArch(arch), second, seed=1)
    return first, second


# --- the page cache --------------------------------------------------------------------------------------


def _resident_pages(path: Path, libc: ctypes.CDLL, page: int) -> tuple[int, int]:
    """(pages of ``path`` in the page cache, pages in all), by mincore(2) on a mapping that faults nothing in."""
    size = path.stat().st_size
    if size == 0:
        return 0, 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = libc.mmap(None, ctypes.c_size_t(size), 1, 1, fd, ctypes.c_long(0))  # PROT_READ, MAP_SHARED
        if address in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap failed")
        pages = (size + page - 1) // page
        vector = (ctypes.c_ubyte * pages)()
        try:
            if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(size))
        return int((np.frombuffer(vector, dtype=np.uint8) & 1).sum()), pages
    finally:
        os.close(fd)


def resident_fraction(root: Path) -> float | None:
    """How much of ``root``'s files sits in the page cache (None where mincore cannot be called)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                              ctypes.c_long]
        counts = [_resident_pages(path, libc, os.sysconf("SC_PAGE_SIZE")) for path in _files(root)]
    except (OSError, AttributeError, ValueError):
        return None
    total = sum(pages for _, pages in counts)
    return sum(resident for resident, _ in counts) / total if total else 0.0


def drop_page_cache(root: Path, whole_cache: bool) -> str:
    """Evict ``root``'s files from the page cache, so the next read comes from the disk; says how,
    and how much was still cached afterwards. Each file is flushed, then posix_fadvise(DONTNEED);
    with ``whole_cache`` (a machine of our own) and root, /proc/sys/vm/drop_caches is written too."""
    done = []
    if hasattr(os, "posix_fadvise"):
        for path in _files(root):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)  # dirty pages are not dropped
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        done.append("posix_fadvise(DONTNEED)")
    if whole_cache and hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("1\n")
            done.append("drop_caches")
        except OSError as exc:
            done.append(f"drop_caches refused ({exc.strerror})")
    if not done:
        return "page cache NOT dropped (no posix_fadvise here): the cold read may come from RAM"
    left = resident_fraction(root)
    return " + ".join(done) + (f"; {left:.0%} still cached" if left is not None else "; residency unknown")
