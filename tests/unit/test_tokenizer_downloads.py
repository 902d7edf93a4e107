"""Tokenizer downloads against a fake hub: progress, checksums, nothing left behind on failure."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from modules.engine.tokenizer_files import (
    TOKENIZERS,
    find_tokenizer,
    missing_tokenizer,
    require_tokenizer,
    tokenizer_source,
)
from modules.errors import DownloadError, MissingComponentError, ValidationError
from modules.services.tokenizer_downloads import TokenizerFetcher


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    """Serves each file of the T5 tokenizer; LFS-style (SHA-256) for tokenizer.json, git blob SHA-1 otherwise."""

    def __init__(self, corrupt: str | None = None) -> None:
        source = tokenizer_source("t5xxl")
        self.files = {name: f'{{"file": "{name}", "pad": "{"x" * 50}"}}'.encode() for name in source.files}
        self.corrupt = corrupt
        self.downloads: list[str] = []

    def url(self, repo_id: str, filename: str, subfolder: str | None = None) -> str:
        return f"fake://{repo_id}/{subfolder}/{filename}"

    def metadata(self, url: str) -> SimpleNamespace:
        data = self.files[url.rsplit("/", 1)[1]]
        digest = hashlib.sha256(data).hexdigest() if url.endswith("tokenizer.json") else _git_sha1(data)
        return SimpleNamespace(etag=digest, size=len(data))

    def download(self, repo_id: str, filename: str, subfolder: str | None = None, local_dir: str = "") -> str:
        self.downloads.append(filename)
        path = Path(local_dir) / (subfolder or "") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.files[filename]
        path.write_bytes(data[:-3] + b"bad" if filename == self.corrupt else data)
        return str(path)


def _install(monkeypatch: pytest.MonkeyPatch, hub: FakeHub) -> None:
    monkeypatch.setattr(huggingface_hub, "hf_hub_url", hub.url)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", hub.metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub.download)


def test_download_reports_progress_and_lands_whole(monkeypatch, tmp_path):
    hub = FakeHub()
    _install(monkeypatch, hub)
    assert find_tokenizer("t5xxl", tmp_path) is None
    progress: list[tuple[int, int]] = []
    folder = TokenizerFetcher(tmp_path).download("tokenizer:t5xxl", lambda done, total: progress.append((done, total)))
    assert folder == tmp_path / tokenizer_source("t5xxl").folder_name
    assert find_tokenizer("t5xxl", tmp_path) == folder
    for name, data in hub.files.items():
        assert (folder / name).read_bytes() == data
    total = sum(len(d) for d in hub.files.values())
    assert progress[0] == (0, total) and progress[-1] == (total, total)
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folders left
    # A second request finds the copy and downloads nothing.
    hub.downloads.clear()
    assert TokenizerFetcher(tmp_path).download("t5xxl") == folder
    assert hub.downloads == []


@pytest.mark.parametrize("corrupt", ["tokenizer.json", "tokenizer_config.json"])
def test_a_corrupted_file_is_refused_and_nothing_is_left(monkeypatch, tmp_path, corrupt):
    _install(monkeypatch, FakeHub(corrupt=corrupt))
    with pytest.raises(DownloadError, match=corrupt):
        TokenizerFetcher(tmp_path).download("tokenizer:t5xxl")
    assert list(tmp_path.iterdir()) == []
    assert find_tokenizer("t5xxl", tmp_path) is None


def test_an_unreachable_hub_is_a_download_error_saying_what_to_do(monkeypatch, tmp_path):
    hub = FakeHub()
    _install(monkeypatch, hub)

    def offline(url: str) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    with pytest.raises(DownloadError, match="t5-v1_1-xxl"):
        TokenizerFetcher(tmp_path).download("tokenizer:t5xxl")
    assert list(tmp_path.iterdir()) == []


def test_unknown_component_is_a_validation_error(tmp_path):
    with pytest.raises(ValidationError, match="tokenizer:t5xxl"):
        TokenizerFetcher(tmp_path).download("tokenizer:nonesuch")


def test_missing_tokenizer_error_names_file_folder_and_offer(tmp_path):
    checkpoint = tmp_path / "flux1-dev.safetensors"
    with pytest.raises(MissingComponentError) as caught:
        require_tokenizer(checkpoint, "qwen3", tmp_path / "tokenizers")
    error = caught.value
    assert error.component == "tokenizer:qwen3"
    assert "tokenizer.json" in str(error) and str(tmp_path / "tokenizers" / "Qwen3") in str(error)
    assert error.url and "Qwen" in error.url and "flux1-dev.safetensors" in str(error)
    assert missing_tokenizer(checkpoint, "t5xxl", None).folder.endswith("t5-v1_1-xxl")


def test_every_table_entry_is_fetchable_by_name(tmp_path):
    fetcher = TokenizerFetcher(tmp_path)
    for source in TOKENIZERS:
        assert fetcher.require(f"tokenizer:{source.name}") is source
        assert "tokenizer.json" in source.files
