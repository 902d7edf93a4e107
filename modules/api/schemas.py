"""Request and response bodies of the A1111-compatible REST API, in A1111's field names and shapes.

Parsing is as lenient as the clients written against A1111 need: unknown fields are ignored,
``null`` means "the default", numeric strings ("7.0") and integral floats (15.0) become numbers,
and ``"true"``/``"false"`` become booleans. A value that cannot be read (``"7.5"`` steps, ``"abc"``
cfg) is a validation error naming its field. Nothing here decides what a value means for
generation: :mod:`modules.api.convert` maps bodies onto :class:`~modules.params.GenerationRequest`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _shown(value: object) -> str:
    """A client's value for an error message, cut short: a message must not echo megabytes back."""
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number_text(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"must be a number, got {_shown(text)}") from None


def coerce_int(value: object) -> object:
    """``20``, ``"20"``, ``20.0`` and ``"20.0"`` are 20; ``7.5``, ``"abc"`` and booleans are refused."""
    original = value
    if isinstance(value, bool):
        raise ValueError(f"must be a whole number, got {_shown(value)}")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            value = _number_text(value)
    if isinstance(value, float):
        if not value.is_integer():  # also refuses inf and nan
            raise ValueError(f"must be a whole number, got {_shown(original)}")
        return int(value)
    return value


def coerce_float(value: object) -> object:
    """``7``, ``"7.0"`` and ``7.5`` are numbers; text that is not a number, booleans, inf and nan are refused."""
    original = value
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {_shown(value)}")
    if isinstance(value, str):
        value = _number_text(value)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"must be a finite number, got {_shown(original)}")
        return number
    return value


def coerce_flag(value: object) -> object:
    """A1111's 0/1 integer switches; clients send them as booleans too."""
    if isinstance(value, bool):
        return int(value)
    return coerce_int(value)


LenientInt = Annotated[int, BeforeValidator(coerce_int)]
LenientFloat = Annotated[float, BeforeValidator(coerce_float)]
LenientFlag = Annotated[int, BeforeValidator(coerce_flag)]
# pydantic's lax booleans already take true/false, "true"/"false" (any case), 0/1, "yes"/"no".
LenientBool = bool


class _LenientBody(BaseModel):
    """Unknown fields are ignored, ``null`` means the field's default, numbers may arrive as text."""

    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True)

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: object) -> object:
        # Dropping the key (rather than storing None) keeps the field out of model_fields_set,
        # so "sent as null" and "not sent" are the same thing everywhere downstream.
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data


class Txt2ImgBody(_LenientBody):
    """``POST /sdapi/v1/txt2img``. Defaults are A1111's API defaults (which differ from its UI's)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = Field(default_factory=list)
    seed: LenientInt = -1
    subseed: LenientInt = -1
    subseed_strength: LenientFloat = 0.0
    seed_resize_from_h: LenientInt = -1
    seed_resize_from_w: LenientInt = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"  # A1111's legacy field; sampler_name wins when both are set
    scheduler: str | None = None
    batch_size: LenientInt = 1
    n_iter: LenientInt = 1
    steps: LenientInt = 50
    cfg_scale: LenientFloat = 7.0
    distilled_cfg_scale: LenientFloat = 3.5  # Forge's: FLUX.1 dev's distilled guidance
    shift: LenientFloat | None = None  # Forge's: a flow family's sigma shift; null: the family's own
    quality: str | None = None  # Atelier's: a remote model's quality ("hd", "high"); null: the model's default
    style: str | None = None  # Atelier's: a remote model's style ("vivid", "natural"); null: the model's default
    width: LenientInt = 512
    height: LenientInt = 512
    clip_skip: LenientInt | None = None  # not A1111's, but many clients send it; wins over the option
    restore_faces: LenientBool | None = None
    tiling: LenientBool | None = None
    do_not_save_samples: LenientBool = False
    do_not_save_grid: LenientBool = False
    eta: LenientFloat | None = None
    denoising_strength: LenientFloat | None = 0.75
    s_min_uncond: LenientFloat | None = None
    s_churn: LenientFloat | None = None
    s_tmax: LenientFloat | None = None
    s_tmin: LenientFloat | None = None
    s_noise: LenientFloat | None = None
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: LenientBool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: LenientFloat | None = None
    disable_extra_networks: LenientBool = False
    comments: dict[str, Any] | None = None
    enable_hr: LenientBool = False
    firstphase_width: LenientInt = 0
    firstphase_height: LenientInt = 0
    hr_scale: LenientFloat = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: LenientInt = 0
    hr_resize_x: LenientInt = 0
    hr_resize_y: LenientInt = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] | dict[str, Any] = Field(default_factory=list)  # by position (A1111) or by name
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: LenientBool = True
    save_images: LenientBool = False
    infotext: str | None = None


class Img2ImgBody(Txt2ImgBody):
    """``POST /sdapi/v1/img2img``: txt2img's fields plus the input image, the mask and inpaint options."""

    init_images: list[str] = Field(default_factory=list)  # base64, raw or as data: URLs
    resize_mode: LenientInt = 0
    image_cfg_scale: LenientFloat | None = None
    mask: str | None = None  # base64; white = repaint (unless inpainting_mask_invert)
    mask_blur: LenientInt = 4
    mask_blur_x: LenientInt = 4  # accepted, not used: mask_blur applies to both axes
    mask_blur_y: LenientInt = 4
    mask_round: LenientBool = True
    inpainting_fill: LenientInt = 0
    inpaint_full_res: LenientBool = True
    inpaint_full_res_padding: LenientInt = 0
    inpainting_mask_invert: LenientFlag = 0
    initial_noise_multiplier: LenientFloat | None = None
    latent_mask: str | None = None
    include_init_images: LenientBool = False


