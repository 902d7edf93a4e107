"""A1111's option names in one table: the server setting each one is, and the request field that
a per-request ``override_settings`` entry sets for one job.

``GET``/``POST /sdapi/v1/options``, the API's ``override_settings`` and the front's server defaults
all read this table; nothing else maps option names. Pure data and parsing, no torch.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from modules.params import (
    EMPHASIS_MODES,
    FACE_RESTORERS,
    LORA_NAME_CHOICES,
    PreviewMethod,
    code_former_weight_problem,
    emphasis_problem,
    face_restorer_problem,
    preview_every_problem,
    preview_method_problem,
)
from modules.sampler_params import LABELS as SAMPLER_PARAM_LABELS
from modules.sampler_params import NAMES as SAMPLER_PARAM_NAMES
from modules.sampler_params import parse_param
from modules.samplers import RngSource

CHECKPOINT_OPTION = "sd_model_checkpoint"
CHECKPOINT_CACHE_OPTION = "sd_checkpoint_cache"


def _sampler_param(name: str) -> Callable[[object], float]:
    return lambda value: parse_param(name, value)


def _whole(value: object) -> int:
    """``20``, ``"20"``, ``20.0`` and ``"20.0"`` are 20; ``7.5``, text and booleans are refused."""
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value.strip()) if "." in value or "e" in value.lower() else int(value.strip())
        except ValueError:
            number = None
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueError(f"must be a whole number, got {value!r}")
    return number


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a number of seconds, got {value!r}")
    return float(value)


def _url(value: object) -> str:
    """A provider's base URL, or "" for the provider's own."""
    if not isinstance(value, str) or (value.strip() and not value.strip().startswith(("http://", "https://"))):
        raise ValueError(f"must be an http:// or https:// URL, or empty, got {value!r}")
    return value.strip()


def _name(what: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"must be {what}")
        return value.strip()

    return parse


def _rng(value: object) -> RngSource:
    label = str(value).strip().upper()
    if label not in {r.value for r in RngSource}:
        raise ValueError(f"must be one of {', '.join(r.value for r in RngSource)}, got {value!r}")
    return RngSource(label)


def _preview_method(value: object) -> PreviewMethod:
    problem = preview_method_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return PreviewMethod(value)


def _preview_every(value: object) -> int:
    try:
        number: object = _whole(value)
    except ValueError:
        number = value  # refused below, naming the range
    problem = preview_every_problem(number)
    if problem is not None:
        raise ValueError(problem)
    assert isinstance(number, int)
    return number


def _face_restorer(value: object) -> str:
    """A restorer's name in any case ("codeformer") as A1111 spells it; others refused, naming the choices."""
    wanted = value.strip().lower() if isinstance(value, str) else None
    found = next((name for name in FACE_RESTORERS if name.lower() == wanted), None)
    if found is None:
        raise ValueError(face_restorer_problem(value))
    return found


def _code_former_weight(value: object) -> float:
    """A number from 0 to 1 (``0.5`` or ``"0.5"``); others refused, naming the range."""
    number: object = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = value
    problem = code_former_weight_problem(number)
    if problem is not None:
        raise ValueError(problem)
    return float(number)  # type: ignore[arg-type]


def _emphasis(value: object) -> str:
    problem = emphasis_problem(value)
    if problem is not None:
        raise ValueError(problem)
    assert isinstance(value, str)
    return value


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(name, str) for name in value):
        raise ValueError(f"must be a list of option names, got {value!r}")
    return tuple(value)


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


class Section(enum.Enum):
    """The Settings tab's sections, in A1111's order and with its titles."""

    SAVING = "Saving images/grids"
    PATHS = "Paths for saving"
    STABLE_DIFFUSION = "Stable Diffusion"
    SAMPLER = "Sampler parameters"
    IMG2IMG = "img2img"
    UPSCALING = "Upscaling"
    FACE_RESTORATION = "Face restoration"
    LIVE_PREVIEWS = "Live previews"
    EXTRA_NETWORKS = "Extra Networks"
    USER_INTERFACE = "User interface"
    SYSTEM = "System"  # the server's own limits (Atelier's; A1111 has no such options)
    REMOTE_ENGINES = "Remote engines"  # hosted models (Atelier's; keys are set beside them, never as options)


class Takes(enum.Enum):
    """When a changed option takes effect, as the Settings tab marks it."""

    NEXT_JOB = ""  # the next job, with no mark
    RELOAD = "needs a page reload"
    RESTART = "needs a restart"


class Editor(enum.Enum):
    """How the Settings tab edits an option; its list of choices where it has one."""

    AUTO = "auto"  # from the setting's type: a checkbox, a number (with its range) or a text box
    CHECKPOINT = "checkpoint"  # the checkpoints the server lists
    VAE = "vae"  # "Automatic", "None" and the VAE files
    UPSCALER = "upscaler"  # the upscalers /sdapi/v1/upscalers lists
    CHOICES = "choices"  # the option's own fixed ``choices``


