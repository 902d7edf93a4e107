"""Settings from ``config.yaml`` under the data dir, as a frozen, typed value.

The file is optional. It is read with ``yaml.safe_load`` (never arbitrary object construction);
an unknown key, a value of the wrong type or one outside its range is a :class:`ConfigError` that
names the key and what it allows, rather than being silently ignored or clamped. The same check
(:func:`setting_problem`) guards every run-time change (``modules.services.settings_store``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from modules.atomic import write_text_atomic
from modules.errors import ConfigError
from modules.params import (
    DEFAULT_CODE_FORMER_WEIGHT,
    DEFAULT_FACE_RESTORER,
    DEFAULT_PREVIEW_EVERY,
    MAX_SEED,
    PREVIEW_EVERY_RANGE,
    GenerationLimits,
    PreviewMethod,
    code_former_weight_problem,
    face_restorer_problem,
    preview_method_problem,
)
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
    # The live preview (A1111's options): how it is drawn, and every how many sampling steps (-1: none).
    show_progress_type: str = PreviewMethod.APPROX_CHEAP.value
    show_progress_every_n_steps: int = DEFAULT_PREVIEW_EVERY
    # Face restoration (A1111's options): which restorer "Restore faces" runs, and CodeFormer's weight.
    face_restoration_model: str = DEFAULT_FACE_RESTORER
    code_former_weight: float = DEFAULT_CODE_FORMER_WEIGHT
    # Upscaler models run in tiles (A1111's ESRGAN_tile, ESRGAN_tile_overlap): side and overlap in px, 0: untiled.
    esrgan_tile: int = 192
    esrgan_tile_overlap: int = 8
    # What enlarges an img2img init image to the job's size (A1111's upscaler_for_img2img): None is Lanczos.
    upscaler_for_img2img: str = "None"
    # A1111's send_seed / send_size: "Send to" another tab carries the seed / the width and height too.
    send_seed: bool = True
    send_size: bool = True
    # Upscalers whose architecture is only in spandrel's extra package (non-commercial licences): off unless asked.
    upscaler_extra_architectures: bool = False
    checkpoint_cache: int = 1  # checkpoints kept in RAM besides the loaded one, for fast switching
    fast_path: bool = False  # channels_last + torch.compile of the UNet (CUDA); off until measured
    shared_jobs: bool = False  # true: a single-user instance, every signed-in name sees every job
    ray_address: str = ""  # "auto" or HOST:PORT: run jobs on Ray workers (--ray-address wins); "" in process

    @property
    def limits(self) -> GenerationLimits:
        return GenerationLimits(max_size=self.max_image_size, max_batch_size=self.max_batch_size,
                                max_batch_count=self.max_batch_count)


_TYPES: dict[str, type] = {f.name: {"bool": bool, "str": str, "float": float}.get(str(f.type), int)
                           for f in fields(Settings)}
# Every whole-number setting has a range, checked on every path (config.yaml, the API, the UI): a value
# outside it is refused with the range, never clamped. The maxima keep one bad value from breaking
# every later job or the server (ENSD is added to a seed, so it stays within what a seed may be).
INT_RANGES: dict[str, tuple[int, int]] = {
    "queue_limit": (1, 1024), "max_image_size": (64, 8192), "max_batch_size": (1, 64),
    "max_batch_count": (1, 1000), "clip_skip": (1, GenerationLimits.max_clip_skip),
    "eta_noise_seed_delta": (0, MAX_SEED), "checkpoint_cache": (0, 8),
    "show_progress_every_n_steps": PREVIEW_EVERY_RANGE, "esrgan_tile": (0, 512), "esrgan_tile_overlap": (0, 48),
}
_CHOICES: dict[str, tuple[str, ...]] = {"randn_source": tuple(r.value for r in RngSource)}
_CHOICE_CHECKS: dict[str, Callable[[object], str | None]] = {"show_progress_type": preview_method_problem,
                                                              "face_restoration_model": face_restorer_problem}
# Every number setting says what it allows (its range) in its own check.
_FLOAT_CHECKS: dict[str, Callable[[object], str | None]] = {"code_former_weight": code_former_weight_problem}
_NON_BLANK = frozenset({"sd_vae", "upscaler_for_img2img"})  # a blank VAE name would make every job from the UI invalid
MAX_TEXT_CHARS = 255  # a file name or HOST:PORT; more is not a plausible setting


def _text_problem(key: str, value: object) -> str | None:
    if key in _CHOICE_CHECKS:
        return _CHOICE_CHECKS[key](value)
    if key in _CHOICES and value not in _CHOICES[key]:
        return f"must be one of {', '.join(_CHOICES[key])}, got {value!r}"
    if not isinstance(value, str):
        return f"must be text, got {value!r}"
    if len(value) > MAX_TEXT_CHARS or not value.isprintable() or not _is_unicode(value):
        return f"must be printable text of at most {MAX_TEXT_CHARS} characters, got {value[:40]!r}"
    if key in _NON_BLANK and not value.strip():
        return "must not be blank"
    return None


def _int_problem(key: str, value: object) -> str | None:
    low, high = INT_RANGES[key]
    if isinstance(value, bool) or not isinstance(value, int):  # 2.0, 1e30, "5" and true are refused
        return f"must be a whole number from {low} to {high}, got {value!r}"
    if value < low:
        return f"must be at least {low} (allowed: {low} to {high}), got {value}"
    if value > high:
        return f"must be at most {high} (allowed: {low} to {high}), got {value}"
    return None


def setting_problem(key: str, value: object) -> str | None:
    """Why ``value`` cannot be setting ``key`` ("must be ...", saying what is allowed); None when it can."""
    expected = _TYPES.get(key)
    if expected is None:
        return f"is not a setting; known settings: {', '.join(sorted(_TYPES))}"
    if expected is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if expected is str:
        return _text_problem(key, value)
    if expected is float:
        return _FLOAT_CHECKS[key](value)
    return _int_problem(key, value)


def check_setting(path: Path | str, key: str, value: Any) -> None:
    """Raise ConfigError, naming ``key`` and what it allows, unless ``value`` is valid for it."""
    if key not in _TYPES:
        raise ConfigError(f"{path}: unknown setting '{key}'; known settings: {', '.join(sorted(_TYPES))}")
    problem = setting_problem(key, value)
    if problem is not None:
        raise ConfigError(f"{path}: '{key}' {problem}")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")  # a lone surrogate (JSON's "\\ud800") could not be written to config.yaml
    except UnicodeEncodeError:
        return False
    return True


def load_settings(path: Path) -> Settings:
    """Settings from ``path``; defaults when the file does not exist."""
    if not path.exists():
        return Settings()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:  # ValueError: bad UTF-8, an int over 4300 digits
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
