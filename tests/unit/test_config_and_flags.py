"""Flags with A1111's names, COMMANDLINE_ARGS, and config.yaml's strict typed settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from modules.cmd_args import parse_flags
from modules.config import Settings, load_settings
from modules.errors import ConfigError
from modules.paths import resolve_paths
from modules.precision import Precision


def test_defaults_bind_loopback_on_7860() -> None:
    flags = parse_flags([], {})
    assert (flags.host, flags.port, flags.listen) == ("127.0.0.1", 7860, False)


def test_commandline_args_env_is_read_and_explicit_flags_win() -> None:
    flags = parse_flags(["--port", "9000"], {"COMMANDLINE_ARGS": "--listen --port 8000 --no-half --use-cpu all"})
    assert (flags.host, flags.port, flags.no_half, flags.use_cpu) == ("0.0.0.0", 9000, True, ("all",))


def test_a1111_flag_names(tmp_path: Path) -> None:
    flags = parse_flags(["--ckpt", "m.safetensors", "--ckpt-dir", str(tmp_path), "--data-dir", str(tmp_path),
                         "--device-id", "1", "--precision", "full", "--loglevel", "debug", "--autolaunch",
                         "--exit"], {})
    assert flags.ckpt == "m.safetensors" and flags.ckpt_dir == tmp_path and flags.device_id == 1
    assert flags.precision is Precision.FULL and flags.loglevel == "DEBUG" and flags.autolaunch and flags.exit


def test_bad_port_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_flags(["--port", "70000"], {})


def test_paths_follow_a1111_layout(tmp_path: Path) -> None:
    paths = resolve_paths(data_dir=tmp_path, ckpt_dir=tmp_path / "extra")
    assert paths.checkpoint_dirs == (tmp_path / "models" / "Stable-diffusion", tmp_path / "extra")
    assert paths.outputs_dir == tmp_path / "outputs" and paths.config_file == tmp_path / "config.yaml"


def test_missing_or_empty_config_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "config.yaml") == Settings()
    (tmp_path / "config.yaml").write_text("")
    assert load_settings(tmp_path / "config.yaml") == Settings()


def test_config_values_are_read(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("save_grid: false\nqueue_limit: 3\n")
    assert load_settings(tmp_path / "config.yaml") == Settings(save_grid=False, queue_limit=3)


@pytest.mark.parametrize("text, needle", [
    ("save_gird: true\n", "unknown setting 'save_gird'"),
    ("queue_limit: many\n", "'queue_limit' must be a whole number"),
    ("save_grid: 1\n", "'save_grid' must be true or false"),
    ("queue_limit: 0\n", "at least 1"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [\n", "cannot read settings"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "cannot read settings"),
])
def test_bad_config_names_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_settings(tmp_path / "config.yaml")
