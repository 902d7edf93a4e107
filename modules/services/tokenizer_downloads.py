"""Downloading the T5 / LLM tokenizers of the flow families on first use, checked and atomic.

A checkpoint that needs a tokenizer nobody has downloaded yet fails to load with a
:class:`~modules.errors.MissingComponentError` whose ``component`` is ``tokenizer:<name>``; the UI
and ``POST /sdapi/v1/download-component`` (``{"component": "tokenizer:t5xxl"}``) answer it with
:meth:`TokenizerFetcher.download`. Each file is fetched from the model's own repository with
``huggingface_hub`` into a temporary folder, checked against the hash the hub publishes for it
(LFS files: SHA-256; plain git files: the git blob SHA-1), and the finished set is renamed into the
tokenizers folder in one step: a failed or corrupted download leaves nothing there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from modules.engine.tokenizer_files import TOKENIZERS, TokenizerSource, find_tokenizer
from modules.errors import DownloadError, FieldError, ValidationError
from modules.services.model_downloads import ProgressCallback

log = logging.getLogger(__name__)

COMPONENT_PREFIX = "tokenizer:"


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub describes it: where it is in the repository, its size and its hash."""

    filename: str  # inside the repository (sub-folder included)
    size: int
    digest: str  # hex: SHA-256 for LFS files, git blob SHA-1 for the others

    def matches(self, path: Path) -> bool:
        data_hash = hashlib.sha256() if len(self.digest) == 64 else hashlib.sha1()
        if len(self.digest) != 64:  # git's blob hash: a header, then the bytes
            data_hash.update(f"blob {path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1024 * 1024), b""):
                data_hash.update(chunk)
        return data_hash.hexdigest() == self.digest.lower()


def _remote_file(source: TokenizerSource, filename: str) -> RemoteFile:
    # Imported here: most runs never download anything, and the UI must not pay for the import.
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(source.repo_id, filename, subfolder=source.subfolder or None)
    meta = get_hf_file_metadata(url)
    if not meta.etag:
        raise DownloadError(f"The hub published no hash for {source.repo_id}/{filename}; not downloading it.")
    path = f"{source.subfolder}/{filename}" if source.subfolder else filename
    return RemoteFile(path, int(meta.size or 0), meta.etag.strip('"'))


def _fetch_file(source: TokenizerSource, filename: str, into: Path) -> Path:
    from huggingface_hub import hf_hub_download

    downloaded = hf_hub_download(source.repo_id, filename, subfolder=source.subfolder or None, local_dir=str(into))
    return Path(downloaded)


def component_name(component: str) -> str:
    """``tokenizer:t5xxl`` -> ``t5xxl`` (what a MissingComponentError names)."""
    return component[len(COMPONENT_PREFIX):] if component.startswith(COMPONENT_PREFIX) else component


class TokenizerFetcher:
    """Downloads the flow families' tokenizers into ``folder`` on request, one download per tokenizer at a time."""

    def __init__(self, folder: Path, sources: tuple[TokenizerSource, ...] = TOKENIZERS) -> None:
        self.folder = folder
        self.sources = sources
        self._locks = {source.name: threading.Lock() for source in sources}

    def require(self, component: str) -> TokenizerSource:
        name = component_name(component.strip())
        for source in self.sources:
            if source.name == name:
                return source
        known = ", ".join(COMPONENT_PREFIX + s.name for s in self.sources)
        raise ValidationError([FieldError("component", f"{component!r} is not a component Atelier can "
                                                       f"download; known: {known}")])

    def installed(self, component: str) -> Path | None:
        source = self.require(component)
        return find_tokenizer(source.name, self.folder)

    def download(self, component: str, on_progress: ProgressCallback | None = None) -> Path:
        """The tokenizer's folder, downloaded first if there is no copy yet."""
        source = self.require(component)
        with self._locks[source.name]:
            found = find_tokenizer(source.name, self.folder)
            if found is not None:
                return found
            log.info("Downloading the %s tokenizer from %s into %s", source.name, source.url(), self.folder)
            target = self._fetch(source, on_progress or (lambda done, total: None))
            log.info("Downloaded the %s tokenizer to %s", source.name, target)
            return target

    def _fetch(self, source: TokenizerSource, on_progress: ProgressCallback) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        # The temporary folder sits beside the target: the final rename stays on one file system.
        staging = Path(tempfile.mkdtemp(prefix=f".{source.folder_name}.", suffix=".part", dir=self.folder))
        try:
            remotes = [self._describe(source, name) for name in source.files]
            total, done = sum(r.size for r in remotes), 0
            on_progress(0, total)
            for remote in remotes:
                path = self._download_one(source, remote, staging)
                final = staging / Path(remote.filename).name
                if path != final:
                    os.replace(path, final)
                done += remote.size
                on_progress(done, total)
            for leftover in [p for p in staging.iterdir() if p.is_dir()]:  # hub cache folders
                shutil.rmtree(leftover, ignore_errors=True)
            target = self.folder / source.folder_name
            if target.exists():  # an incomplete copy (find_tokenizer said unusable): replaced whole
                shutil.rmtree(target)
            os.replace(staging, target)
            return target
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _describe(source: TokenizerSource, filename: str) -> RemoteFile:
        try:
            return _remote_file(source, filename)
        except DownloadError:
            raise
        except Exception as exc:  # huggingface_hub raises many kinds (offline, 404, gated, HTTP)
            raise DownloadError(f"Cannot reach {source.url()} for {filename} ({type(exc).__name__}: {exc}). "
                                f"Put the files {', '.join(source.files)} in a folder {source.folder_name} "
                                "inside the tokenizers folder yourself instead.") from exc

    @staticmethod
    def _download_one(source: TokenizerSource, remote: RemoteFile, staging: Path) -> Path:
        filename = Path(remote.filename).name
        try:
            path = _fetch_file(source, filename, staging)
        except Exception as exc:  # network, disk full, hub errors
            raise DownloadError(f"Downloading {filename} from {source.url()} failed "
                                f"({type(exc).__name__}: {exc}).") from exc
        if not remote.matches(path):
            raise DownloadError(f"{source.repo_id}/{remote.filename}: the downloaded file does not match the "
                                "hash the hub publishes for it; it was discarded. Try again.")
        return path