@dataclass(frozen=True)
class Option:
    """One A1111 option: its name, the server setting it is (None: the server's checkpoint
    selection), and the request field it sets for one job (None: it has no per-job meaning).

    ``section``, ``label``, ``editor``, ``choices`` and ``takes`` are how the Settings tab shows it."""

    name: str
    setting: str | None
    field: str | None
    parse: Callable[[object], object]  # an override's value as the request field wants it (ValueError)
    section: Section = Section.STABLE_DIFFUSION
    label: str = ""
    editor: Editor = Editor.AUTO
    choices: tuple[str, ...] = ()
    takes: Takes = Takes.NEXT_JOB

    def stored(self, value: object) -> object:
        """A value sent to ``POST /options`` as the setting keeps it (RNG sources in upper case, lists as
        tuples)."""
        if isinstance(value, list):
            return tuple(value)
        if self.name == CHECKPOINT_CACHE_OPTION and isinstance(value, int) and not isinstance(value, bool):
            return max(value - 1, 0)  # A1111 counts the loaded checkpoint among those cached
        return value.upper() if self.name == "randn_source" and isinstance(value, str) else value

    def shown(self, value: object) -> object:
        """The setting's value as ``GET /options`` shows it (the reverse of :meth:`stored`)."""
        if self.name == CHECKPOINT_CACHE_OPTION and isinstance(value, int) and value > 0:
            return value + 1
        return value


S = Section
_FORMATS = ("png", "jpg", "jpeg", "webp")  # config.IMAGE_FORMATS
_TEXT = _name("text")


def _outdir(name: str, label: str) -> Option:
    return Option(name, name, None, _TEXT, S.PATHS, label)


