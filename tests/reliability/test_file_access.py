"""Category 2, files: no client-supplied name or path reaches a file outside the folders meant for it.

Files the server hands out: the images under outputs/ (and the gallery's thumbnails), which the UI
gets from Gradio's file route because ``gr.set_static_paths`` allows exactly those two folders, and
Gradio's own assets. Everything else a client names is looked up in a list, never joined to a path:
checkpoints, LoRAs, VAEs and styles by name, png-info takes base64 only, and output file names are
made from a running number and a validated integer seed.

The outputs folder cannot be moved by a client: it is ``<data dir>/outputs``; only the
``--data-dir`` flag, given by whoever starts the server, changes it. config.yaml has no key for it
(unknown keys are refused) and the API's options ignore A1111's ``outdir_*`` keys.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules.config import Settings, load_settings
from modules.errors import ConfigError, GalleryPathError
from modules.paths import PROJECT_ROOT, resolve_paths
from modules.services.gallery import Gallery
from tests.reliability.support import (
    API,
    WORKER_LINE,
    b64,
    log_since,
    log_size,
    png_bytes,
    raw_get,
    wait_for_model,
)
from tests.server_process import Server, start_server, stop_server

CATEGORY = "2 files"
SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 1}
DAY = "2000-01-01"
SECRET = f"atelier-secret-{uuid.uuid4().hex}"  # the content of files that must never be served
PNG_SECRET = f"atelier-png-secret-{uuid.uuid4().hex}"  # the parameters of a real image inside outputs
# Content of files outside the served folders that a leak would show.
LEAKS = (SECRET.encode(), PNG_SECRET.encode(), b"root:x:0:0", b"def _build_app(", b"HF_HUB_OFFLINE=1")


@dataclass(frozen=True)
class Planted:
    """A data dir with files a traversal would aim at, and links inside outputs that lead out."""

    data: Path
    outputs: Path
    outside: Path  # a folder beside the data dir
    real_image: Path  # a genuine image inside outputs (the positive control)


def plant(root: Path, model_file: Path) -> Planted:
    data, outside = root / "data", root / "outside"
    day = data / "outputs" / "txt2img-images" / DAY
    day.mkdir(parents=True)
    outside.mkdir()
    (data / "secret.txt").write_text(SECRET)
    (data / "secret.png").write_text(SECRET)
    (outside / "secret.png").write_text(SECRET)
    (outside / "secret.txt").write_text(SECRET)
    shutil.copy(model_file, outside / "stray-model.safetensors")  # loadable, if a path were accepted
    (data / "models").mkdir()
    (data / "models" / "stray-lora.safetensors").write_text(SECRET)  # beside models/Lora, not in it
    real = day / "real.png"
    real.write_bytes(png_bytes(parameters=f"{PNG_SECRET}\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64"))
    (day / "leak.png").symlink_to(data / "secret.png")  # a link inside outputs to a file outside
    (day / "up.png").symlink_to(Path("..") / ".." / ".." / "secret.png")  # the same, relative
    (data / "outputs" / "linked").symlink_to(outside, target_is_directory=True)  # a folder link
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nsafe,{prompt} in a safe style,\n")
    return Planted(data=data, outputs=data / "outputs", outside=outside, real_image=real)


@dataclass(frozen=True)
class Running:
    server: Server
    planted: Planted


@pytest.fixture(scope="module")
def running(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    planted = plant(tmp_path_factory.mktemp("files"), tiny_models.sd15_other)
    proc, srv = start_server(planted.data, tiny_models.folder, "--api", "--ckpt", "tiny-sd15.safetensors",
                             ready_path=f"{API}/options")
    with httpx.Client(base_url=srv.url, timeout=120) as client:
        wait_for_model(client)
    yield Running(srv, planted)
    stop_server(proc)


@pytest.fixture
def client(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.server.url, timeout=120) as c:
        yield c


def assert_no_leak(body: bytes) -> None:
    for leak in LEAKS:
        assert leak not in body, f"served content of a file outside the allowed folders ({leak[:20]!r})"


# --- the file-serving routes: a traversal matrix ---------------------------------------------------

# Routes that take a file path: Gradio's file route (the UI's images), its older spellings, and the
# asset folders of the Gradio front end.
FILE_ROUTES = ("/gradio_api/file=", "/gradio_api/file/", "/file=")
ASSET_ROUTES = ("/static/", "/assets/", "/svelte/", "/gradio_api/custom_component/x/client/y/")
# {data}, {outputs} and {root} (the project folder) are filled in when the server's folders are known.
TARGETS = (
    "{data}/secret.txt",
    "{outputs}/../secret.txt",
    "{outputs}/%2e%2e/secret.txt",
    "{outputs}/%2E%2E/secret.txt",
    "{outputs}/..%2fsecret.txt",
    "{outputs}/%2e%2e%2fsecret.txt",
    "{outputs}/%252e%252e/secret.txt",
    "{outputs}/%252e%252e%252fsecret.txt",
    "{outputs}\\..\\secret.txt",
    "{outputs}/..\\secret.txt",
    "{outputs}/../secret.txt%00.png",
    "{outputs}/txt2img-images/" + DAY + "/real.png%00/../../../../secret.txt",
    "{outputs}/txt2img-images/" + DAY + "/leak.png",
    "{outputs}/txt2img-images/" + DAY + "/up.png",
    "{outputs}/linked/secret.png",
    "{outputs}/linked/secret.txt",
    "{OUTPUTS}/../secret.txt",
    "{data}/SECRET.TXT",
    "{data}/cache/hashes.json",
    "{data}/cache/thumbnails/../hashes.json",
    "/etc/passwd",
    "/ETC/PASSWD",
    "//etc/passwd",
    "/etc/./passwd",
    "../../../../../../../../etc/passwd",
    "%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "..%2f..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "%252e%252e%252f%252e%252e%252f%252e%252e%252fetc%252fpasswd",
    "..\\..\\..\\..\\..\\..\\..\\..\\etc\\passwd",
    "....//....//....//....//etc/passwd",
    "file:///etc/passwd",
    "/proc/self/environ",
    "app.py",
    "modules/../app.py",
    "{root}/app.py",
    "{root}/modules/../app.py",
)
MATRIX = [(route, target) for route in FILE_ROUTES + ASSET_ROUTES for target in TARGETS]


def fill(target: str, planted: Planted) -> str:
    outputs = str(planted.outputs)
    return (target.replace("{OUTPUTS}", outputs.replace("outputs", "OUTPUTS")).replace("{outputs}", outputs)
            .replace("{data}", str(planted.data)).replace("{root}", str(PROJECT_ROOT)))


@pytest.mark.parametrize(("route", "target"), MATRIX, ids=[f"{r}{t}" for r, t in MATRIX])
def test_no_route_serves_a_file_outside_outputs(running: Running, route: str, target: str) -> None:
    status, body = raw_get(running.server, route + fill(target, running.planted))
    assert status in (400, 403, 404), (status, body[:200])
    assert_no_leak(body)


def test_images_inside_outputs_are_served(client: httpx.Client, running: Running) -> None:
    """The positive control: the same route does serve what it should, so the refusals above mean something."""
    status, body = raw_get(running.server, f"/gradio_api/file={running.planted.real_image}")
    assert status == 200 and body == running.planted.real_image.read_bytes()
    made = client.post(f"{API}/txt2img", json={**SMALL, "seed": 31, "save_images": True})
    assert made.status_code == 200, made.text[:300]
    saved = next(running.planted.outputs.glob("txt2img-images/*/*-31.png"))
    status, body = raw_get(running.server, f"/gradio_api/file={saved}")
    assert status == 200 and body == saved.read_bytes()


# --- names the API looks up: checkpoints, LoRAs, VAEs, styles, png-info -------------------------

CHECKPOINT_NAMES = ("../../etc/passwd", "/etc/passwd", "..\\..\\etc\\passwd", "tiny-sd15.safetensors/../../../etc/passwd",
                    "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "{data}/secret.txt", "{outside}/stray-model.safetensors",
                    "../outside/stray-model.safetensors", "../../outside/stray-model.safetensors",
                    "TINY-SD15.SAFETENSORS/..", "tiny-sd15.safetensors\x00.txt")


def _named(name: str, planted: Planted) -> str:
    return name.replace("{data}", str(planted.data)).replace("{outside}", str(planted.outside))


@pytest.mark.parametrize("name", CHECKPOINT_NAMES)
def test_checkpoint_names_are_looked_up_never_opened(client: httpx.Client, running: Running, name: str) -> None:
    wanted = _named(name, running.planted)
    before = client.get(f"{API}/options").json()["sd_model_checkpoint"]
    offset = log_size(running.server)
    switched = client.post(f"{API}/options", json={"sd_model_checkpoint": wanted})
    assert switched.status_code == 404, switched.text[:300]
    per_job = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": wanted}})
    assert per_job.status_code == 404, per_job.text[:300]
    refiner = client.post(f"{API}/txt2img", json={**SMALL, "refiner_checkpoint": wanted})
    assert refiner.status_code == 422 and refiner.json()["detail"][0]["loc"] == ["body", "refiner_checkpoint"]
    for reply in (switched, per_job, refiner):
        assert_no_leak(reply.content)
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] == before
    assert not WORKER_LINE.search(log_since(running.server, offset)), "a checkpoint load or job was started"


LORA_TAGS = ("<lora:../../x:1>", "<lora:/etc/passwd:1>", "<lora:..\\x:1>", "<lyco:../x:1>", "<lora:../stray-lora:1>",
             "<lora:{data}/models/stray-lora:1>", "<lora:%2e%2e%2fstray-lora:0.5>", "<lora:../stray-lora:te=1:unet=1>")


@pytest.mark.parametrize("tag", LORA_TAGS)
def test_lora_names_in_prompts_are_422(client: httpx.Client, running: Running, tag: str) -> None:
    tag = _named(tag, running.planted)
    offset = log_size(running.server)
    for body in ({**SMALL, "prompt": f"a cube {tag}"}, {**SMALL, "negative_prompt": tag},
                 {**SMALL, "enable_hr": True, "hr_prompt": tag}):
        reply = client.post(f"{API}/txt2img", json=body)
        assert reply.status_code == 422, reply.text[:300]
        assert "not found" in reply.json()["detail"][0]["msg"]
        assert_no_leak(reply.content)
    assert not WORKER_LINE.search(log_since(running.server, offset))


def test_an_unknown_lora_in_the_negative_prompt_is_named_there(client: httpx.Client) -> None:
    reply = client.post(f"{API}/txt2img", json={**SMALL, "negative_prompt": "<lora:../../x:1>"})
    assert reply.status_code == 422
    assert [d["loc"] for d in reply.json()["detail"]] == [["body", "negative_prompt"]]


VAE_NAMES = ("../x", "../../etc/passwd", "/etc/passwd", "..\\x", "{outside}/secret.txt", "{data}/secret.txt",
             "%2e%2e%2fx", "Automatic/../../x")


@pytest.mark.parametrize("name", VAE_NAMES)
def test_vae_names_are_422(client: httpx.Client, running: Running, name: str) -> None:
    name = _named(name, running.planted)
    offset = log_size(running.server)
    per_job = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"sd_vae": name}})
    server_wide = client.post(f"{API}/options", json={"sd_vae": name})
    for reply in (per_job, server_wide):
        assert reply.status_code == 422, reply.text[:300]
        assert reply.json()["detail"][0]["loc"] == ["body", "sd_vae"]
        assert_no_leak(reply.content)
    assert client.get(f"{API}/options").json()["sd_vae"] == "Automatic"
    assert not WORKER_LINE.search(log_since(running.server, offset))


def test_style_names_are_only_looked_up(client: httpx.Client, running: Running) -> None:
    names = ["../../etc/passwd", "/etc/passwd", str(running.planted.data / "secret.txt"), "..\\styles.csv",
             "../styles.csv", "safe/../safe"]
    reply = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cube", "styles": names})
    assert reply.status_code == 200, reply.text[:300]
    assert_no_leak(reply.content)
    assert json.loads(reply.json()["info"])["all_prompts"] == ["a cube"]  # no name matched: nothing applied
    styled = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cube", "styles": ["safe"]})
    assert json.loads(styled.json()["info"])["all_prompts"] == ["a cube in a safe style"]  # the control


def test_png_info_takes_base64_never_a_path(client: httpx.Client, running: Running) -> None:
    real = running.planted.real_image
    for image in (str(real), f"file://{real}", "/etc/passwd", str(running.planted.data / "secret.txt"),
                  "data:image/png;base64," + str(real), b64(str(real).encode())):
        reply = client.post(f"{API}/png-info", json={"image": image})
        assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "image"], reply.text[:300]
        assert_no_leak(reply.content)
    control = client.post(f"{API}/png-info", json={"image": b64(real.read_bytes())})
    assert PNG_SECRET in control.json()["info"]  # the same image sent as base64 is read


# --- output file names -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["../../x", "1/../../x", "1\\..\\x", "1%2f..", "..", "-2", "1e400", "0x10"])
def test_seeds_cannot_carry_path_parts(client: httpx.Client, seed: str) -> None:
    reply = client.post(f"{API}/txt2img", json={**SMALL, "seed": seed, "save_images": True})
    assert reply.status_code == 422 and reply.json()["detail"][0]["loc"] == ["body", "seed"], reply.text[:300]


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def test_saved_names_are_number_and_seed_only(client: httpx.Client, running: Running) -> None:
    data = running.planted.data
    watched = {p for p in _files_under(data) if "cache" not in p.relative_to(data).parts and p.name != "server.log"}
    reply = client.post(f"{API}/txt2img", json={**SMALL, "seed": 4294967295, "save_images": True,
                                                "prompt": "../../../../../../tmp/evil/../../x\\..\\y"})
    assert reply.status_code == 200, reply.text[:300]
    after = {p for p in _files_under(data) if "cache" not in p.relative_to(data).parts and p.name != "server.log"}
    (new,) = after - watched
    assert new.parent.parent == running.planted.outputs / "txt2img-images"
    assert re.fullmatch(r"\d{5}-4294967295\.png", new.name), new.name


# --- the outputs folder cannot be moved --------------------------------------------------------


def test_outputs_dir_is_fixed_under_the_data_dir(tmp_path: Path) -> None:
    # Every folder flag pointed at code, extension and model folders: outputs stays <data>/outputs.
    code = PROJECT_ROOT / "modules"
    paths = resolve_paths(tmp_path, models_dir=PROJECT_ROOT / "models", ckpt_dir=code,
                          lora_dir=PROJECT_ROOT / "extensions", embeddings_dir=code, vae_dir=code)
    assert paths.outputs_dir == tmp_path.resolve() / "outputs"
    assert resolve_paths().outputs_dir == PROJECT_ROOT / "outputs"  # no --data-dir: the project's outputs/
    # No setting holds a path; A1111's outdir_* options are text that may only name folders under
    # outputs/ (or log/) of the data dir, and config.yaml refuses one pointing elsewhere, by name.
    assert not [f.name for f in fields(Settings) if "Path" in str(f.type)]
    assert not [f.name for f in fields(Settings) if re.search(r"dir|folder|output", f.name)
                and not f.name.startswith("outdir_") and str(f.type) != "bool" and not f.name.endswith("_pattern")]
    for key in ("outdir_samples", "outdir_txt2img_samples", "outputs_dir"):
        config = tmp_path / f"{key}.yaml"
        config.write_text(f"{key}: {PROJECT_ROOT / 'modules'}\n")
        with pytest.raises(ConfigError, match=key):
            load_settings(config)


def test_flags_have_no_outputs_dir(capsys: pytest.CaptureFixture[str]) -> None:
    from modules.cmd_args import parse_flags

    for flag in ("--outdir-samples", "--outputs-dir", "--outdir"):
        with pytest.raises(SystemExit):
            parse_flags([flag, str(PROJECT_ROOT / "modules")], {})
    capsys.readouterr()


def test_api_options_cannot_move_outputs(client: httpx.Client, running: Running) -> None:
    code = str(PROJECT_ROOT / "modules")
    keys = {"outdir_samples": code, "outdir_txt2img_samples": code, "outdir_grids": code}
    refused = client.post(f"{API}/options", json=keys)  # A1111's keys, pointing outside outputs/: refused by name
    assert refused.status_code == 422 and all(key in refused.text for key in keys)
    assert not {k: v for k, v in client.get(f"{API}/options").json().items() if k in keys and v == code}
    reply = client.post(f"{API}/txt2img", json={**SMALL, "seed": 777, "save_images": True})
    assert reply.status_code == 200
    assert list(running.planted.outputs.glob("txt2img-images/*/*-777.png"))
    assert not list(Path(code).rglob("*-777.png"))


# --- the gallery's path resolution, the only way from a client's path to an image --------------


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gallery]:
    root = tmp_path_factory.mktemp("gallery")
    planted = plant(root, _any_file(root))
    service = Gallery(planted.outputs, root / "gallery-cache")
    yield service
    service.close()


def _any_file(root: Path) -> Path:
    path = root / "not-a-model.safetensors"
    path.write_bytes(b"x")
    return path


ESCAPES = ("../secret.png", "../secret.txt", "txt2img-images/../../secret.png", "/etc/passwd",
           f"{DAY}/../../../secret.png", "..\\secret.png", "txt2img-images\\..\\..\\secret.png",
           f"txt2img-images/{DAY}/leak.png", f"txt2img-images/{DAY}/up.png", "linked/secret.png",
           "%2e%2e/secret.png", f"txt2img-images/{DAY}/real.png\x00", "x\x00/../../secret.png",
           f"TXT2IMG-IMAGES/{DAY}/REAL.PNG", "", "   ", f"txt2img-images/{DAY}", f"txt2img-images/{DAY}/real.txt",
           "a" * 300 + ".png", "/" + "a" * 5000 + ".png")


@pytest.mark.parametrize("relative", ESCAPES, ids=[repr(e)[:40] for e in ESCAPES])
def test_gallery_refuses_paths_that_leave_outputs(gallery: Gallery, relative: str) -> None:
    with pytest.raises(GalleryPathError):
        gallery.resolve(relative)
    with pytest.raises(GalleryPathError):
        gallery.delete(relative)
    assert (gallery.outputs_dir.parent / "secret.png").read_text() == SECRET  # nothing was deleted


def test_gallery_resolves_images_inside_outputs(gallery: Gallery) -> None:
    expected = gallery.outputs_dir / "txt2img-images" / DAY / "real.png"
    assert gallery.resolve(f"txt2img-images/{DAY}/real.png") == expected
    assert gallery.resolve(f"./txt2img-images//{DAY}/real.png") == expected
    assert [item.relative for item in gallery.page().items] == [f"txt2img-images/{DAY}/real.png"]  # links skipped


SEGMENTS = st.sampled_from(["..", ".", "", "txt2img-images", DAY, "real.png", "leak.png", "up.png", "linked",
                            "secret.png", "secret.txt", "%2e%2e", "..\\", "\\", "\x00", "REAL.PNG", "~", "a" * 260])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(SEGMENTS, max_size=7).map("/".join), st.text(max_size=80)))
def test_gallery_resolution_never_leaves_outputs(gallery: Gallery, relative: str) -> None:
    # Property: any string either names a regular image file inside outputs or is a GalleryPathError.
    try:
        path = gallery.resolve(relative)
    except GalleryPathError:
        return
    assert path.resolve().is_relative_to(gallery.outputs_dir.resolve())
    assert path.is_file() and path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
    assert path.read_bytes() != SECRET.encode()
