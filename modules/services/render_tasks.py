"""How a job's request becomes the engine's tasks: one per run of images that share their prompts,
with its seeds and noise, and hires fix's second pass. Plain functions of the request; the renderer
calls them batch by batch.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL import Image

from modules.engine.generate import ImageTask
from modules.engine.hires import HiresPlan
from modules.engine.loaded_model import LoadedModel
from modules.engine.sampling.loop import NoisePlan
from modules.errors import AddonNotFoundError, ValidationError
from modules.extra_networks import extract_networks
from modules.model_families import Feature
from modules.params import DEFAULT_EMPHASIS, LATENT_SCALE, GenerationRequest
from modules.request_checks import family_problems
from modules.sampler_params import from_values as sampler_params_from
from modules.samplers import resolve_sampler
from modules.services.addon_library import JobEmbeddings, JobPrompts
from modules.services.job_inputs import JobInputs
from modules.services.upscaler_library import UpscalerLibrary
from modules.upscalers import UpscalerKind, find_upscaler, upscaler_names


def with_every_prompt(request: GenerationRequest) -> GenerationRequest:
    """For the job's LoRAs and embeddings: its prompts joined with every image's own (A1111 applies
    the networks a batch's prompts name, together)."""
    if not request.per_image:
        return request
    texts = [request.prompts_for(i) for i in range(request.images_per_job)]
    return replace(request, prompt=" ".join(dict.fromkeys([request.prompt, *(p for p, _n in texts)])),
                   negative_prompt=" ".join(dict.fromkeys([request.negative_prompt, *(n for _p, n in texts)])))


def prompt_runs(request: GenerationRequest, first: int, count: int) -> list[tuple[int, int]]:
    """(first index, count) of the runs of images of a batch that share their prompts."""
    if not request.per_image:
        return [(first, count)]
    runs: list[tuple[int, int]] = []
    for index in range(first, first + count):
        if runs and request.prompts_for(index) == request.prompts_for(runs[-1][0]):
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def prompts_of(request: GenerationRequest, index: int, job: JobPrompts) -> JobPrompts:
    """The prompts image ``index`` is encoded with: its own, without network tags, when it has some."""
    if not request.per_image:
        return job
    prompt, negative = request.prompts_for(index)
    return replace(job, prompt=extract_networks(prompt).text, negative_prompt=extract_networks(negative).text)


def image_task(request: GenerationRequest, inputs: JobInputs, first: int, prompts: JobPrompts,
          embeddings: JobEmbeddings, count: int | None = None) -> ImageTask:
    found = resolve_sampler(request.sampler)
    assert found is not None  # the front normalised it
    indices = range(first, first + (request.batch_size if count is None else count))
    variations = request.variation_strength > 0
    resize = request.seed_resize
    noise = NoisePlan(seeds=tuple(request.seed_for(i) for i in indices), source=request.rng,
                      variation_seeds=tuple(request.variation_seed_for(i) for i in indices) if variations else None,
                      variation_strength=request.variation_strength,
                      eta_noise_seed_delta=request.eta_noise_seed_delta,
                      resize_from=(resize[1] // LATENT_SCALE, resize[0] // LATENT_SCALE) if resize else None)
    return ImageTask(prompt=prompts.prompt, negative_prompt=prompts.negative_prompt, sampler=found[0],
                     schedule=request.schedule, steps=request.steps, cfg_scale=request.cfg_scale,
                     width=request.width, height=request.height, clip_skip=request.clip_skip, noise=noise,
                     init_image=inputs.init_image, mask=inputs.mask,
                     denoising_strength=request.denoising_strength, masked_content=request.masked_content,
                     embeddings=embeddings.by_name or None,
                     emphasis=request.emphasis or DEFAULT_EMPHASIS, sampler_params=sampler_params_from(request),
                     exact_steps=bool(request.img2img_fix_steps),
                     distilled_cfg_scale=request.distilled_cfg_scale, shift=request.shift)


def fit_server_defaults(request: GenerationRequest, model: LoadedModel) -> GenerationRequest:
    """``request`` with the server's clip skip left out on a family without CLIP skip: a server
    setting made for SD models yields to the model (a request's own value is checked, not changed)."""
    if "clip_skip" in request.server_defaults and not model.arch.family.supports(Feature.CLIP_SKIP):
        return replace(request, clip_skip=1)
    return request


def check_family(request: GenerationRequest, model: LoadedModel) -> None:
    """Refuse (ValidationError, a 422 naming the field) what the loaded model's family cannot honour
    at all, before any other work: the family is only known once the checkpoint is loaded."""
    errors = family_problems(request, model.arch.family)
    if errors:
        raise ValidationError(errors)


def hires_plan(request: GenerationRequest, first: ImageTask, prompts: JobPrompts,
                upscalers: UpscalerLibrary | None = None) -> HiresPlan:
    hires = request.hires
    assert hires is not None
    width, height = hires.final_size(request.width, request.height)
    sampler = resolve_sampler(hires.sampler)[0] if hires.sampler else first.sampler  # type: ignore[index]
    second = replace(first, prompt=prompts.hires_prompt or first.prompt,
                     negative_prompt=prompts.hires_negative_prompt or first.negative_prompt,
                     sampler=sampler, schedule=hires.schedule or first.schedule,
                     steps=hires.steps or request.steps, width=width, height=height,
                     denoising_strength=hires.denoising_strength)
    models = upscalers.names() if upscalers is not None else []
    upscaler = find_upscaler(hires.upscaler, models)
    if upscaler is None:  # validated on the front; the file was removed since
        raise AddonNotFoundError("upscaler", hires.upscaler, upscaler_names(models))
    upscale_image = None
    if upscaler.kind is UpscalerKind.MODEL and upscalers is not None:
        def upscale_image(image: Image.Image, size: tuple[int, int], device: Any) -> Image.Image:
            return upscalers.upscale(image, upscaler.name, size, device)
    return HiresPlan(task=second, upscaler=upscaler, upscale_size=hires.upscale_size(request.width, request.height),
                     upscale_image=upscale_image)
