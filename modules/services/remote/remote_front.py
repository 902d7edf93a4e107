"""The front's rules for a job on a remote model, checked before it is queued.

A remote model has no sampler, so the sampling fields (steps, sampler, schedule, CFG, clip skip, the
VAE, ...) are not applied: the job says so in a note (reported with its result) and they go back to
their defaults. What would change the result the user expects is refused (422, naming the field): a
fixed seed or variation seed, hires fix, a refiner, face restoration, tiling, LoRA tags, a size the
model cannot make, more images per call than it makes, a quality or style it does not have, a
negative prompt it cannot take, an init image it cannot edit, and an extension asked to act.
"""

from __future__ import annotations

from dataclasses import fields, replace

from modules.errors import FieldError, ValidationError
from modules.extra_networks import extract_networks
from modules.params import GenerationRequest
from modules.services.remote.catalog import RemoteModel

# Request fields a remote model does not use, by the name the API gives them (what the note says).
NOT_APPLIED: dict[str, str] = {
    "steps": "steps", "sampler": "sampler_name", "schedule": "scheduler", "cfg_scale": "cfg_scale",
    "clip_skip": "clip_skip", "vae": "sd_vae", "distilled_cfg_scale": "distilled_cfg_scale", "shift": "shift",
    "eta_noise_seed_delta": "eta_noise_seed_delta", "rng": "randn_source", "emphasis": "emphasis",
    "eta_ancestral": "eta", "eta_ddim": "eta_ddim", "s_churn": "s_churn", "s_tmin": "s_tmin", "s_tmax": "s_tmax",
    "s_noise": "s_noise", "sigma_min": "sigma_min", "sigma_max": "sigma_max", "rho": "rho",
    "denoising_strength": "denoising_strength", "mask_blur": "mask_blur", "img2img_fix_steps": "img2img_fix_steps",
    "seed": "seed", "variation_seed": "subseed",
}
_DEFAULTS = GenerationRequest()
_SEEDS = ("seed", "variation_seed")  # refused when the user fixed them; noted for a script's cells
_OPTIONAL = frozenset(f.name for f in fields(GenerationRequest) if f.default is None)  # None: the server's


def remote_request(request: GenerationRequest, model: RemoteModel) -> GenerationRequest:
    """``request`` ready for ``model``: refused (ValidationError naming every field it cannot honour)
    or with its unused sampling fields reset and noted, its quality and style defaulted."""
    problems = _refusals(request, model) + _option_refusals(request, model)
    if problems:
        raise ValidationError(problems)
    unused = [name for name in NOT_APPLIED if name not in _SEEDS and _set(request, name)]
    if request.seed != -1:  # a script's cell (X/Y/Z fixes one seed for all): the seed is not applied
        unused.append("seed")
    notes = request.notes
    if unused:
        names = ", ".join(NOT_APPLIED[name] for name in unused)
        notes += (f"{model.title} does not use {names}: not applied (a remote model has no sampler).",)
    reset = {name: getattr(_DEFAULTS, name) for name in (*unused, "variation_seed")}
    return replace(request, **reset, checkpoint=model.title, notes=notes,
                   quality=request.quality or (model.qualities[0] if model.qualities else None),
                   style=request.style or (model.styles[0] if model.styles else None))


def _set(request: GenerationRequest, name: str) -> bool:
    """Whether the request gives ``name`` a value of its own (not its default, nor the server's)."""
    value = getattr(request, name)
    if name == "clip_skip" and value == 1:  # 1 skips nothing: what every model does
        return False
    if name in _OPTIONAL:
        return value is not None and name not in request.server_defaults
    if name in ("denoising_strength", "mask_blur") and request.init_image is None:
        return False
    return value != getattr(_DEFAULTS, name)


def _refusals(request: GenerationRequest, model: RemoteModel) -> list[FieldError]:
    name = model.title
    checks: list[tuple[bool, str, str]] = [
        (request.seed != -1 and request.part_of is None, "seed",
         f"{name} has no seed; use -1 (a fixed seed cannot be reproduced)"),
        (request.variation_strength > 0, "subseed_strength", f"{name} has no variation seeds; use 0"),
        (request.seed_resize is not None, "seed_resize_from_w", f"{name} has no seeds to resize"),
        (request.hires is not None, "enable_hr", f"{name} has no hires fix; ask for the size you want"),
        (request.refiner is not None, "refiner_checkpoint", f"{name} takes no refiner"),
        (request.restore_faces, "restore_faces", f"face restoration is not run on {name}'s images"),
        (request.tiling, "tiling", f"{name} cannot make seamless tiles"),
        (bool(request.per_image), "per_image", f"{name} takes one prompt per job"),
        (not model.supports_size(request.width, request.height), "width",
         f"{name} makes {model.size_text()}; {request.width}x{request.height} is not one of them"),
        (request.batch_size > model.max_images, "batch_size",
         f"{name} makes at most {model.max_images} image(s) per call; use batch_count for more"),
        (bool(request.negative_prompt.strip()) and not model.negative_prompt, "negative_prompt",
         f"{name} takes no negative prompt"),
        (_has_networks(request), "prompt", f"LoRA tags (<lora:...>) do not apply to {name}"),
    ]
    problems = [FieldError(field, message) for failed, field, message in checks if failed]
    return problems + _edit_refusals(request, model)


def _edit_refusals(request: GenerationRequest, model: RemoteModel) -> list[FieldError]:
    name = model.title
    if request.init_image is None:
        return []
    if not model.edits:
        return [FieldError("init_images", f"{name} offers no edits (img2img); choose a model that does")]
    problems = []
    if request.mask is not None and not model.masked_edits:
        problems.append(FieldError("mask", f"{name} offers no masked edits (inpainting)"))
    return problems


def _option_refusals(request: GenerationRequest, model: RemoteModel) -> list[FieldError]:
    problems = []
    options = (("quality", request.quality, model.qualities), ("style", request.style, model.styles))
    for field, value, allowed in options:
        if value is None:
            continue
        if not allowed:
            problems.append(FieldError(field, f"{model.title} has no {field} option"))
        elif value not in allowed:
            problems.append(FieldError(field, f"{model.title}'s {field} is one of {', '.join(allowed)}; got {value!r}"))
    return problems


def _has_networks(request: GenerationRequest) -> bool:
    """Whether a prompt carries extra-network tags (<lora:...>, <hypernet:...>): they would be sent as text."""
    for text, field in ((request.prompt, "prompt"), (request.negative_prompt, "negative_prompt")):
        try:
            found = extract_networks(text, field)
        except ValidationError:
            return True
        if found.loras or found.ignored:
            return True
    return False


def extension_refusals(model: RemoteModel, acting: list[str]) -> list[FieldError]:
    """Extensions asked to act on the job (an enabled ControlNet unit): a remote model runs none."""
    return [FieldError(f"alwayson_scripts.{name}", f"{model.title} runs no extensions; {name} would not apply")
            for name in acting]


def local_refusals(request: GenerationRequest) -> list[FieldError]:
    """A local checkpoint's job refuses the remote models' own options."""
    return [FieldError(name, f"{name} is an option of remote models (openai/..., google/...); "
                             "a local checkpoint has none")
            for name in ("quality", "style") if getattr(request, name) is not None]
