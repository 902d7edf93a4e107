"""Live previews as A1111 draws them: Approx cheap, TAESD (a tiny autoencoder fetched once, loaded
offline after) and Full (the model's own VAE), every N sampling steps, on tiny random models."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.devtools.tiny_taesd import write_tiny_taesd
from modules.engine.model_detect import ModelArch
from modules.engine.preview import latents_to_preview
from modules.engine.taesd import TaesdVariant, load_taesd, taesd_preview
from modules.errors import DownloadError
from modules.params import GenerationRequest, PreviewMethod
from modules.services.downloads import TaesdDownloader
from modules.services.job_types import JobContext
from modules.services.preview_decoders import PreviewDecoders
from modules.services.renderer import EncodingSink, Renderer

WIDTH, HEIGHT = 64, 96  # not square: a preview of the wrong shape shows


def blocky(image: Image.Image) -> bool:
    """Whether ``image`` is made of flat 8x8 blocks, as the Approx cheap preview is."""
    small = image.resize((image.width // 8, image.height // 8), Image.Resampling.NEAREST)
    return np.array_equal(np.asarray(small.resize(image.size, Image.Resampling.NEAREST)), np.asarray(image))


def colours(image: Image.Image) -> int:
    return len(np.unique(np.asarray(image).reshape(-1, 3), axis=0))


class WatchedContext(JobContext):
    """A job's context with a page watching it: the preview is asked for after every step."""

    def __init__(self) -> None:
        super().__init__("watched")
        self.seen: list[tuple[int, Image.Image | None]] = []

    def on_step(self, step: int, total: int, latents: object, render: Callable[[object], Image.Image]) -> None:
        super().on_step(step, total, latents, render)
        self.seen.append((step, self.preview()))


@dataclass
class Rendered:
    context: WatchedContext
    images: list[Image.Image] = field(default_factory=list)


@pytest.fixture(scope="module")
def taesd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("VAE-taesd")
    write_tiny_taesd(root, TaesdVariant.SD)
    return root


@pytest.fixture(scope="module")
def prepared(services) -> Iterator[Callable[..., GenerationRequest]]:
    services.generation.switch_model("tiny-sd15.safetensors").future.result(timeout=120)

    def make(**fields: object) -> GenerationRequest:
        base = GenerationRequest(prompt="a red cube", steps=4, width=WIDTH, height=HEIGHT, seed=11, sampler="Euler",
                                 save_images=False)
        return services.generation.prepare(GenerationRequest(**{**base.__dict__, **fields}))

    yield make


def render(services, previews: PreviewDecoders, request: GenerationRequest) -> Rendered:
    """Run ``request`` on this thread with a watched context; the images it made."""
    context, sink = WatchedContext(), EncodingSink()
    Renderer(services.models, services.addons, previews).render(request, context, sink)
    images = [Image.open(io.BytesIO(image.png)).convert("RGB") for image in sink.images]
    return Rendered(context, images)


# --- the engine: a tiny autoencoder from the random factory -------------------------------------


