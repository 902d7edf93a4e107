"""Requests and results of generation. No torch here.

A Gradio click and a REST call both become one frozen :class:`GenerationRequest`. It is fully
described by plain values, so a job can be queued, logged, replayed or sent to another worker.
Its validation lives beside it, in :mod:`modules.request_checks`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modules.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_SCHEDULE,
    RngSource,
    ScheduleType,
)
from modules.upscalers import DEFAULT_UPSCALER

MAX_SEED = 2**32 - 1  # A1111 seeds are unsigned 32-bit


class ResizeMode(enum.Enum):
    """How an init image of another size is fitted (A1111's resize_mode 0-3); values are UI labels."""

    JUST_RESIZE = "Just resize"
    CROP_AND_RESIZE = "Crop and resize"
    RESIZE_AND_FILL = "Resize and fill"
    LATENT_UPSCALE = "Just resize (latent upscale)"

    @property
    def index(self) -> int:
        return list(ResizeMode).index(self)


class MaskedContent(enum.Enum):
    """What the masked area starts from (A1111's inpainting_fill 0-3); values as the infotext writes them."""

    FILL = "fill"
    ORIGINAL = "original"
    LATENT_NOISE = "latent noise"
    LATENT_NOTHING = "latent nothing"

    @property
    def index(self) -> int:
        return list(MaskedContent).index(self)


class PreviewMethod(enum.Enum):
    """How the live preview is drawn (A1111's option show_progress_type); values are A1111's labels."""

    APPROX_CHEAP = "Approx cheap"  # a fixed linear map from latent channels to colours: no network at all
    TAESD = "TAESD"  # the tiny autoencoder made for the model's latent space
    FULL = "Full"  # the model's own VAE: what the image will look like, at a VAE decode's cost


# A1111's preview methods Atelier does not offer, and why (a request for one is refused with this).
UNSUPPORTED_PREVIEW_METHODS: Mapping[str, str] = MappingProxyType({
    "Approx NN": "it needs the weights of a small network that Atelier does not ship",
})
PREVIEW_EVERY_RANGE = (-1, 32)  # A1111's range for show_progress_every_n_steps
DEFAULT_PREVIEW_EVERY = 10  # A1111's default
NO_LIVE_PREVIEW = -1


def preview_method_problem(value: object) -> str | None:
    """Why ``value`` is not a preview method Atelier draws ("must be one of ..."); None when it is."""
    labels = [m.value for m in PreviewMethod]
    if isinstance(value, str) and value in labels:
        return None
    problem = f"must be one of {', '.join(labels)}, got {value!r}"
    reason = UNSUPPORTED_PREVIEW_METHODS.get(value) if isinstance(value, str) else None
    return f"{problem} ({value} is not offered: {reason})" if reason else problem


def preview_every_problem(value: object) -> str | None:
    """Why ``value`` is not a preview period (whole steps from -1 to 32; -1: no live preview)."""
    low, high = PREVIEW_EVERY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"must be a whole number from {low} to {high} ({NO_LIVE_PREVIEW}: no live preview), got {value!r}"
    return None


@dataclass(frozen=True)
class LivePreview:
    """Which steps of a job get a live preview, and how it is drawn."""

    method: PreviewMethod = PreviewMethod.APPROX_CHEAP
    every: int = DEFAULT_PREVIEW_EVERY  # steps between previews; 0: every step; -1: none

    def due(self, step: int, total: int) -> bool:
        """Whether step ``step`` (1-based) of ``total`` gets one: every ``every``-th step and the last."""
        if self.every == NO_LIVE_PREVIEW:
            return False
        return self.every <= 1 or step % self.every == 0 or step >= total


# A1111's option "emphasis": how (x:1.2) weights change the text encoder's output. "Original" scales
# the hidden states and restores their mean (A1111's default), "No norm" scales without restoring,
# "Ignore" reads the brackets but ignores the weights, "None" reads brackets and BREAK as plain text.
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
DEFAULT_EMPHASIS = "Original"


def emphasis_problem(value: object) -> str | None:
    """Why ``value`` is not an emphasis mode (naming the modes); None when it is one."""
    return None if value in EMPHASIS_MODES else f"must be one of {', '.join(EMPHASIS_MODES)}, got {value!r}"


LORA_NAME_CHOICES = ("Alias from file", "Filename")  # A1111's lora_preferred_name: what a LoRA card's tag names

# A1111's face restorers (option face_restoration_model) and CodeFormer's fidelity weight (code_former_weight).
FACE_RESTORERS = ("CodeFormer", "GFPGAN")
DEFAULT_FACE_RESTORER = "CodeFormer"
DEFAULT_CODE_FORMER_WEIGHT = 0.5
CODE_FORMER_WEIGHT_RANGE = (0.0, 1.0)  # 0: the strongest restoration; 1: closest to the input


def face_restorer_problem(value: object) -> str | None:
    """Why ``value`` is not a face restorer's name ("must be one of ..."); None when it is one."""
    known = isinstance(value, str) and value in FACE_RESTORERS
    return None if known else f"must be one of {', '.join(FACE_RESTORERS)}, got {value!r}"


def code_former_weight_problem(value: object) -> str | None:
    """Why ``value`` is not a CodeFormer weight (a number from 0 to 1); None when it is one."""
    low, high = CODE_FORMER_WEIGHT_RANGE
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        return (f"must be a number from {low:g} to {high:g} (0: the strongest restoration, 1: closest to the "
                f"input), got {value!r}")
    return None


LATENT_SCALE = 8  # pixels per latent cell in every SD VAE
# Ranges the request checks (modules.request_checks) apply, and the UI states beside each field.
MIN_CFG_SCALE = 1.0  # the largest is GenerationLimits.max_cfg_scale
FRACTION_RANGE = (0.0, 1.0)  # strengths, visibilities, weights and the refiner's switch point
HIRES_SCALE_RANGE = (1.0, 8.0)  # A1111's hr_scale
# Forge's "Distilled CFG Scale" slider (FLUX.1 dev's guidance, distilled into the network) and the flow
# shift of a flow-matching family's sigmas (Forge Neo's "Shift"; None: the family's own rule).
DEFAULT_DISTILLED_CFG_SCALE = 3.5
DISTILLED_CFG_RANGE = (0.0, 30.0)
SHIFT_RANGE = (0.1, 30.0)  # 0 would put every sigma at 0
VAE_AUTOMATIC = "Automatic"  # A1111: a VAE named like the checkpoint if there is one, else the checkpoint's own
VAE_NONE = "None"  # the checkpoint's own VAE


@dataclass(frozen=True)
class HiresFix:
    """A1111's hires fix: txt2img at the requested size, then a second img2img pass at a larger one."""

    scale: float = 2.0
    resize_width: int = 0  # 0 and 0: the size comes from ``scale``; one set: the other keeps the ratio
    resize_height: int = 0
    upscaler: str = DEFAULT_UPSCALER
    steps: int = 0  # second-pass steps; 0 = as many as the first pass
    denoising_strength: float = 0.7
    sampler: str | None = None  # None = the first pass's sampler
    schedule: ScheduleType | None = None  # None = the first pass's schedule
    prompt: str = ""  # "" = the first pass's prompt
    negative_prompt: str = ""
    save_first_pass: bool | None = None  # also save the image before the second pass; None = the server's option

    def upscale_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the first pass is upscaled to (A1111's hr_upscale_to), multiples of 8. With both
        resize sides set it covers the target keeping the aspect ratio; :meth:`final_size` crops it."""
        if not self.resize_width and not self.resize_height:
            w, h = int(width * self.scale), int(height * self.scale)
        elif not self.resize_height:
            w, h = self.resize_width, self.resize_width * height // width
        elif not self.resize_width:
            w, h = self.resize_height * width // height, self.resize_height
        elif width / height < self.resize_width / self.resize_height:
            w, h = self.resize_width, self.resize_width * height // width
        else:
            w, h = self.resize_height * width // height, self.resize_height
        return w // LATENT_SCALE * LATENT_SCALE, h // LATENT_SCALE * LATENT_SCALE

    def final_size(self, width: int, height: int) -> tuple[int, int]:
        if self.resize_width and self.resize_height:
            return self.resize_width, self.resize_height
        return self.upscale_size(width, height)


@dataclass(frozen=True)
class Refiner:
    """A1111's refiner: a second checkpoint takes over when ``switch_at`` of the denoising is done."""

    checkpoint: str
    switch_at: float = 0.8


@dataclass(frozen=True)
class GenerationLimits:
    """Bounds a request must respect; a shared instance can lower them for a small GPU."""

    min_size: int = 64
    max_size: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 100
    max_cfg_scale: float = 30.0
    max_clip_skip: int = 12
    max_prompt_chars: int = 30_000
    max_mask_blur: int = 64


@dataclass(frozen=True)
class ImagePrompt:
    """One image's own prompt, negative prompt and seed inside a job (A1111's ``all_prompts[i]``,
    ``all_seeds[i]``), set by extensions' PLAN_IMAGES hooks; None keeps the job's."""

    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides the pixels of a job. Defaults follow A1111's UI.

    With ``init_image`` it is img2img (the image's encoded bytes, PNG or JPEG); with a ``mask`` as
    well (white = repaint), inpainting. Images travel as bytes so a request stays a plain value.
    """

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    schedule: ScheduleType = DEFAULT_SCHEDULE
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1  # -1 = pick a random seed when the job starts
    batch_count: int = 1
    batch_size: int = 1
    # None in the five fields below: the server's setting, filled in once by the front when the job
    # is prepared (a per-request override is a value here).
    clip_skip: int | None = None
    checkpoint: str | None = None  # title, name or hash; None = the server's selected checkpoint
    variation_seed: int = -1  # A1111's subseed; -1 = random when variation_strength > 0
    variation_strength: float = 0.0
    eta_noise_seed_delta: int | None = None  # ENSD: reseeds ancestral noise with seed + delta
    rng: RngSource | None = None
    init_image: bytes | None = None
    mask: bytes | None = None
    denoising_strength: float = 0.75
    mask_blur: int = 4
    resize_mode: ResizeMode = ResizeMode.JUST_RESIZE
    masked_content: MaskedContent = MaskedContent.ORIGINAL
    tiling: bool = False  # seamless tiling: the image's opposite edges continue each other
    restore_faces: bool = False  # A1111's "Restore faces": every face in each image, after it is decoded
    invert_mask: bool = False  # A1111's mask mode "Inpaint not masked"
    inpaint_only_masked: bool = False  # A1111's inpaint area "Only masked" (inpaint_full_res)
    only_masked_padding: int = 32  # pixels around the mask's box, for "Only masked"
    styles: tuple[str, ...] = ()  # style names to apply to the prompts when the job is submitted
    applied_styles: tuple[str, ...] = ()  # what was applied (the prompts already contain it): for the infotext
    save_images: bool = True  # False: images only come back to the caller (A1111's API default)
    hires: HiresFix | None = None  # txt2img only
    refiner: Refiner | None = None
    seed_resize_from_width: int = 0  # A1111's "resize seed from": noise made at this size, centred; 0 = off
    seed_resize_from_height: int = 0
    vae: str | None = None  # VAE_AUTOMATIC, VAE_NONE or a VAE file name; None = the current setting
    # The live preview (A1111's options show_progress_type, show_progress_every_n_steps); None = the server's.
    preview_method: PreviewMethod | None = None
    preview_every: int | None = None
    # Face restoration (A1111's options face_restoration_model, code_former_weight); None = the server's.
    face_restoration_model: str | None = None
    code_former_weight: float | None = None
    # What enlarges an init image to the job's size (A1111's option upscaler_for_img2img): "None" is
    # Lanczos, or Nearest, or an upscaler model; None = the server's.
    img2img_upscaler: str | None = None
    emphasis: str | None = None  # one of EMPHASIS_MODES (A1111's option "emphasis"); None = the server's
    # Flow families (Forge's fields): distilled guidance (families with it; others refuse another value)
    # and the sigma shift (None: the family's own, a fixed value or one from the image size).
    distilled_cfg_scale: float = DEFAULT_DISTILLED_CFG_SCALE
    shift: float | None = None
    # (k, n): this job is job k of a script's n (an X/Y/Z plot's cells), for the progress shown.
    part_of: tuple[int, int] | None = None
    quality: str | None = None  # a remote model's options (None: its default); a local checkpoint refuses them
    style: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)  # the front's, on the job: reported with its result
    # A1111's sampler parameters (options eta_ancestral, eta_ddim, s_churn, s_tmin, s_tmax, s_noise,
    # sigma_min, sigma_max, rho; see modules.sampler_params); None = the server's.
    eta_ancestral: float | None = None
    eta_ddim: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None
    rho: float | None = None
    img2img_fix_steps: bool | None = None  # A1111's option: img2img runs exactly ``steps``; None = the server's
    live_previews: bool | None = None  # A1111's live_previews_enable; False: no live preview; None = the server's
    # Extensions' values by extension name, then parameter name (A1111's alwayson_scripts, by name).
    extension_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Per-image prompts and seeds (one entry per image of the job, or none): what extensions'
    # PLAN_IMAGES hooks decided on the front; the renderer and the infotext honour them.
    per_image: tuple[ImagePrompt, ...] = ()
    # The user the job belongs to (None: no login), set by the front when it queues the job, so
    # hooks on a worker name them too. It never changes the pixels.
    owner: str | None = field(default=None, compare=False)
    job_id: str | None = field(default=None, compare=False)  # set by the queue: what its saved files are filed under
    # Fields the front filled from the server's settings (not the request's own): on a model family
    # that cannot use the setting (clip skip, an SD VAE on a flow model) they yield to its own.
    server_defaults: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def is_img2img(self) -> bool:
        return self.init_image is not None

    @property
    def live_preview(self) -> LivePreview:
        """The live preview this job asked for; what it leaves unset, as A1111's defaults."""
        every = DEFAULT_PREVIEW_EVERY if self.preview_every is None else self.preview_every
        return LivePreview(self.preview_method or PreviewMethod.APPROX_CHEAP,
                           NO_LIVE_PREVIEW if self.live_previews is False else every)

    @property
    def seed_resize(self) -> tuple[int, int] | None:
        """(width, height) the noise is made at, when "resize seed from" is on."""
        if self.seed_resize_from_width > 0 and self.seed_resize_from_height > 0:
            return self.seed_resize_from_width, self.seed_resize_from_height
        return None

    @property
    def output_size(self) -> tuple[int, int]:
        """The size of the images the job returns (after hires fix, if any)."""
        if self.hires is not None:
            return self.hires.final_size(self.width, self.height)
        return self.width, self.height

    @property
    def images_per_job(self) -> int:
        return self.batch_count * self.batch_size

    def seed_for(self, index: int) -> int:
        """Seed of image ``index`` (A1111: seed + i; with variations the seed stays; an extension's
        per-image seed wins). Needs a resolved seed."""
        own = self.per_image[index].seed if index < len(self.per_image) else None
        if own is not None:
            return own
        return self.seed if self.variation_strength > 0 else self.seed + index

    def prompts_for(self, index: int) -> tuple[str, str]:
        """(prompt, negative prompt) of image ``index``: an extension's per-image ones, else the job's."""
        own = self.per_image[index] if index < len(self.per_image) else ImagePrompt()
        return (own.prompt if own.prompt is not None else self.prompt,
                own.negative_prompt if own.negative_prompt is not None else self.negative_prompt)

    def variation_seed_for(self, index: int) -> int:
        """With variations the seed stays and the variation seed goes up (A1111's subseed + i)."""
        return self.variation_seed + index


@dataclass(frozen=True)
class GeneratedImage:
    """One image of a job: its PNG (parameters embedded), where it was saved, its seed and text."""

    path: Path | None  # None when the request asked not to save
    seed: int
    infotext: str
    index: int  # position in the job, 0-based; -1 for the grid
    png: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class ModelsUsed:
    """Which checkpoint and VAE made a job's images (A1111's sd_model_name/hash, sd_vae_name/hash),
    as fields, so no reply has to read them back out of an infotext."""

    checkpoint_title: str = ""  # "name.safetensors [hash]"
    checkpoint_name: str = ""  # the file stem the infotext calls Model
    checkpoint_hash: str | None = None  # first 10 hex digits of its sha256
    vae_name: str | None = None  # None: the checkpoint's own VAE
    vae_hash: str | None = None


@dataclass(frozen=True)
class GenerationResult:
    """What a finished (or interrupted) job produced."""

    request: GenerationRequest  # normalised: concrete seed, canonical sampler
    images: tuple[GeneratedImage, ...]
    grid: GeneratedImage | None = None
    interrupted: bool = False
    model_title: str = ""
    elapsed_seconds: float = 0.0
    warnings: tuple[str, ...] = field(default_factory=tuple)
    models: ModelsUsed = field(default_factory=ModelsUsed)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(image.seed for image in self.images)
