"""The standard upscaler and face-restoration models, downloaded when a user asks for one.

Nothing downloads by itself: a user picks a model in the Extras tab (or a script calls
``POST /sdapi/v1/download-model``), sees its progress, and the file lands in the models folder
A1111 keeps it in, under A1111's file name. Each file is pinned by its SHA-256: it streams into a
temporary file beside its destination, is hashed on the way, and is renamed into place only when
the hash matches; a mismatch or a broken connection leaves nothing behind.

Files downloaded here are listed under A1111's labels (``RealESRGAN_x4plus.pth`` is "R-ESRGAN 4x+"),
so requests and infotexts naming those labels find them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from modules.errors import DownloadError, FieldError, ValidationError

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total; 0 when unknown)
CHUNK = 1024 * 1024
TIMEOUT_SECONDS = 60.0  # between two reads, not for the whole file


@dataclass(frozen=True)
class KnownModel:
    """A standard model: A1111's label, its file name and folder, where it comes from, its hash."""

    name: str
    filename: str
    folder: str  # under the models folder
    url: str
    sha256: str
    size: int | None  # bytes, for the list, where known (the hash is what is checked)
    kind: str  # "upscaler" or "face restorer"

    def path(self, models_dir: Path) -> Path:
        return models_dir / self.folder / self.filename


KNOWN_MODELS: tuple[KnownModel, ...] = (
    KnownModel("R-ESRGAN 4x+", "RealESRGAN_x4plus.pth", "RealESRGAN",
               "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth",
               "4fa0d38905f75ac06eb49a7951b426670021be3018265fd191d2125df9d682f1", 67_040_989, "upscaler"),
    KnownModel("R-ESRGAN 4x+ Anime6B", "RealESRGAN_x4plus_anime_6B.pth", "RealESRGAN",
               "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
               "f872d837d3c90ed2e05227bed711af5671a6fd1c9f7d7e91c911a61f155e99da", 17_938_799, "upscaler"),
    KnownModel("R-ESRGAN 2x+", "RealESRGAN_x2plus.pth", "RealESRGAN",
               "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.2.1/RealESRGAN_x2plus.pth",
               "49fafd45f8fd7aa8d31ab2a22d14d91b536c34494a5cfe31eb5d89c2fa266abb", None, "upscaler"),
    KnownModel("4x-UltraSharp", "4x-UltraSharp.pth", "ESRGAN",
               "https://huggingface.co/uwg/upscaler/resolve/main/ESRGAN/4x-UltraSharp.pth",
               "a5812231fc936b42af08a5edba784195495d303d5b3248c24489ef0c4021fe01", None, "upscaler"),
    KnownModel("GFPGAN v1.4", "GFPGANv1.4.pth", "GFPGAN",
               "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
               "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", None, "face restorer"),
    KnownModel("CodeFormer v0.1.0", "codeformer-v0.1.0.pth", "Codeformer",
               "https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth",
               "1009e537e0c2a07d4cabce6355f53cb66767cd4b4297ec7a4a64ca4b8a5684b7", None, "face restorer"),
)


def upscaler_aliases(known: Sequence[KnownModel] = KNOWN_MODELS) -> Mapping[str, str]:
    """File name (lower case) -> A1111's label, for the upscaler files among ``known``."""
    return {model.filename.lower(): model.name for model in known if model.kind == "upscaler"}


class ModelFetcher:
    """Downloads the known models into ``models_dir`` on request, one download per file at a time."""

    def __init__(self, models_dir: Path, known: Sequence[KnownModel] = KNOWN_MODELS) -> None:
        self.models_dir = models_dir
        self.known = tuple(known)
        self._locks: dict[str, threading.Lock] = {model.name: threading.Lock() for model in self.known}

    def find(self, name: str) -> KnownModel | None:
        wanted = name.strip().lower()
        return next((m for m in self.known if wanted in (m.name.lower(), m.filename.lower())), None)

    def require(self, name: str) -> KnownModel:
        found = self.find(name)
        if found is None:
            names = ", ".join(m.name for m in self.known)
            raise ValidationError([FieldError("name", f"{name!r} is not a model Atelier knows how to download; "
                                                      f"known: {names}")])
        return found

    def installed(self, model: KnownModel) -> bool:
        return model.path(self.models_dir).is_file()

    def download(self, name: str, on_progress: ProgressCallback | None = None) -> Path:
        """The model's file, downloaded first if it is not there yet (checked against its hash)."""
        model = self.require(name)
        target = model.path(self.models_dir)
        with self._locks[model.name]:
            if target.is_file():
                return target
            log.info("Downloading %s from %s into %s", model.name, model.url, target.parent)
            self._fetch(model, target, on_progress or _logging_progress(model.name))
            log.info("Downloaded %s (%s) to %s", model.name, model.sha256[:10], target)
            return target

    def _fetch(self, model: KnownModel, target: Path, on_progress: ProgressCallback) -> None:
        # Imported here: most runs never download anything.
        import httpx

        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        temp = Path(temp_name)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, httpx.stream("GET", model.url, follow_redirects=True,
                                                           timeout=TIMEOUT_SECONDS) as response:
                response.raise_for_status()
                total, done = int(response.headers.get("content-length") or 0), 0
                for chunk in response.iter_bytes(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    on_progress(done, total)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != model.sha256:
                raise DownloadError(f"{model.name}: the downloaded file's SHA-256 is {digest.hexdigest()}, not "
                                    f"{model.sha256}; it was discarded. Try again, or put {model.filename} "
                                    f"in {target.parent} yourself.")
            os.replace(temp, target)
        except httpx.HTTPError as exc:
            raise DownloadError(f"Downloading {model.name} from {model.url} failed ({type(exc).__name__}: {exc}). "
                                f"Put {model.filename} in {target.parent} yourself instead.") from exc
        finally:
            temp.unlink(missing_ok=True)


def _logging_progress(label: str) -> ProgressCallback:
    """Progress to the log, once per quarter of the file."""
    logged = {0}

    def report(done: int, total: int) -> None:
        quarter = 4 * done // total if total else 0
        if quarter not in logged:
            logged.add(quarter)
            log.info("Downloading %s: %d%% (%d of %d bytes)", label, 25 * quarter, done, total)

    return report
