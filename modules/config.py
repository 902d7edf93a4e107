"""Settings from ``config.yaml`` under the data dir, as a frozen, typed value.

The file is optional. It is read with ``yaml.safe_load`` (never arbitrary object construction);
an unknown key or a value of the wrong type is a :class:`ConfigError` that names it, rather than
being silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from modules.atomic import write_text_atomic
from modules.errors import ConfigError
from modules.params import GenerationLimits
from modules.samplers import RngSource


@dataclass(frozen=True)
class Settings:
    """User settings with their defaults."""

    save_grid: bool = True  # a grid image for jobs of more than one image (A1111 default)
    queue_limit: int = 64  # jobs waiting behind the running one before new ones are refused
    max_image_size: int = 2048  # largest width or height accepted
    max_batch_size: int = 8
    max_batch_count: int = 100
    # Defaults for every job (A1111's options CLIP_stop_at_last_layers, eta_noise_seed_delta, randn_source).
    clip_skip: int = 1
    eta_noise_seed_delta: int = 0
    randn_source: str = RngSource.GPU.value
    sd_vae: str = "Automatic"  # A1111's option: "Automatic", "None" or a VAE file name
    save_images_before_highres_fix: bool = False  # also save hires fix's first pass
    checkpoint_cache: int = 1  # checkpoints kept in RAM besides the loaded one, for fast switching
    fast_path: bool = False  # channels_last + torch.compile of the UNet (CUDA); off until measured
    shared_jobs: bool = False  # true: a single-user instance, every signed-in name sees every job
    ray_address: str = ""  # "auto" or HOST:PORT: run jobs on Ray workers (--ray-address wins); "" in process

    @property
    def limits(self) -> GenerationLimits:
        return GenerationLimits(max_size=self.max_image_size, max_batch_size=self.max_batch_size,
                                max_batch_count=self.max_batch_count)


_TYPES: dict[str, type] = {f.name: {"bool": bool, "str": str}.get(str(f.type), int) for f in fields(Settings)}
_MINIMUM: dict[str, int] = {"queue_limit": 1, "max_image_size": 64, "max_batch_size": 1, "max_batch_count": 1,
                            "clip_skip": 1, "eta_noise_seed_delta": 0, "checkpoint_cache": 0}
_MAXIMUM: dict[str, int] = {"clip_skip": 12, "checkpoint_cache": 8}
_CHOICES: dict[str, tuple[str, ...]] = {"randn_source": tuple(r.value for r in RngSource)}


def check_setting(path: Path | str, key: str, value: Any) -> None:
    """Raise ConfigError unless ``value`` is valid for setting ``key``."""
    if key not in _TYPES:
        raise ConfigError(f"{path}: unknown setting '{key}'; known settings: {', '.join(sorted(_TYPES))}")
    expected = _TYPES[key]
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{path}: '{key}' must be a whole number, got {value!r}")
    if expected is bool and not isinstance(value, bool):
        raise ConfigError(f"{path}: '{key}' must be true or false, got {value!r}")
    if expected is str and value not in _CHOICES.get(key, (value,)):
        raise ConfigError(f"{path}: '{key}' must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    if key in _MINIMUM and value < _MINIMUM[key]:
        raise ConfigError(f"{path}: '{key}' must be at least {_MINIMUM[key]}, got {value}")
    if key in _MAXIMUM and value > _MAXIMUM[key]:
        raise ConfigError(f"{path}: '{key}' must be at most {_MAXIMUM[key]}, got {value}")


def load_settings(path: Path) -> Settings:
    """Settings from ``path``; defaults when the file does not exist."""
    if not path.exists():
        return Settings()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read settings ({exc})") from exc
    if data is None:
        return Settings()
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting names to values")
    for key, value in data.items():
        check_setting(path, key, value)
    return dataclasses.replace(Settings(), **data)


def save_settings(path: Path, settings: Settings) -> None:
    """Write the settings that differ from the defaults, atomically (a crash keeps the old file)."""
    changed = {f.name: getattr(settings, f.name) for f in fields(Settings)
               if getattr(settings, f.name) != getattr(Settings(), f.name)}
    write_text_atomic(path, yaml.safe_dump(changed, sort_keys=True) if changed else "")