# A1111's saving options: server settings only (override_settings with restore afterwards false sets them).
SAVING_OPTIONS: tuple[Option, ...] = (
    Option("samples_format", "samples_format", None, _TEXT, S.SAVING, "File format for images", Editor.CHOICES,
           _FORMATS),
    Option("samples_filename_pattern", "samples_filename_pattern", None, _TEXT, S.SAVING,
           "Images filename pattern ([seed], [prompt_spaces], [datetime<%Y%m%d>], ...; empty: [seed])"),
    Option("save_images_add_number", "save_images_add_number", None, _flag, S.SAVING,
           "Add number to filename when saving"),
    Option("save_images_replace_action", "save_images_replace_action", None, _TEXT, S.SAVING,
           "Saving the image to an existing file", Editor.CHOICES, ("Replace", "Add number suffix")),
    Option("grid_save", "save_grid", None, _flag, S.SAVING, "Always save all generated image grids"),
    Option("grid_format", "grid_format", None, _TEXT, S.SAVING, "File format for grids", Editor.CHOICES, _FORMATS),
    Option("return_grid", "return_grid", None, _flag, S.SAVING, "Show grid in gallery (and first among API images)"),
    Option("n_rows", "n_rows", None, _whole, S.SAVING,
           "Grid row count; use -1 for autodetect and 0 for it to be same as batch size"),
    Option("save_txt", "save_txt", None, _flag, S.SAVING, "Create a text file with infotext next to every image"),
    Option("jpeg_quality", "jpeg_quality", None, _whole, S.SAVING, "Quality for saved jpeg and webp images"),
    Option("save_to_dirs", "save_to_dirs", None, _flag, S.SAVING, "Save images to a subdirectory"),
    Option("grid_save_to_dirs", "grid_save_to_dirs", None, _flag, S.SAVING, "Save grids to a subdirectory"),
    Option("outputs_per_user", "outputs_per_user", None, _flag, S.SAVING,
           "Save each user's images under outputs/<user name>/ (the Gallery shows a user only their own)"),
    Option("directories_filename_pattern", "directories_filename_pattern", None, _TEXT, S.SAVING,
           "Directory name pattern"),
    _outdir("outdir_samples", "Output directory for images; if empty, defaults to three directories below"),
    _outdir("outdir_txt2img_samples", "Output directory for txt2img images"),
    _outdir("outdir_img2img_samples", "Output directory for img2img images"),
    _outdir("outdir_extras_samples", "Output directory for images from extras tab"),
    _outdir("outdir_grids", "Output directory for grids; if empty, defaults to two directories below"),
    _outdir("outdir_txt2img_grids", "Output directory for txt2img grids"),
    _outdir("outdir_img2img_grids", "Output directory for img2img grids"),
)
OPTIONS: tuple[Option, ...] = (
    Option(CHECKPOINT_OPTION, None, "checkpoint", _name("a checkpoint title, name, file name or hash"),
           S.STABLE_DIFFUSION, "Stable Diffusion checkpoint", Editor.CHECKPOINT),
    Option("CLIP_stop_at_last_layers", "clip_skip", "clip_skip", _whole, S.STABLE_DIFFUSION,
           "Clip skip: stop at the last layers of the text encoder"),
    Option("emphasis", "emphasis", "emphasis", _emphasis, S.STABLE_DIFFUSION, "Emphasis mode: how (text:1.1) "
           "weights change the text encoder's output", Editor.CHOICES, EMPHASIS_MODES),
    Option("eta_noise_seed_delta", "eta_noise_seed_delta", "eta_noise_seed_delta", _whole, S.SAMPLER,
           "Eta noise seed delta (ENSD): added to the seed of ancestral noise"),
    Option("randn_source", "randn_source", "rng", _rng, S.SAMPLER, "Random number generator source",
           Editor.CHOICES, tuple(r.value for r in RngSource)),
    Option("sd_vae", "sd_vae", "vae", _name("a VAE file name, 'Automatic' or 'None'"), S.STABLE_DIFFUSION,
           "SD VAE", Editor.VAE),
    Option("save_images_before_highres_fix", "save_images_before_highres_fix", "hires.save_first_pass", _flag,
           S.SAVING, "Save a copy of the image before applying highres fix"),
    Option("show_progress_type", "show_progress_type", "preview_method", _preview_method, S.LIVE_PREVIEWS,
           "Live preview display mode", Editor.CHOICES, tuple(p.value for p in PreviewMethod)),
    Option("show_progress_every_n_steps", "show_progress_every_n_steps", "preview_every", _preview_every,
           S.LIVE_PREVIEWS, "Live preview every N sampling steps (-1: only at the end)"),
    Option("face_restoration_model", "face_restoration_model", "face_restoration_model", _face_restorer,
           S.FACE_RESTORATION, "Face restoration model", Editor.CHOICES, tuple(FACE_RESTORERS)),
    Option("code_former_weight", "code_former_weight", "code_former_weight", _code_former_weight,
           S.FACE_RESTORATION, "CodeFormer weight (0: maximum effect, 1: minimum effect)"),
    Option("upscaler_for_img2img", "upscaler_for_img2img", "img2img_upscaler",
           _name("an upscaler's name as /sdapi/v1/upscalers lists it ('None': Lanczos)"), S.UPSCALING,
           "Upscaler for img2img", Editor.UPSCALER),
    Option("send_seed", "send_seed", None, _flag, S.USER_INTERFACE, "Send seed when sending prompt or image to "
           "other interface"),
    Option("send_size", "send_size", None, _flag, S.USER_INTERFACE, "Send size when sending prompt or image to "
           "another interface"),
    Option("confirm_images_above", "confirm_images_above", None, _whole, S.USER_INTERFACE,
           "Ask before starting a job of more images than this"),
    Option("ESRGAN_tile", "esrgan_tile", None, _whole, S.UPSCALING, "Tile size for upscaler models (0: no tiling)"),
    Option("ESRGAN_tile_overlap", "esrgan_tile_overlap", None, _whole, S.UPSCALING,
           "Tile overlap for upscaler models, in pixels"),
    *SAVING_OPTIONS,
    Option("lora_preferred_name", "lora_preferred_name", None, _TEXT, S.EXTRA_NETWORKS,
           "When adding to prompt, refer to Lora by", Editor.CHOICES, LORA_NAME_CHOICES),
    Option("quicksettings_list", "quicksettings_list", None, _names, S.USER_INTERFACE,
           "Quicksettings list: options shown at the top of the page", takes=Takes.RELOAD),
    *(Option(name, name, name, _sampler_param(name), S.SAMPLER, SAMPLER_PARAM_LABELS[name])
      for name in SAMPLER_PARAM_NAMES),
    Option("img2img_fix_steps", "img2img_fix_steps", "img2img_fix_steps", _flag, S.IMG2IMG,
           "With img2img, do exactly the amount of steps the slider specifies (normally you'd do less with less "
           "denoising)"),
    Option("live_previews_enable", "live_previews_enable", "live_previews", _flag, S.LIVE_PREVIEWS,
           "Show live previews of the created image"),
    Option("remote_engines", "remote_engines", None, _flag, S.REMOTE_ENGINES,
           "Offer remote engines (hosted models: openai/..., google/...) to every user"),
    Option("openai_base_url", "openai_base_url", None, _url, S.REMOTE_ENGINES,
           "OpenAI base URL (empty: OpenAI's own, or OPENAI_BASE_URL; any OpenAI-compatible server)"),
    Option("google_base_url", "google_base_url", None, _url, S.REMOTE_ENGINES, "Google base URL (empty: Google's own)"),
    Option("remote_timeout", "remote_timeout", None, _seconds, S.REMOTE_ENGINES,
           "Seconds one provider call may take"),
    Option("remote_retries", "remote_retries", None, _whole, S.REMOTE_ENGINES,
           "Retries of a call the provider answered with 429 or 5xx (with backoff)"),
    # A1111 counts the loaded checkpoint among those it caches; the setting counts the others.
    Option(CHECKPOINT_CACHE_OPTION, "checkpoint_cache", None, _whole, S.STABLE_DIFFUSION,
           "Checkpoints to cache in RAM (besides the loaded one; the API's sd_checkpoint_cache counts it too)",
           takes=Takes.RESTART),
)
BY_NAME: Mapping[str, Option] = MappingProxyType({option.name: option for option in OPTIONS})
BY_SETTING: Mapping[str, Option] = MappingProxyType({o.setting: o for o in OPTIONS if o.setting is not None})
BY_FIELD: Mapping[str, Option] = MappingProxyType({o.field: o for o in OPTIONS if o.field is not None})