# --- responses ---------------------------------------------------------------------------------


class ImagesResponse(BaseModel):
    """txt2img/img2img reply: raw base64 PNGs, the request echoed, and ``info`` as a JSON string."""

    images: list[str] = Field(default_factory=list)
    parameters: dict[str, Any] = Field(default_factory=dict)
    info: str = ""


class ProgressState(BaseModel):
    """A1111's ``state`` object; the defaults describe an idle server (clients wait for job_count 0)."""

    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = 0.0
    eta_relative: float = 0.0
    state: ProgressState = Field(default_factory=ProgressState)
    current_image: str | None = None  # raw base64 PNG of the live preview
    textinfo: str | None = None


class PNGInfoBody(_LenientBody):
    image: str = ""  # base64, raw or a data: URL


class PNGInfoResponse(BaseModel):
    info: str = ""
    items: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)


class SamplerItem(BaseModel):
    name: str
    aliases: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)


class SchedulerItem(BaseModel):
    name: str  # the API name, e.g. "karras"
    label: str  # the UI and infotext label, e.g. "Karras"
    aliases: list[str] | None = None
    default_rho: float | None = None
    need_inner_model: bool | None = None


class SDModelItem(BaseModel):
    title: str  # "name.safetensors [hash]", the value of option sd_model_checkpoint
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None
    family: str | None = None  # Atelier's: the model family's key ("flux_dev"), when known
    family_label: str | None = None  # ... and its name ("FLUX.1 dev")


class RemoteModelItem(BaseModel):
    """``GET /sdapi/v1/remote-models``: a hosted model on offer, what it supports and costs."""

    title: str  # "openai/dall-e-3": the value of sd_model_checkpoint that selects it
    provider: str
    model: str
    sizes: list[str]  # "1024x1024", ...
    qualities: list[str]  # the first is the default; empty: no quality option
    styles: list[str]
    max_images_per_call: int  # the largest batch_size
    negative_prompt: bool
    edits: bool  # img2img
    masked_edits: bool  # inpainting
    known: bool  # from Atelier's table (false: only the provider's server lists it)
    prices: dict[str, float | None]  # dollars per image by size (and quality), null: not in the price table


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class SDModuleItem(BaseModel):
    """Forge's /sd-modules entry: a text encoder or VAE file a checkpoint without its own may use."""

    model_name: str  # the file name
    filename: str  # its path


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class MemoryResponse(BaseModel):
    ram: dict[str, Any] = Field(default_factory=dict)
    cuda: dict[str, Any] = Field(default_factory=dict)


class WorkerItem(BaseModel):
    """One worker of GET /sdapi/v1/workers (Atelier's own endpoint, not A1111's)."""

    name: str
    host: str
    device: str
    model: str | None = None  # the checkpoint it holds (title)
    state: str = "idle"  # idle, busy or draining (leaving once its job is done)
    busy: bool = False
    jobs_done: int = 0
    job_id: str | None = None


class WorkersResponse(BaseModel):
    mode: str  # "local": the in-process worker; "ray": workers on a Ray cluster
    workers: list[WorkerItem] = Field(default_factory=list)


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ExtensionItem(BaseModel):
    name: str
    remote: str = ""
    branch: str = ""
    commit_hash: str = ""
    version: str = ""
    commit_date: int | str = 0
    enabled: bool = True
    state: str = "enabled"  # enabled, disabled or failed (not A1111's; clients ignore it)
    error: str = ""
    api_version: str = ""  # the extension API versions its manifest states ("2", ">=1,<3"); Atelier's own
    runs_as_api: int | None = None  # the version Atelier runs it as (None: not loaded)
