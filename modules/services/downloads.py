"""Fetching from the Hugging Face hub: a starter checkpoint when the user asks for one, and the tiny
autoencoder the TAESD live preview needs, the first time it is chosen.

Nothing else in Atelier reaches the network: loading is offline, and this is the one place that
calls the hub. A checkpoint lands in models/Stable-diffusion under its own name, a tiny autoencoder
in models/VAE-taesd/<variant>; huggingface_hub downloads to a temporary name first, so an
interrupted download leaves no half file there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from modules.engine.taesd import TAESD_FILES, TaesdVariant, has_taesd
from modules.errors import DownloadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    description: str


DEFAULT_MODEL = HubFile(
    repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
    filename="v1-5-pruned-emaonly.safetensors",
    description="Stable Diffusion 1.5 (about 4 GB)",
)


ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total)


def _reporting_tqdm(report: ProgressCallback) -> type[tqdm]:
    """A tqdm class that also tells ``report`` how far the download is."""

    class Reporting(tqdm):  # type: ignore[misc]
        def update(self, n: float | None = 1) -> Any:
            result = super().update(n)
            report(int(self.n), int(self.total or 0))
            return result

    return Reporting


def _fetch(repo_id: str, filename: str, target_dir: Path, instead: str,
           on_progress: ProgressCallback | None = None) -> Path:
    """``filename`` of ``repo_id`` downloaded into ``target_dir``; a DownloadError saying what to do
    ``instead`` when the hub cannot be reached."""
    # Imported here: huggingface_hub reads its offline switch at import, and most runs never download.
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
    )

    target_dir.mkdir(parents=True, exist_ok=True)
    try:
        path = hf_hub_download(repo_id, filename, local_dir=target_dir,
                               tqdm_class=_reporting_tqdm(on_progress) if on_progress else None)
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
        raise DownloadError(f"Cannot download {filename}: this machine is offline or the hub is "
                            f"unreachable. {instead}") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise DownloadError(f"Downloading {filename} failed: {exc}") from exc
    return Path(path)


def _logging_progress(label: str) -> ProgressCallback:
    """A progress callback that logs each quarter of a download once."""
    logged = {0}

    def report(done: int, total: int) -> None:
        quarter = 4 * done // total if total else 0
        if quarter not in logged:
            logged.add(quarter)
            log.info("Downloading %s: %d%% (%d of %d bytes)", label, 25 * quarter, done, total)

    return report


class ModelDownloader:
    def __init__(self, target_dir: Path) -> None:
        self.target_dir = target_dir

    def download(self, item: HubFile = DEFAULT_MODEL, on_progress: ProgressCallback | None = None) -> Path:
        """Download ``item`` into the checkpoint folder, reporting progress to ``on_progress``."""
        target = self.target_dir / item.filename
        if target.exists():
            return target
        log.info("Downloading %s from %s", item.filename, item.repo_id)
        return _fetch(item.repo_id, item.filename, self.target_dir,
                      f"Copy a checkpoint into {self.target_dir} instead.", on_progress)


TAESD_OWNER = "madebyollin"  # the hub account that publishes TAESD and TAESDXL in diffusers' layout


class TaesdDownloader:
    """Fetches a tiny autoencoder into models/VAE-taesd/<variant> once; later runs load it offline."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def download(self, variant: TaesdVariant) -> Path:
        """The variant's folder, downloaded first if it is not complete (progress goes to the log)."""
        folder = variant.folder(self.root)
        if has_taesd(folder):
            return folder
        repo_id = f"{TAESD_OWNER}/{variant.value}"
        log.info("Downloading the %s live preview decoder from %s into %s", variant.value, repo_id, folder)
        instead = f"Copy config.json and diffusion_pytorch_model.safetensors of {repo_id} into {folder}."
        for filename in TAESD_FILES:
            _fetch(repo_id, filename, folder, instead, _logging_progress(f"{repo_id}/{filename}"))
        log.info("Downloaded the %s live preview decoder into %s", variant.value, folder)
        return folder
