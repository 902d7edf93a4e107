"""Category 11, the request guard, attacked over HTTP and Gradio's own protocol: a foreign Host
(DNS rebinding), cross-site requests (Origin, text/plain and form bodies), the login limiter under
every spelling, the network rule for UI events and API routes, and file paths smuggled into events.

Each test builds the real app (``app._build_app``) behind the guard and talks to it as a browser
page, a LAN client or a script would: from 127.0.0.1, or from a LAN address (``client=``).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.conftest import make_services
from tests.gradio_events import file_data, fn_indexes, join, run_event, upload
from tests.reliability.support import png_bytes

CATEGORY = "11 request guard"
LOCAL = ("127.0.0.1", 40000)
LAN = ("192.168.1.20", 40000)
PASSWORD = "correct-horse-battery"
SECRET = f"atelier-secret-{uuid.uuid4().hex}"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Built:
    app: object
    services: object
    data: Path

    def client(self, address: tuple[str, int] = LOCAL, host: str = "127.0.0.1:7860") -> TestClient:
        return TestClient(self.app, base_url=f"http://{host}", client=address)

    @property
    def blocks(self) -> object:
        return next(e.blocks for e in self.app.faces.effects if hasattr(e, "blocks"))


@pytest.fixture
def build(tmp_path: Path) -> Iterator:
    made: list[Built] = []

    def _build(*args: str) -> Built:
        flags = parse_flags(["--api", *args], {})
        data = tmp_path / f"data{len(made)}"
        services = make_services(data, tmp_path / "no-models")
        auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
        built = Built(app_module._build_app(flags, services, auth), services, data)
        made.append(built)
        return built

    yield _build
    for built in made:
        built.services.close()


# --- Host: DNS rebinding ----------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "attacker.test:7860", "127.0.0.1.evil.example", "10.0.0.9:7860",
                                  "localhost.evil.example", "", "a b"])
def test_a_foreign_host_is_refused_before_any_work(build, host: str) -> None:
    built = build()
    with built.client(host="127.0.0.1:7860") as client:
        before = client.get("/sdapi/v1/options").json()
        headers = {"Host": host}
        refused = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3}, headers=headers)
        assert refused.status_code in (400, 421), (host, refused.status_code)
        assert client.get("/config", headers=headers).status_code in (400, 421)
        assert client.get("/", headers=headers).status_code in (400, 421)
        assert client.get("/sdapi/v1/options").json() == before  # nothing changed
    assert not (built.data / "config.yaml").exists()


@pytest.mark.parametrize("host", ["localhost:7860", "127.0.0.1", "[::1]:7860", "127.0.0.2:7860", "LOCALHOST"])
def test_loopback_names_are_answered(build, host: str) -> None:
    with build().client(host=host) as client:
        assert client.get("/sdapi/v1/options").status_code == 200


def test_listen_answers_this_machines_names_and_allowed_hosts_only(build) -> None:
    import socket

    built = build("--listen", "--allowed-hosts", "atelier.studio.lan,.example.org")
    for host, expected in ((socket.gethostname(), 200), ("atelier.studio.lan", 200), ("gpu.example.org", 200),
                           ("example.org", 200), ("evil.example", 421), ("example.org.evil.example", 421)):
        with built.client(address=LAN, host=host) as client:
            assert client.get("/sdapi/v1/samplers").status_code == expected, host


# --- Cross-site requests ------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; "
                                          "boundary=x", "text/plain;charset=UTF-8"])
def test_non_json_bodies_are_415_on_the_api(build, content_type: str) -> None:
    built = build()
    with built.client() as client:
        for path in ("/sdapi/v1/options", "/sdapi/v1/txt2img", "/sdapi/v1/interrupt"):
            reply = client.post(path, content=b'{"CLIP_stop_at_last_layers": 3}',
                                headers={"Content-Type": content_type})
            assert reply.status_code == 415, (path, reply.status_code)
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_empty_bodies_and_json_without_a_type_still_work(build) -> None:
    with build().client() as client:
        assert client.post("/sdapi/v1/interrupt").status_code == 200
        assert client.post("/sdapi/v1/refresh-checkpoints", headers={"Content-Type": "text/plain"}).status_code == 200
        assert client.post("/sdapi/v1/options", content=b'{"CLIP_stop_at_last_layers": 2}').status_code == 200
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:7861", "http://127.0.0.1",
                                    "http://localhost:7860"])
def test_a_foreign_origin_is_refused_on_api_and_ui_events(build, origin: str) -> None:
    built = build("--gradio-auth", f"alice:{PASSWORD}")
    with built.client() as client:
        assert client.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 200
        assert client.cookies  # a signed-in browser
        refused = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3},
                              headers={"Origin": origin, **basic("alice", PASSWORD)})
        assert refused.status_code == 403, refused.text
        vae = fn_indexes(built.blocks, "modules.ui.vae_bar:build_vae_choice.<locals>.on_select")[0]
        assert join(client, vae, ["None"], headers={"Origin": origin}).status_code == 403
        # The same requests from the page itself go through.
        same = {"Origin": "http://127.0.0.1:7860"}
        assert client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3},
                           headers={**same, **basic("alice", PASSWORD)}).status_code == 200
        assert run_event(client, vae, ["None"], headers=same)["success"]
    assert "clip_skip: 3" in (built.data / "config.yaml").read_text()


def test_sec_fetch_site_cross_site_is_refused_and_cors_origins_are_allowed(build) -> None:
    built = build("--cors-allow-origins", "http://editor.local")
    with built.client() as client:
        cross = client.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "cross-site"})
        assert cross.status_code == 403
        assert client.post("/sdapi/v1/interrupt", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert client.post("/sdapi/v1/interrupt", headers={"Origin": "http://editor.local"}).status_code == 200
        assert client.post("/sdapi/v1/interrupt", headers={"Origin": "http://editor.local.evil"}).status_code == 403


# --- The login limiter --------------------------------------------------------------------------

ORIGIN = "http://127.0.0.1:7860"  # full URLs: "//login" alone would name a host
LOGIN_SPELLINGS = ("/login", "/login/", "//login", "/LOGIN", "/Login/", "//login/")


def test_every_spelling_of_login_and_basic_failures_count_toward_one_limit(build) -> None:
    built = build("--gradio-auth", f"alice:{PASSWORD}")
    with built.client() as client:
        codes = []
        for attempt in range(10):
            if attempt % 3 == 2:  # HTTP Basic failures count too
                codes.append(client.get("/sdapi/v1/options", headers=basic("alice", f"guess{attempt}")).status_code)
            else:
                path = LOGIN_SPELLINGS[attempt % len(LOGIN_SPELLINGS)]
                codes.append(client.post(ORIGIN + path, data={"username": "alice", "password": f"guess{attempt}"}).status_code)
        assert 200 not in codes and 429 not in codes, codes
        for path in LOGIN_SPELLINGS:  # every spelling is now closed, the right password included
            blocked = client.post(ORIGIN + path, data={"username": "alice", "password": PASSWORD})
            assert blocked.status_code == 429, (path, blocked.status_code)
        assert client.get("/sdapi/v1/options", headers=basic("alice", PASSWORD)).status_code == 429


def test_one_user_name_is_limited_across_addresses(build) -> None:
    built = build("--gradio-auth", f"alice:{PASSWORD}")
    for n in range(10):
        with built.client(address=(f"127.0.0.{n + 2}", 40000)) as client:
            assert client.post("/login/", data={"username": "alice", "password": f"guess{n}"}).status_code == 400
    with built.client(address=("127.0.0.99", 40000)) as fresh:
        assert fresh.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 429
        assert fresh.get("/sdapi/v1/options", headers=basic("alice", PASSWORD)).status_code == 429


# --- The network rule: --listen without a password ---------------------------------------------

SERVER_EVENTS = (
    ("modules.ui.vae_bar:build_vae_choice.<locals>.on_select", ["None"]),
    ("modules.ui.checkpoints:build_bar.<locals>.on_refresh", []),
)


def test_listen_without_a_password_refuses_server_changes_from_the_network(build) -> None:
    built = build("--listen")
    with built.client(address=LAN, host="127.0.0.1:7860") as lan:
        for path in ("/sdapi/v1/options", "/sdapi/v1/unload-checkpoint", "/sdapi/v1/reload-checkpoint",
                     "/sdapi/v1/refresh-checkpoints", "/sdapi/v1/refresh-vae", "/sdapi/v1/refresh-loras",
                     "/sdapi/v1/refresh-embeddings"):
            reply = lan.post(path, json={"sd_vae": "None"} if path.endswith("options") else None)
            assert reply.status_code == 403 and "--gradio-auth" in reply.text, path
        for name, data in SERVER_EVENTS:
            for index in fn_indexes(built.blocks, name):
                assert join(lan, index, data).status_code == 403, name
        # Spelled by name instead of index: the same rule.
        assert lan.post("/gradio_api/run/on_select", json={"data": ["None"]}).status_code == 403
        # What the network may do: read, and run its own jobs.
        assert lan.get("/sdapi/v1/options").status_code == 200
        assert lan.post("/sdapi/v1/interrupt").status_code == 200
        read = fn_indexes(built.blocks, "modules.ui.png_info:read")[0]
        assert run_event(lan, read, [None])["success"]
    assert not (built.data / "config.yaml").exists()
    with built.client(address=LOCAL) as local:  # the person at the machine may
        vae = fn_indexes(built.blocks, "modules.ui.vae_bar:build_vae_choice.<locals>.on_select")[0]
        assert run_event(local, vae, ["None"])["success"]
        assert local.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    assert "sd_vae: None" in (built.data / "config.yaml").read_text()


def test_api_auth_alone_leaves_the_ui_open_but_not_its_server_changes(build) -> None:
    built = build("--listen", "--api-auth", f"bot:{PASSWORD}")
    with built.client(address=LAN, host="127.0.0.1:7860") as lan:
        vae = fn_indexes(built.blocks, "modules.ui.vae_bar:build_vae_choice.<locals>.on_select")[0]
        assert join(lan, vae, ["None"]).status_code == 403  # the UI has no password
        assert lan.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 401
        assert lan.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2},
                        headers=basic("bot", PASSWORD)).status_code == 200  # the API has one


def test_with_a_password_the_network_may_change_settings(build) -> None:
    built = build("--listen", "--gradio-auth", f"alice:{PASSWORD}")
    with built.client(address=LAN, host="127.0.0.1:7860") as lan:
        assert lan.post("/sdapi/v1/unload-checkpoint", headers=basic("alice", PASSWORD)).status_code == 200


# --- Client-given file paths in UI events --------------------------------------------------------

def test_a_server_path_sent_as_an_image_never_comes_back(build, tmp_path: Path) -> None:
    import gradio.utils

    secret_text = tmp_path / "secret.txt"
    secret_text.write_text(SECRET)
    secret_png = tmp_path / "secret.png"
    secret_png.write_bytes(png_bytes(parameters=f"{SECRET}\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64"))
    built = build()
    uploads = Path(gradio.utils.get_upload_folder())
    read = fn_indexes(built.blocks, "modules.ui.png_info:read")[0]
    with built.client() as client:
        # The attack: a path on the server where an uploaded file's path belongs.
        for target in (secret_text, secret_png, Path("/etc/passwd"), Path("/proc/self/cmdline"),
                       Path(str(tmp_path) + "/../" + tmp_path.name + "/secret.png")):
            message = run_event(client, read, [file_data(str(target))])
            assert not message["success"] and SECRET not in str(message), target
            named = [w for w in str(message).split() if "/" in w]
            for path in named:  # nothing the error names is served
                served = client.get(f"/gradio_api/file={path.strip(chr(39) + chr(34) + '.,')}")
                assert SECRET.encode() not in served.content
        # Every file route and the cache folder hold no copy under any name.
        copies = [p for p in uploads.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
        assert copies == []
        # The positive control: the same event with a real upload reads the parameters.
        path = upload(client, png_bytes(parameters="a red cube\nSteps: 2, Sampler: Euler, Seed: 7, Size: 64x64"),
                      "mine.png")
        message = run_event(client, read, [file_data(path)])
        assert message["success"] and "a red cube" in str(message["output"])


def test_every_event_with_a_file_input_refuses_server_paths(build, tmp_path: Path) -> None:
    import gradio.utils

    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes(parameters=f"{SECRET}\nSteps: 2, Sampler: Euler, Seed: 1, Size: 64x64"))
    built = build()
    tried = 0
    with built.client() as client:
        for index, block_fn in built.blocks.fns.items():
            for position, component in enumerate(block_fn.inputs):
                if not _takes_files(component):
                    continue
                # Every other file input empty, the rest at their own values (Gradio refuses an
                # empty slider or checkbox group before it would look at the file).
                data: list = [None if _takes_files(c) else getattr(c, "value", None) for c in block_fn.inputs]
                data[position] = _file_value(component, str(secret))
                try:
                    message = run_event(client, index, data)
                except AssertionError as refused:  # Gradio may refuse the path already when the event joins
                    assert "not uploaded by a user" in str(refused), (index, position)
                    message = {"refused": str(refused)}
                assert SECRET not in str(message), (index, position)
                tried += 1
    assert tried >= 4  # png info, img2img, inpaint's editor, extensions' inputs
    uploads = Path(gradio.utils.get_upload_folder())
    assert [p for p in uploads.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()] == []


def _takes_files(component: object) -> bool:
    return type(component).__name__ in ("Image", "ImageEditor", "Gallery", "File", "Model3D", "Video", "Audio")


def _file_value(component: object, path: str) -> object:
    kind = type(component).__name__
    if kind == "ImageEditor":
        return {"background": file_data(path), "layers": [file_data(path)], "composite": file_data(path)}
    if kind == "Gallery":
        return [{"image": file_data(path), "caption": None}]
    return file_data(path)


def test_a_reverse_proxys_public_name_is_home_even_when_it_rewrites_host(build) -> None:
    built = build("--allowed-hosts", "atelier.example")
    with built.client() as client:  # the proxy sends Host: 127.0.0.1:7860, the browser's Origin is the proxy's
        assert client.post("/sdapi/v1/interrupt", headers={"Origin": "https://atelier.example"}).status_code == 200
        assert client.post("/sdapi/v1/interrupt", headers={"Origin": "https://evil.example"}).status_code == 403
        assert client.get("/sdapi/v1/samplers", headers={"Host": "atelier.example"}).status_code == 200


def test_startup_says_when_the_ui_or_the_network_is_open(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")
    for args in (["--api-auth", f"bot:{PASSWORD}"], ["--listen"], ["--gradio-auth", f"a:{PASSWORD}"]):
        flags = parse_flags(args, {})
        app_module._warn_about_exposure(flags, load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth))
    text = caplog.text
    assert "--api-auth protects the API only: the web UI" in text
    assert "--listen without --gradio-auth/--api-auth" in text and PASSWORD not in text
