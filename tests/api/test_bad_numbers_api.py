"""One rule for numbers out of range: the API refuses each with a 422 naming the field as the client
sent it and the range it allows; nothing is clamped into range and no job starts."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.params import GenerationLimits
from modules.web.credentials import load_auth
from tests.conftest import make_services

API = "/sdapi/v1"
JOB = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 7}
LIMITS = GenerationLimits()  # the server's defaults (config.yaml may lower or raise them)

# (body field, value, the range the refusal must state); each value used to be clamped (width 7 ran
# at 64, steps 0 at 1, batch_size 500 at 8, n_iter 10000 at 100).
CASES = [
    ("width", 7, f"between {LIMITS.min_size} and {LIMITS.max_size}"),
    ("steps", 0, f"between 1 and {LIMITS.max_steps}"),
    ("batch_size", 500, f"between 1 and {LIMITS.max_batch_size}"),
    ("n_iter", 10000, f"between 1 and {LIMITS.max_batch_count}"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("bad-numbers")
    no_models = data / "models"
    no_models.mkdir()
    flags = parse_flags(["--api"], {})
    services = make_services(data, no_models)
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    with TestClient(app_module._build_app(flags, services, auth), base_url="http://127.0.0.1") as test_client:
        yield test_client
    services.close()


@pytest.mark.parametrize(("field", "value", "allowed"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("route", ["txt2img", "img2img"])
def test_a_number_out_of_range_is_a_422_naming_the_field_and_its_range(client: TestClient, route: str, field: str,
                                                                       value: int, allowed: str) -> None:
    body = {**JOB, field: value}
    if route == "img2img":
        body["init_images"] = [_png_b64()]
    reply = client.post(f"{API}/{route}", json=body)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"]
    named = [d for d in detail if d["loc"] == ["body", field]]
    assert named, detail
    assert allowed in named[0]["msg"] and str(value) in named[0]["msg"]
    progress = client.get(f"{API}/progress").json()
    assert progress["state"]["job_count"] == 0  # refused before it was queued


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()
