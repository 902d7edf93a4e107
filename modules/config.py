"""Settings from ``config.yaml`` under the data dir, as a frozen, typed value.

The file is optional. It is read with ``yaml.safe_load`` (never arbitrary object construction);
an unknown key, a value of the wrong type or one outside its range is a :class:`ConfigError` that
names the key and what it allows, rather than being silently ignored or clamped. The same check
(:func:`setting_problem`) guards every run-time change (``modules.services.settings_store``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from modules.a1111_extra import extras_problem
from modules.atomic import write_text_atomic
from modules.errors import ConfigError
from modules.output_dirs import OUTDIR_DEFAULTS, outdir_problem
from modules.params import (
    CODE_FORMER_WEIGHT_RANGE,
    DEFAULT_CODE_FORMER_WEIGHT,
    DEFAULT_EMPHASIS,
    DEFAULT_FACE_RESTORER,
    DEFAULT_PREVIEW_EVERY,
    LORA_NAME_CHOICES,
    MAX_SEED,
    PREVIEW_EVERY_RANGE,
    GenerationLimits,
    PreviewMethod,
    code_former_weight_problem,
    emphasis_problem,
    face_restorer_problem,
    preview_method_problem,
)
from modules.remote_prices import prices_problem
from modules.sampler_params import NAMES as SAMPLER_PARAM_NAMES
from modules.sampler_params import RANGES as SAMPLER_PARAM_RANGES
from modules.sampler_params import param_problem as sampler_param_problem
from modules.samplers import RngSource

IMAGE_FORMATS = ("png", "jpg", "jpeg", "webp")  # A1111's samples_format / grid_format (files and API)
REPLACE_ACTIONS = ("Replace", "Add number suffix")  # A1111's save_images_replace_action
QUICKSETTINGS_DEFAULT = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers")  # A1111's default


@dataclass(frozen=True)
class Settings:
    """User settings with their defaults."""

    save_grid: bool = True  # a grid image for jobs of more than one image (A1111 default)
    queue_limit: int = 64  # jobs waiting behind the running one before new ones are refused
    max_image_size: int = 2048  # largest width or height accepted
    max_batch_size: int = 8
    max_batch_count: int = 100
    confirm_images_above: int = 64  # the UI asks before starting a job of more images than this
    # Defaults for every job (A1111's options CLIP_stop_at_last_layers, eta_noise_seed_delta, randn_source).
    clip_skip: int = 1
    eta_noise_seed_delta: int = 0
    randn_source: str = RngSource.GPU.value
    emphasis: str = DEFAULT_EMPHASIS  # A1111's option: how prompt weights change the text encoder's output
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
    # A1111's sampler parameters (its "Sampler parameters" options; ranges in modules.sampler_params).
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0
    s_noise: float = 1.0
    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    img2img_fix_steps: bool = False  # A1111's option: img2img runs exactly ``steps``, not steps x denoising
    live_previews_enable: bool = True  # A1111's option: False, no job gets a live preview
    fast_path: bool = False  # channels_last + torch.compile of the UNet (CUDA); off until measured
    text_encoder_cpu: bool = False  # as --text-encoder-cpu: the flow families' T5 / LLM encoders stay on the CPU
    shared_jobs: bool = False  # true: a single-user instance, every signed-in name sees every job
    session_hours: float = 12.0  # a sign-in session ends this long after its login, or after as long unused
    ray_address: str = ""  # "auto" or HOST:PORT: run jobs on Ray workers (--ray-address wins); "" in process
    # A1111's quicksettings_list: the options shown in the bar at the top of the page, by A1111 name.
    quicksettings_list: tuple[str, ...] = QUICKSETTINGS_DEFAULT
    lora_preferred_name: str = LORA_NAME_CHOICES[0]  # A1111's option: a LoRA card's tag names the alias or the file
    # Saving images (A1111's options of these names; docs/options.md): format, names, folders, grids.
    samples_format: str = "png"
    jpeg_quality: int = 80
    samples_filename_pattern: str = ""  # "" is "[seed]" (the NNNNN-SEED names Atelier has always written)
    save_images_add_number: bool = True
    save_images_replace_action: str = "Replace"
    save_to_dirs: bool = True
    grid_save_to_dirs: bool = True
    outputs_per_user: bool = False  # a signed-in user's images go under outputs/<user>/; the Gallery shows them theirs
    directories_filename_pattern: str = "[date]"
    save_txt: bool = False
    grid_format: str = "png"
    return_grid: bool = True
    n_rows: int = -1
    outdir_samples: str = OUTDIR_DEFAULTS["outdir_samples"]
    outdir_txt2img_samples: str = OUTDIR_DEFAULTS["outdir_txt2img_samples"]
    outdir_img2img_samples: str = OUTDIR_DEFAULTS["outdir_img2img_samples"]
    outdir_extras_samples: str = OUTDIR_DEFAULTS["outdir_extras_samples"]
    outdir_grids: str = OUTDIR_DEFAULTS["outdir_grids"]
    outdir_txt2img_grids: str = OUTDIR_DEFAULTS["outdir_txt2img_grids"]
    outdir_img2img_grids: str = OUTDIR_DEFAULTS["outdir_img2img_grids"]
    # Remote engines (docs/remote-engines.md): hosted models behind the same queue. An admin's switch;
    # the providers' keys and base URLs (the environment's OPENAI_API_KEY, OPENAI_BASE_URL and
    # GEMINI_API_KEY / GOOGLE_API_KEY when empty; keys an admin saves in the UI win); one HTTP attempt's
    # time limit and the retries on 429 and 5xx; prices in dollars per image by title and size.
    remote_engines: bool = True
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str = ""
    google_api_key: str = field(default="", repr=False)
    google_base_url: str = ""
    remote_timeout: float = 120.0
    remote_retries: int = 2
    remote_prices: dict[str, Any] = field(default_factory=dict)
    # A1111 options Atelier has no use for, kept as sent and echoed by GET /sdapi/v1/options (no effect).
    a1111_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def limits(self) -> GenerationLimits:
        return GenerationLimits(max_size=self.max_image_size, max_batch_size=self.max_batch_size,
                                max_batch_count=self.max_batch_count)


_TYPES: dict[str, type] = {f.name: {"bool": bool, "str": str, "float": float, "tuple[str, ...]": tuple,
                               "dict[str, Any]": dict}.get(
    str(f.type), int) for f in fields(Settings)}
# Every whole-number setting has a range, checked on every path (config.yaml, the API, the UI): a value
# outside it is refused with the range, never clamped. The maxima keep one bad value from breaking
# every later job or the server (ENSD is added to a seed, so it stays within what a seed may be).
INT_RANGES: dict[str, tuple[int, int]] = {
    "queue_limit": (1, 1024), "max_image_size": (64, 8192), "max_batch_size": (1, 64),
    "max_batch_count": (1, 1000), "confirm_images_above": (1, 100_000),
    "clip_skip": (1, GenerationLimits.max_clip_skip),
    "eta_noise_seed_delta": (0, MAX_SEED), "checkpoint_cache": (0, 8),
    "show_progress_every_n_steps": PREVIEW_EVERY_RANGE, "esrgan_tile": (0, 512), "esrgan_tile_overlap": (0, 48),
    "jpeg_quality": (1, 100), "n_rows": (-1, 16), "remote_retries": (0, 5),
}
_CHOICES: dict[str, tuple[str, ...]] = {"randn_source": tuple(r.value for r in RngSource), "samples_format": IMAGE_FORMATS,
                                        "grid_format": IMAGE_FORMATS, "save_images_replace_action": REPLACE_ACTIONS,
                                        "lora_preferred_name": LORA_NAME_CHOICES}
_CHOICE_CHECKS: dict[str, Callable[[object], str | None]] = {"show_progress_type": preview_method_problem,
                                                              "face_restoration_model": face_restorer_problem,
                                                              "emphasis": emphasis_problem,
                                                              **{key: functools.partial(outdir_problem, key)
                                                                 for key in OUTDIR_DEFAULTS},
                                                              "openai_base_url": lambda v: _url_problem(v),
                                                              "google_base_url": lambda v: _url_problem(v)}
SESSION_HOURS_RANGE = (0.05, 24.0 * 366)  # three minutes to a year
REMOTE_TIMEOUT_RANGE = (1.0, 900.0)  # seconds one provider call may take
SECRET_SETTINGS = frozenset({"openai_api_key", "google_api_key"})  # never shown back, logged or echoed


def _session_hours_problem(value: object) -> str | None:
    low, high = SESSION_HOURS_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return f"must be a number of hours from {low:g} to {high:g}, got {value!r}"
    return None


def _remote_timeout_problem(value: object) -> str | None:
    low, high = REMOTE_TIMEOUT_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return f"must be a number of seconds from {low:g} to {high:g}, got {value!r}"
    return None


# Every number setting says what it allows (its range) in its own check.
_FLOAT_CHECKS: dict[str, Callable[[object], str | None]] = {
    "code_former_weight": code_former_weight_problem,
    "session_hours": _session_hours_problem,
    "remote_timeout": _remote_timeout_problem,
    **{name: (lambda value, name=name: sampler_param_problem(name, value)) for name in SAMPLER_PARAM_NAMES}}
FLOAT_RANGES: dict[str, tuple[float, float]] = {"code_former_weight": CODE_FORMER_WEIGHT_RANGE,
                                                "session_hours": SESSION_HOURS_RANGE,
                                                "remote_timeout": REMOTE_TIMEOUT_RANGE,
                                                **SAMPLER_PARAM_RANGES}  # shown by the UI
MAX_LIST_ITEMS = 64
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


def _url_problem(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS or not value.isprintable():
        return f"must be a URL of at most {MAX_TEXT_CHARS} characters, got {str(value)[:60]!r}"
    if value and not value.startswith(("http://", "https://")):
        return f"must be an http:// or https:// URL (or empty for the provider's own), got {value[:60]!r}"
    return None


def _secret_problem(value: object) -> str | None:
    if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS or not value.isprintable() or not _is_unicode(value):
        return f"must be printable text of at most {MAX_TEXT_CHARS} characters (the value is not shown)"
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
    if key in SECRET_SETTINGS:  # its message never quotes the value
        return _secret_problem(value)
    if expected is bool:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if expected is str:
        return _text_problem(key, value)
    if expected is float:
        return _FLOAT_CHECKS[key](value)
    if expected is tuple:
        return _names_problem(value)
    if key == "remote_prices":
        return prices_problem(value)
    if expected is dict:
        return extras_problem(value)
    return _int_problem(key, value)


def _names_problem(value: object) -> str | None:
    """Why ``value`` is not a list of option names (quicksettings_list)."""
    from modules.options_table import BY_NAME  # the one table of option names

    if not isinstance(value, (list, tuple)) or len(value) > MAX_LIST_ITEMS:
        return f"must be a list of at most {MAX_LIST_ITEMS} option names, got {value!r}"
    unknown = [name for name in value if not isinstance(name, str) or name not in BY_NAME]
    if unknown:
        return f"must name options ({', '.join(BY_NAME)}); unknown: {', '.join(map(repr, unknown))}"
    return None


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
    return dataclasses.replace(Settings(), **{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def save_settings(path: Path, settings: Settings) -> None:
    """Write the settings that differ from the defaults, atomically (a crash keeps the old file)."""
    changed = {f.name: _plain(getattr(settings, f.name)) for f in fields(Settings)
               if getattr(settings, f.name) != getattr(Settings(), f.name)}
    write_text_atomic(path, yaml.safe_dump(changed, sort_keys=True) if changed else "")


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value  # YAML's list, as safe_load reads it back
