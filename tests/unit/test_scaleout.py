"""Scale-out pieces that need no cluster: address rules, flags, errors across processes, imports."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from modules.cmd_args import parse_flags
from modules.config import load_settings
from modules.errors import ConfigError, FieldError, ModelLoadError, ModelNotFoundError, ValidationError
from modules.services.scaleout.cluster import RayAddress, check_address, is_local_address

ROOT = Path(__file__).resolve().parents[2]


def test_ray_addresses_parse() -> None:
    assert RayAddress.parse("auto") == RayAddress(None)
    assert RayAddress.parse("192.168.1.10:6380") == RayAddress("192.168.1.10", 6380)
    assert RayAddress.parse("10.0.0.2") == RayAddress("10.0.0.2", 6379)
    assert str(RayAddress.parse("10.0.0.2:7000")) == "10.0.0.2:7000"
    for bad in ("host:port", ":6379", "10.0.0.2:70000"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            RayAddress.parse(bad)


@pytest.mark.parametrize("host", ["127.0.0.1", "192.168.1.10", "10.1.2.3", "172.16.0.5", "::1", "fd00::1"])
def test_private_and_loopback_addresses_are_accepted(host: str) -> None:
    check_address(host, allow_public=False)


def test_a_public_address_needs_an_explicit_flag_and_every_interface_is_refused() -> None:
    with pytest.raises(ConfigError, match="public.*--ray-allow-public"):
        check_address("8.8.8.8", allow_public=False)
    check_address("8.8.8.8", allow_public=True)
    with pytest.raises(ConfigError, match="name the LAN interface"):
        check_address("0.0.0.0", allow_public=True)


def test_the_front_refuses_a_public_head_before_touching_ray() -> None:
    from modules.services.scaleout.cluster import connect_front

    with pytest.raises(ConfigError, match="public"):
        connect_front(RayAddress("8.8.8.8"), allow_public=False, namespace="atelier")


def test_local_addresses_are_recognised() -> None:
    assert is_local_address("127.0.0.1") and is_local_address("localhost")
    assert not is_local_address("203.0.113.77")


def test_flags_and_config_name_the_cluster(tmp_path: Path) -> None:
    flags = parse_flags(["--ray-address", "192.168.1.10:6379", "--ray-allow-public"], {})
    assert flags.ray_address == "192.168.1.10:6379" and flags.ray_allow_public
    assert parse_flags([], {}).ray_address is None
    (tmp_path / "config.yaml").write_text("ray_address: auto\n")
    assert load_settings(tmp_path / "config.yaml").ray_address == "auto"


def test_errors_cross_process_boundaries_intact() -> None:
    for error in (ModelNotFoundError("x.safetensors", ["a", "b"]), ModelLoadError("p", "bad header"),
                  ValidationError([FieldError("steps", "too many"), FieldError("width", "odd")])):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and vars(copy) == vars(error)


def test_ray_only_when_asked_for_and_no_web_framework_on_the_worker_side() -> None:
    code = ("import sys; import modules.services.container, modules.services.scaleout.front, "
            "modules.services.scaleout.cluster; assert 'ray' not in sys.modules; "
            "import modules.services.scaleout.worker, modules.services.scaleout.engine_host, "
            "modules.services.scaleout.worker_cli; "
            "bad = [m for m in ('gradio', 'fastapi', 'uvicorn') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
