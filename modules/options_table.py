"""A1111's option names in one table: the server setting each one is, and the request field that
a per-request ``override_settings`` entry sets for one job.

``GET``/``POST /sdapi/v1/options``, the API's ``override_settings`` and the front's server defaults
all read this table; nothing else maps option names. Pure data and parsing, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from modules.params import (
    FACE_RESTORERS,
    PreviewMethod,
    code_former_weight_problem,
    face_restorer_problem,
    preview_every_problem,
    preview_method_problem,
)
from modules.samplers import RngSource

CHECKPOINT_OPTION = "sd_model_checkpoint"


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


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Option:
    """One A1111 option: its name, the server setting it is (None: the server's checkpoint
    selection), and the request field it sets for one job (None: it has no per-job meaning)."""

    name: str
    setting: str | None
    field: str | None
    parse: Callable[[object], object]  # an override's value as the request field wants it (ValueError)

    def stored(self, value: object) -> object:
        """A value sent to ``POST /options`` as the setting keeps it (RNG sources in upper case)."""
        return value.upper() if self.name == "randn_source" and isinstance(value, str) else value


OPTIONS: tuple[Option, ...] = (
    Option(CHECKPOINT_OPTION, None, "checkpoint", _name("a checkpoint title, name, file name or hash")),
    Option("CLIP_stop_at_last_layers", "clip_skip", "clip_skip", _whole),
    Option("eta_noise_seed_delta", "eta_noise_seed_delta", "eta_noise_seed_delta", _whole),
    Option("randn_source", "randn_source", "rng", _rng),
    Option("sd_vae", "sd_vae", "vae", _name("a VAE file name, 'Automatic' or 'None'")),
    Option("save_images_before_highres_fix", "save_images_before_highres_fix", "hires.save_first_pass", _flag),
    Option("show_progress_type", "show_progress_type", "preview_method", _preview_method),
    Option("show_progress_every_n_steps", "show_progress_every_n_steps", "preview_every", _preview_every),
    Option("face_restoration_model", "face_restoration_model", "face_restoration_model", _face_restorer),
    Option("code_former_weight", "code_former_weight", "code_former_weight", _code_former_weight),
    Option("upscaler_for_img2img", "upscaler_for_img2img", "img2img_upscaler",
           _name("an upscaler's name as /sdapi/v1/upscalers lists it ('None': Lanczos)")),
    Option("send_seed", "send_seed", None, _flag),
    Option("send_size", "send_size", None, _flag),
    Option("ESRGAN_tile", "esrgan_tile", None, _whole),
    Option("ESRGAN_tile_overlap", "esrgan_tile_overlap", None, _whole),
)
BY_NAME: Mapping[str, Option] = MappingProxyType({option.name: option for option in OPTIONS})
BY_SETTING: Mapping[str, Option] = MappingProxyType({o.setting: o for o in OPTIONS if o.setting is not None})
BY_FIELD: Mapping[str, Option] = MappingProxyType({o.field: o for o in OPTIONS if o.field is not None})
