"""The worker side of a job on a remote model: each batch is one provider call, its images go to the
job's sink (saved, with their infotext, as a local job's are), and its progress is the time spent.

The call runs on a thread of its own while the worker watches the job: Interrupt abandons the call
and discards whatever it returns (nothing of it is saved); Skip abandons the current batch only.
A failed call fails the job with the provider's reason (:class:`modules.errors.ProviderError`) and
saves nothing of that batch; the queue goes on with the next job.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import replace

from PIL import Image

from modules import VERSION_TEXT
from modules.errors import ProviderError, ProviderFailure
from modules.infotext import NEGATIVE_PROMPT_PREFIX, VERSION_KEY, format_value
from modules.params import GenerationRequest, ModelsUsed
from modules.services.checkpoint_registry import CheckpointRegistry
from modules.services.job_inputs import JobInputs
from modules.services.remote.calls import CallResult, ImageCall
from modules.services.remote.catalog import RemoteModel, split_title
from modules.services.remote.engines import RemoteEngines
from modules.services.renderer import ImageSink, JobProgress, Rendering

log = logging.getLogger(__name__)

POLL_SECONDS = 0.05  # how often the worker looks at the job's stop flags while a call runs


class RemoteRenderer:
    """Renders prepared jobs whose checkpoint is a remote model."""

    def __init__(self, engines: RemoteEngines) -> None:
        self.engines = engines

    def render(self, request: GenerationRequest, context: JobProgress, sink: ImageSink) -> Rendering:
        started = time.perf_counter()
        used = ModelsUsed(checkpoint_title=request.checkpoint or "", checkpoint_name=request.checkpoint or "")
        if context.interrupted:  # interrupted while waiting in the queue
            return Rendering(request, used, True, 0.0, request.notes)
        # 1. The model (still on offer? an admin may have switched remote engines off) and its client.
        model = self.engines.require(request.checkpoint or "")
        client = self.engines.client(model.provider)
        inputs = JobInputs.of(request)  # an init image fitted to the job's size (the crop, for "only masked")
        call = _call_of(request, model, inputs)
        # 2. Each batch is one call; its images are saved as soon as it answers.
        for batch_index in range(request.batch_count):
            if context.interrupted:
                break
            context.begin_batch(batch_index, request.batch_count, 0)
            answer = _wait(lambda: client.generate(call), context)
            if answer is None:  # interrupted or skipped: whatever the call returns is discarded
                continue
            images = [_decode(data, model) for data in answer.images]
            first = batch_index * request.batch_size
            revised = [answer.revised_prompts[i] if i < len(answer.revised_prompts) else None
                       for i in range(len(images))]
            texts = [remote_infotext(request, model, said, image.size) for said, image in zip(revised, images)]
            sink.batch(_named(request), inputs.finish(images), first, texts)
        elapsed = time.perf_counter() - started
        log.info("Job %s: %d call(s) to %s in %.1f s", context.job_id, request.batch_count, model.title, elapsed)
        return Rendering(request, used, context.interrupted, elapsed, request.notes)


def is_remote_job(request: GenerationRequest, local: CheckpointRegistry) -> bool:
    """Whether a prepared job runs on a remote model: its checkpoint is a remote title (the front
    sets it) that no local checkpoint has."""
    title = request.checkpoint
    return bool(title) and split_title(title) is not None and local.find(title) is None  # type: ignore[arg-type]


def _call_of(request: GenerationRequest, model: RemoteModel, inputs: JobInputs) -> ImageCall:
    """The provider call of one batch: the prompts, size and options, and for an edit the init image
    fitted to the job's size (as img2img fits it; "only masked": the masked area's crop) with its mask."""
    return ImageCall(model=model.model, prompt=request.prompt, width=request.width, height=request.height,
                     count=request.batch_size, negative_prompt=request.negative_prompt if model.negative_prompt else "",
                     quality=request.quality, style=request.style,
                     init_image=_png(inputs.init_image) if inputs.init_image is not None else None,
                     mask=_png(inputs.mask) if inputs.mask is not None else None)


def _wait(call: object, context: JobProgress) -> CallResult | None:
    """Run ``call`` on its own thread until it answers (its result, or its error raised here) or the
    job is stopped (None: the call is abandoned; its answer, whenever it comes, is dropped)."""
    answer: Future[CallResult] = Future()

    def run() -> None:
        try:
            answer.set_result(call())  # type: ignore[operator]
        except BaseException as exc:  # handed to the worker, which raises it
            answer.set_exception(exc)

    threading.Thread(target=run, name="remote-call", daemon=True).start()
    while not answer.done():
        if context.should_stop():
            return None
        time.sleep(POLL_SECONDS)
    if context.should_stop():
        return None
    return answer.result()


def _decode(data: bytes, model: RemoteModel) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ProviderError(model.provider.value, ProviderFailure.BAD_REQUEST,
                            f"the answer held no readable image ({exc})") from exc


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _named(request: GenerationRequest) -> GenerationRequest:
    """The request the files are named by: a remote image has no seed, so its name carries its
    index in the job (seed 0 + index) rather than a random number that would look like one."""
    return replace(request, seed=0, variation_strength=0.0)


def remote_infotext(request: GenerationRequest, model: RemoteModel, revised: str | None,
                    size: tuple[int, int] | None = None) -> str:
    """A1111-style parameters of a remote image: the prompts, then Size (the image's own, which a
    provider may choose), Model (the remote title), the model's options, the prompt the provider
    says it used, the styles, Version. No Steps, Sampler, CFG or Seed: the model has none."""
    width, height = size or (request.width, request.height)
    params: dict[str, object] = {"Size": f"{width}x{height}", "Model": model.title}
    if request.quality:
        params["Quality"] = request.quality
    if request.style:
        params["Style"] = request.style
    if revised and revised != request.prompt:
        params["Revised prompt"] = revised
    if request.init_image is not None:
        params["Remote edit"] = "masked" if request.mask is not None else "whole image"
    if request.applied_styles:
        params["Styles array"] = json.dumps(list(request.applied_styles), ensure_ascii=False)
    pairs = [f"{key}: {format_value(value)}" for key, value in params.items()]
    pairs.append(f"{VERSION_KEY}: {format_value(VERSION_TEXT)}")
    negative = f"\n{NEGATIVE_PROMPT_PREFIX} {request.negative_prompt}" if request.negative_prompt else ""
    return f"{request.prompt}{negative}\n{', '.join(pairs)}".strip()
