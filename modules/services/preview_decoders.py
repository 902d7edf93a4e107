"""How a job's live preview is drawn: the method it asked for, over the decoders that method needs.

Approx cheap needs nothing. TAESD needs a tiny autoencoder: loaded once per variant, device and
dtype from models/VAE-taesd, and fetched from the hub in the background the first time it is
missing (meanwhile, and when that fails, the preview is an Approx cheap one and the log says why,
once). Full decodes with the model's own VAE, one preview at a time, and falls back to Approx cheap
where that cannot be done beside the worker. Renderers run on the thread that asks for the preview
(a page, a progress call), never on the worker; a failed preview never fails the job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderTiny
from PIL import Image

from modules.engine.loader import LoadedModel
from modules.engine.model_detect import ModelArch
from modules.engine.preview import latents_to_preview
from modules.engine.taesd import TaesdVariant, has_taesd, load_taesd, taesd_preview
from modules.engine.vae_preview import vae_preview, vae_preview_blocker
from modules.errors import DownloadError, ModelLoadError
from modules.params import PreviewMethod
from modules.services.downloads import TaesdDownloader

log = logging.getLogger(__name__)

Render = Callable[[Any], Image.Image]
Fetch = Callable[[TaesdVariant], Path]  # downloads a variant into its folder; DownloadError when it cannot


def _cheap(arch: ModelArch, latents: Any) -> Image.Image:
    return latents_to_preview(latents, arch)


def _latent_space_blocker(model: LoadedModel) -> str | None:
    """Why the model's VAE cannot decode the sampler's latents as they are (FLUX.2's are patchified
    and normalised for its transformer); None when it can."""
    vae = getattr(model.pipeline, "vae", None)
    vae_channels = getattr(getattr(vae, "config", None), "latent_channels", None)
    if vae_channels is not None and vae_channels != model.arch.family.latent_channels:
        channels = model.arch.family.latent_channels
        return f"{model.arch.label} samples {channels}-channel latents its VAE cannot decode directly"
    return None


class PreviewDecoders:
    """The renderers of live previews, and the tiny autoencoders they share between jobs."""

    def __init__(self, taesd_root: Path | None, fetch: Fetch | None = None) -> None:
        """``taesd_root``: models/VAE-taesd (None: no tiny autoencoders, TAESD previews are cheap ones);
        ``fetch``: how a missing one is downloaded (default: from the hub)."""
        self._root = taesd_root
        self._fetch = None if taesd_root is None else fetch or TaesdDownloader(taesd_root).download
        self._lock = threading.Lock()
        self._full_lock = threading.Lock()  # one Full decode at a time: each needs a VAE decode's memory
        self._loaded: dict[tuple[TaesdVariant, str, torch.dtype], AutoencoderTiny] = {}
        self._fetching: set[TaesdVariant] = set()
        self._unavailable: dict[TaesdVariant, str] = {}
        self._noted: set[str] = set()

    def renderer(self, model: LoadedModel, method: PreviewMethod) -> Render:
        """How the previews of a job on ``model`` are drawn from its latents. Asking for TAESD starts
        fetching a missing tiny autoencoder now, so that it is there by the first preview."""
        if method is PreviewMethod.TAESD and model.arch.is_flow:
            # The tiny autoencoders here are SD's and SDXL's (4 channels); flow families' latents are
            # 16 or 128 channels, so their previews are the cheap projection (with the family's factors).
            self._note(f"The TAESD live preview has no decoder for {model.arch.label}; previews use Approx "
                       "cheap instead.", f"taesd-{model.arch.family.group}")
            return partial(_cheap, model.arch)
        if method is PreviewMethod.TAESD:
            variant = TaesdVariant.for_arch(model.arch)
            if self._root is None or not has_taesd(variant.folder(self._root)):
                self._start_fetch(variant)  # loading waits for the first preview, off the worker's thread
            return partial(self._taesd, model, variant)
        if method is PreviewMethod.FULL:
            blocker = vae_preview_blocker(model) or _latent_space_blocker(model)
            if blocker is None:
                return partial(self._full, model)
            self._note(f"The Full live preview is not available: {blocker}. Previews use Approx cheap instead.")
        return partial(_cheap, model.arch)

    # --- TAESD ------------------------------------------------------------------------------------

    def _taesd(self, model: LoadedModel, variant: TaesdVariant, latents: Any) -> Image.Image:
        decoder = self._decoder(variant, model)
        if decoder is None:
            return _cheap(model.arch, latents)
        try:
            return taesd_preview(decoder, latents)
        except RuntimeError as exc:  # out of memory, or latents that do not fit it: this preview only
            self._note(f"A TAESD live preview failed ({exc}); such steps show Approx cheap instead.", "taesd-failed")
            return _cheap(model.arch, latents)

    def _decoder(self, variant: TaesdVariant, model: LoadedModel) -> AutoencoderTiny | None:
        """The variant's tiny autoencoder on the model's device, loaded once; None while it is being
        fetched or when it cannot be had (a fetch is started the first time it is missing)."""
        device, dtype = model.execution_device, model.device.dtype
        key = (variant, str(device), dtype)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
        folder = variant.folder(self._root) if self._root is not None else None
        if folder is not None and has_taesd(folder):  # also one a user copied in after a failed fetch
            try:
                decoder = load_taesd(folder, device, dtype)
            except ModelLoadError as exc:
                self._give_up(variant, str(exc))
                return None
            with self._lock:
                return self._loaded.setdefault(key, decoder)
        self._start_fetch(variant)
        return None

    def _start_fetch(self, variant: TaesdVariant) -> None:
        """Fetch ``variant`` in the background, once; with nowhere to put it, note why there is none."""
        if self._fetch is None:
            self._give_up(variant, "no folder for tiny autoencoders was configured")
            return
        with self._lock:
            if variant in self._fetching or variant in self._unavailable:
                return
            self._fetching.add(variant)
        threading.Thread(target=self._fetch_now, args=(variant,), name=f"fetch-{variant.value}", daemon=True).start()

    def _fetch_now(self, variant: TaesdVariant) -> None:
        assert self._fetch is not None
        try:
            self._fetch(variant)
        except DownloadError as exc:
            self._give_up(variant, str(exc))
        except Exception as exc:  # a bug: logged with its traceback; previews go on without it
            log.exception("Fetching the %s live preview decoder failed", variant.value)
            self._give_up(variant, f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._fetching.discard(variant)

    def _give_up(self, variant: TaesdVariant, reason: str) -> None:
        with self._lock:
            self._unavailable[variant] = reason
        self._note(f"The TAESD live preview is not available ({variant.value}): {reason.rstrip('.')}. "
                   "Previews use Approx cheap instead.")

    # --- Full -------------------------------------------------------------------------------------

    def _full(self, model: LoadedModel, latents: Any) -> Image.Image:
        with self._full_lock:
            try:
                image = vae_preview(model, latents)
            except RuntimeError as exc:  # out of memory, or the worker converting the VAE's dtype right now
                self._note(f"A Full live preview failed ({exc}); such steps show Approx cheap instead.", "full-failed")
                return _cheap(model.arch, latents)
        if image is None:
            self._note("A Full live preview came out as NaN (a half-precision VAE overflowing, which the "
                       "worker's own decode upcasts); such steps show Approx cheap instead.")
            return _cheap(model.arch, latents)
        return image

    def _note(self, message: str, key: str | None = None) -> None:
        """Log ``message`` the first time it (or another of the same ``key``) comes up."""
        with self._lock:
            if (key or message) in self._noted:
                return
            self._noted.add(key or message)
        log.warning(message)
