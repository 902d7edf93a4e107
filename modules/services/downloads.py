"""Fetching a starter checkpoint from the Hugging Face hub, only when the user asks for it.

Nothing else in Atelier reaches the network: loading is offline, and this is the one place that
calls the hub. The file lands in models/Stable-diffusion under its own name; huggingface_hub
downloads to a temporary name first, so an interrupted download leaves no half file there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

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


class ModelDownloader:
    def __init__(self, target_dir: Path) -> None:
        self.target_dir = target_dir

    def download(self, item: HubFile = DEFAULT_MODEL, on_progress: ProgressCallback | None = None) -> Path:
        """Download ``item`` into the checkpoint folder, reporting progress to ``on_progress``."""
        # Imported here: huggingface_hub reads its offline switch at import, and most runs never download.
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            OfflineModeIsEnabled,
        )

        target = self.target_dir / item.filename
        if target.exists():
            return target
        self.target_dir.mkdir(parents=True, exist_ok=True)
        log.info("Downloading %s from %s", item.filename, item.repo_id)
        try:
            path = hf_hub_download(item.repo_id, item.filename, local_dir=self.target_dir,
                                   tqdm_class=_reporting_tqdm(on_progress) if on_progress else None)
        except (OfflineModeIsEnabled, LocalEntryNotFoundError) as exc:
            raise DownloadError(f"Cannot download {item.filename}: this machine is offline or the hub is "
                                f"unreachable. Copy a checkpoint into {self.target_dir} instead.") from exc
        except (HfHubHTTPError, OSError) as exc:
            raise DownloadError(f"Downloading {item.filename} failed: {exc}") from exc
        return Path(path)