def test_taesd_preview_from_the_factory_is_rgb_at_latent_size_times_8_and_shows_the_latents(taesd_root: Path) -> None:
    decoder = load_taesd(TaesdVariant.SD.folder(taesd_root), torch.device("cpu"), torch.float32)
    latents = torch.randn(2, 4, HEIGHT // 8, WIDTH // 8, generator=torch.Generator().manual_seed(3))
    image = taesd_preview(decoder, latents)
    assert image.mode == "RGB" and image.size == (WIDTH, HEIGHT)
    assert colours(image) > 50 and not blocky(image)
    other = taesd_preview(decoder, latents, index=1)
    assert not np.array_equal(np.asarray(image), np.asarray(other))  # each image of a batch is its own


# --- every N steps ---------------------------------------------------------------------------------


def test_no_preview_before_step_n_then_one_every_n_steps_and_at_the_last(services, prepared) -> None:
    done = render(services, PreviewDecoders(None), prepared(steps=7, preview_every=3))
    shown = {step: image for step, image in done.context.seen}
    assert shown[1] is None and shown[2] is None  # nothing to see before step 3
    assert shown[3] is not None and shown[4] is shown[3] and shown[5] is shown[3]  # unchanged until step 6
    assert shown[6] is not shown[3] and shown[7] is not shown[6]  # step 6, and the last step
    assert shown[7].size == (WIDTH, HEIGHT)  # type: ignore[union-attr]


def test_minus_one_means_no_live_preview_at_all(services, prepared) -> None:
    done = render(services, PreviewDecoders(None), prepared(steps=4, preview_every=-1))
    assert [image for _, image in done.context.seen] == [None] * 4
    assert done.context.preview() is None and len(done.images) == 1  # the job itself ran


def test_the_servers_default_previews_every_10_steps(services, prepared) -> None:
    done = render(services, PreviewDecoders(None), prepared(steps=12))
    assert [step for step, image in done.context.seen if image is not None][:1] == [10]


# --- the three methods through the renderer -------------------------------------------------------


def test_approx_cheap_preview_is_blocks_of_8(services, prepared) -> None:
    done = render(services, PreviewDecoders(None), prepared(preview_every=1, preview_method=PreviewMethod.APPROX_CHEAP))
    preview = done.context.seen[-1][1]
    assert preview is not None and preview.size == (WIDTH, HEIGHT) and blocky(preview)


def test_taesd_preview_has_detail_in_every_pixel(services, prepared, taesd_root: Path) -> None:
    done = render(services, PreviewDecoders(taesd_root), prepared(preview_every=1, preview_method=PreviewMethod.TAESD))
    preview = done.context.seen[0][1]
    assert preview is not None and preview.size == (WIDTH, HEIGHT)
    assert not blocky(preview) and colours(preview) > 50


def test_full_preview_is_the_size_of_the_decoded_image_and_close_to_it_at_the_last_step(services, prepared) -> None:
    vae = services.models.loaded_model().pipeline.vae
    dtype, tiling = vae.dtype, vae.use_tiling
    done = render(services, PreviewDecoders(None), prepared(preview_every=1, preview_method=PreviewMethod.FULL))
    preview, final = done.context.seen[-1][1], done.images[0]
    assert preview is not None and preview.size == final.size == (WIDTH, HEIGHT) and not blocky(preview)
    difference = np.abs(np.asarray(preview, dtype=np.int16) - np.asarray(final, dtype=np.int16))
    assert difference.max() <= 1  # the last step's denoised latents are the image, through the same VAE
    assert (vae.dtype, vae.use_tiling) == (dtype, tiling)  # the preview left the VAE as it was


# --- TAESD fetched on first use: in the background, once, never breaking the job -------------------


def _wait(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_failed_fetch_falls_back_to_approx_cheap_and_says_why_once(services, prepared, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    calls: list[TaesdVariant] = []

    def offline(variant: TaesdVariant) -> Path:
        calls.append(variant)
        raise DownloadError("Cannot download config.json: this machine is offline or the hub is unreachable.")

    previews = PreviewDecoders(tmp_path / "VAE-taesd", fetch=offline)
    request = prepared(preview_every=1, preview_method=PreviewMethod.TAESD)
    with caplog.at_level(logging.WARNING, logger="modules.services.preview_decoders"):
        first = render(services, previews, request)
        _wait(lambda: any("offline" in r.getMessage() for r in caplog.records))
        second = render(services, previews, request)
    assert len(first.images) == len(second.images) == 1  # the jobs ran
    assert all(image is not None and blocky(image) for _, image in first.context.seen + second.context.seen)
    notes = [r.getMessage() for r in caplog.records if "TAESD live preview is not available" in r.getMessage()]
    assert len(notes) == 1 and "offline" in notes[0] and "Approx cheap" in notes[0]
    assert calls == [TaesdVariant.SD]  # tried once, not at every step


def test_a_fetched_taesd_is_used_from_then_on(services, prepared, tmp_path: Path) -> None:
    root = tmp_path / "VAE-taesd"
    fetched = threading.Event()

    def fetch(variant: TaesdVariant) -> Path:
        folder = write_tiny_taesd(root, variant)
        fetched.set()
        return folder

    previews = PreviewDecoders(root, fetch=fetch)
    request = prepared(preview_every=1, preview_method=PreviewMethod.TAESD)
    render(services, previews, request)
    assert fetched.wait(30)
    later = render(services, previews, request)
    assert all(image is not None and not blocky(image) for _, image in later.context.seen)


def test_the_hub_download_offline_is_a_download_error_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="offline") as raised:
        TaesdDownloader(tmp_path).download(TaesdVariant.SDXL)  # the tests run with HF_HUB_OFFLINE=1
    assert str(tmp_path / "taesdxl") in str(raised.value)


def test_sdxl_models_use_taesdxl_and_sd2_the_sd_one() -> None:
    assert TaesdVariant.for_arch(ModelArch.SDXL) is TaesdVariant.for_arch(ModelArch.SDXL_REFINER) is TaesdVariant.SDXL
    assert TaesdVariant.for_arch(ModelArch.SD2_V) is TaesdVariant.for_arch(ModelArch.SD1) is TaesdVariant.SD


def test_cheap_preview_is_blocks_of_8_at_latent_size_times_8() -> None:
    latents = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(1))
    image = latents_to_preview(latents, ModelArch.SD1)
    assert image.size == (96, 64) and blocky(image) and colours(image) > 1
