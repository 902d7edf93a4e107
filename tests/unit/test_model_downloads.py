"""Standard models download only when asked, with progress, checked against their SHA-256, atomically;
and are then listed under A1111's labels."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modules.devtools.tiny_upscaler import write_tiny_upscaler
from modules.errors import DownloadError, ValidationError
from modules.services.model_downloads import KNOWN_MODELS, KnownModel, ModelFetcher, upscaler_aliases
from modules.services.upscaler_library import UpscalerLibrary


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, bytes]]:
    """A local web server with a tiny upscaler file at /RealESRGAN_x4plus.pth (and a 404 elsewhere)."""
    folder = tmp_path_factory.mktemp("served")
    data = write_tiny_upscaler(folder / "RealESRGAN_x4plus.pth", 4, seed=1).read_bytes()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", data
    server.shutdown()


def _known(base: str, data: bytes, sha256: str | None = None) -> tuple[KnownModel, ...]:
    return (KnownModel("R-ESRGAN 4x+", "RealESRGAN_x4plus.pth", "RealESRGAN", f"{base}/RealESRGAN_x4plus.pth",
                       sha256 or hashlib.sha256(data).hexdigest(), len(data), "upscaler"),
            KnownModel("Gone", "gone.pth", "ESRGAN", f"{base}/gone.pth", "0" * 64, None, "upscaler"))


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


def test_a_download_reports_progress_lands_atomically_and_is_listed_by_its_a1111_label(
        served: tuple[str, bytes], tmp_path: Path) -> None:
    base, data = served
    fetcher = ModelFetcher(tmp_path, _known(base, data))
    seen: list[tuple[int, int]] = []
    path = fetcher.download("r-esrgan 4x+", on_progress=lambda done, total: seen.append((done, total)))
    assert path == tmp_path / "RealESRGAN" / "RealESRGAN_x4plus.pth" and path.read_bytes() == data
    assert seen and seen[-1] == (len(data), len(data))
    assert [p.name for p in path.parent.iterdir()] == ["RealESRGAN_x4plus.pth"]  # no temporary file left
    library = UpscalerLibrary([tmp_path / "RealESRGAN"], aliases=upscaler_aliases(fetcher.known))
    assert library.names() == ["R-ESRGAN 4x+"] and library.scale_of(library.require("R-ESRGAN 4x+")) == 4
    assert fetcher.download("R-ESRGAN 4x+") == path  # already there: nothing fetched again


def test_a_wrong_checksum_leaves_nothing_and_says_so(served: tuple[str, bytes], tmp_path: Path) -> None:
    base, data = served
    fetcher = ModelFetcher(tmp_path, _known(base, data, sha256="f" * 64))
    with pytest.raises(DownloadError, match="SHA-256"):
        fetcher.download("R-ESRGAN 4x+")
    folder = tmp_path / "RealESRGAN"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_a_missing_file_and_an_unknown_name_are_refused(served: tuple[str, bytes], tmp_path: Path) -> None:
    base, data = served
    fetcher = ModelFetcher(tmp_path, _known(base, data))
    with pytest.raises(DownloadError, match="Gone"):
        fetcher.download("Gone")
    with pytest.raises(ValidationError, match="R-ESRGAN 4x\\+"):
        fetcher.download("../../etc/passwd")
    assert not (tmp_path / "ESRGAN" / "gone.pth").exists()


def test_the_known_models_are_pinned_and_go_where_a1111_keeps_them() -> None:
    for model in KNOWN_MODELS:
        assert len(model.sha256) == 64 and int(model.sha256, 16) >= 0
        assert model.url.startswith("https://") and "/" not in model.filename
        assert model.folder in ("ESRGAN", "RealESRGAN", "GFPGAN", "Codeformer")
    assert upscaler_aliases()["realesrgan_x4plus.pth"] == "R-ESRGAN 4x+"
