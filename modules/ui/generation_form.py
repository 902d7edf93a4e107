"""The controls every generating tab shares (prompts, sampler, size, seed, results) and their run loop.

Each tab builds a :class:`GenerationForm` with its own ``elem_id`` prefix (A1111's ``txt2img_``,
``img2img_``), adds its own controls, and passes a function that turns the form's named values
plus its extras into a :class:`GenerationRequest`. Values travel by name, never by position.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import gradio as gr
from PIL import Image

from modules.errors import AtelierError
from modules.infotext import parse_infotext
from modules.infotext_request import request_from_infotext
from modules.params import GenerationRequest, GenerationResult
from modules.samplers import DEFAULT_SAMPLER, RngSource, ScheduleType, sampler_names
from modules.services.container import Services
from modules.ui import escape
from modules.ui.common import progress_html, ui_error, wait_for
from modules.ui.extension_panels import ExtensionControls, build_extension_controls, run_script_for
from modules.ui.extra_networks_ui import build_browser
from modules.ui.hires_refiner import (
    HiresControls,
    RefinerControls,
    build_refiner,
    refiner_values_from,
    to_refiner,
)
from modules.ui.session import user_of
from modules.ui.styles_ui import build_styles


@dataclass(frozen=True)
class FormValues:
    """The shared controls by name, as the browser sent them."""

    prompt: str
    negative_prompt: str
    sampler: str
    schedule: str
    steps: float
    cfg_scale: float
    width: float
    height: float
    seed: float | None
    batch_count: float
    batch_size: float
    clip_skip: float
    styles: list[str] | None = None
    variation_seed: float | None = -1
    variation_strength: float = 0.0
    seed_resize_from_width: float = 0
    seed_resize_from_height: float = 0
    refiner_enable: bool = False
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8

    def to_request(self) -> GenerationRequest:
        labels = {s.value: s for s in ScheduleType}
        return GenerationRequest(
            prompt=self.prompt or "", negative_prompt=self.negative_prompt or "", sampler=self.sampler,
            schedule=labels.get(self.schedule, self.schedule),  # type: ignore[arg-type]  # validation names it
            steps=whole(self.steps), cfg_scale=float(self.cfg_scale), width=whole(self.width),
            height=whole(self.height), seed=-1 if self.seed is None else whole(self.seed),
            batch_count=whole(self.batch_count), batch_size=whole(self.batch_size), clip_skip=whole(self.clip_skip),
            styles=tuple(self.styles or ()),
            variation_seed=-1 if self.variation_seed is None else whole(self.variation_seed),
            variation_strength=float(self.variation_strength or 0.0),
            seed_resize_from_width=whole(self.seed_resize_from_width or 0),
            seed_resize_from_height=whole(self.seed_resize_from_height or 0),
            refiner=to_refiner(self.refiner_enable, self.refiner_checkpoint, self.refiner_switch_at))


def whole(value: float | int) -> Any:
    """Sliders send floats; a non-integral value is kept so that validation names the field."""
    return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else value


@dataclass
class GenerationForm:
    """The shared components of one tab; ``settings`` is the column where a tab adds its own."""

    prefix: str
    prompt: gr.Textbox
    negative: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    batch_count: gr.Slider
    batch_size: gr.Slider
    cfg: gr.Slider
    seed: gr.Number
    clip_skip: gr.Slider
    styles: gr.Dropdown
    variation_seed: gr.Number
    variation_strength: gr.Slider
    seed_resize_width: gr.Slider
    seed_resize_height: gr.Slider
    refiner: RefinerControls
    paste: gr.Button
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    send_buttons: dict[str, gr.Button]  # target tab id -> its "Send to" button under the gallery
    job_id: gr.State
    infos: gr.State  # per shown image: {"seed", "infotext", "path"}
    selected: gr.State  # index of the selected image in the gallery
    extensions: ExtensionControls
    hires: HiresControls | None = None  # txt2img only

    def values(self) -> list[Any]:
        """The components whose values make a :class:`FormValues`, in its field order."""
        return [self.prompt, self.negative, self.sampler, self.schedule, self.steps, self.cfg, self.width,
                self.height, self.seed, self.batch_count, self.batch_size, self.clip_skip, self.styles,
                self.variation_seed, self.variation_strength, self.seed_resize_width, self.seed_resize_height,
                *self.refiner.components()]

    def request_fields(self) -> list[Any]:
        """Components a "send to" fills from an infotext, in :func:`fields_from_infotext` order."""
        return [self.prompt, self.negative, self.sampler, self.schedule, self.steps, self.cfg, self.width,
                self.height, self.seed, self.clip_skip, self.variation_seed, self.variation_strength,
                self.seed_resize_width, self.seed_resize_height, *self.refiner.components(),
                *(self.hires.components() if self.hires else [])]


def build_prompts(prefix: str) -> tuple[gr.Textbox, gr.Textbox, gr.Button, gr.Button, gr.Button, gr.Button]:
    with gr.Row():
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_prompt",
                                placeholder="Prompt (press Ctrl+Enter to generate)")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt",
                                  placeholder="Negative prompt")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate",
                                 elem_classes="generate-button")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{prefix}_skip", size="sm")
            # A1111's "read generation parameters": a whole infotext pasted into the prompt fills the form.
            paste = gr.Button("↙️ Read parameters from prompt", size="sm", elem_id=f"{prefix}_paste")
    return prompt, negative, generate, interrupt, skip, paste


def build_form(prefix: str, services: Services, extra: Callable[[], None] | None = None,
               send_to: tuple[tuple[str, str], ...] = (), below: Callable[[], None] | None = None) -> GenerationForm:
    """The prompt row, the settings column (``extra`` adds the tab's own controls first, ``below`` after
    the seed) and results, with a "Send to" button per ``(tab id, label)`` in ``send_to`` under the gallery."""
    prompt, negative, generate, interrupt, skip, paste = build_prompts(prefix)
    _wire_token_counters(prefix, services, prompt, negative)
    styles = build_styles(prefix, services, prompt, negative).chosen
    build_browser(prefix, services, prompt)
    limits = services.settings.limits
    with gr.Row():
        with gr.Column(scale=1):
            if extra is not None:
                extra()
            with gr.Row():
                sampler = gr.Dropdown(list(sampler_names()), value=DEFAULT_SAMPLER, label="Sampling method",
                                      elem_id=f"{prefix}_sampling")
                schedule = gr.Dropdown([s.value for s in ScheduleType], value=ScheduleType.AUTOMATIC.value,
                                       label="Schedule type", elem_id=f"{prefix}_scheduler")
            steps = gr.Slider(1, limits.max_steps, value=20, step=1, label="Sampling steps", elem_id=f"{prefix}_steps")
            with gr.Row():
                with gr.Column(scale=4):
                    width = gr.Slider(64, limits.max_size, value=512, step=8, label="Width", elem_id=f"{prefix}_width")
                    height = gr.Slider(64, limits.max_size, value=512, step=8, label="Height",
                                       elem_id=f"{prefix}_height")
                with gr.Column(scale=1, min_width=120):
                    batch_count = gr.Slider(1, limits.max_batch_count, value=1, step=1, label="Batch count",
                                            elem_id=f"{prefix}_batch_count")
                    batch_size = gr.Slider(1, limits.max_batch_size, value=1, step=1, label="Batch size",
                                           elem_id=f"{prefix}_batch_size")
            cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{prefix}_cfg_scale")
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{prefix}_seed", scale=4)
                random_seed = gr.Button("🎲", elem_id=f"{prefix}_random_seed", elem_classes="tool-button", scale=0)
                reuse_seed = gr.Button("♻️", elem_id=f"{prefix}_reuse_seed", elem_classes="tool-button", scale=0)
            with gr.Accordion("Variation seed", open=False, elem_id=f"{prefix}_subseed_show"):
                with gr.Row():
                    variation_seed = gr.Number(value=-1, precision=0, label="Variation seed", elem_id=f"{prefix}_subseed")
                    variation_strength = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Variation strength",
                                                   elem_id=f"{prefix}_subseed_strength")
                with gr.Row():  # A1111: the seed's noise made at another size, for a similar picture
                    resize_w = gr.Slider(0, limits.max_size, value=0, step=8, label="Resize seed from width",
                                         elem_id=f"{prefix}_seed_resize_from_w")
                    resize_h = gr.Slider(0, limits.max_size, value=0, step=8, label="Resize seed from height",
                                         elem_id=f"{prefix}_seed_resize_from_h")
            if below is not None:
                below()
            refiner = build_refiner(prefix, services)
            extension_controls = build_extension_controls(prefix, "txt2img" if prefix == "txt2img" else "img2img",
                                                          services)
            clip_skip = gr.Slider(1, 12, value=lambda: services.options.get().clip_skip, step=1, label="Clip skip",
                                  elem_id=f"{prefix}_clip_skip")
        with gr.Column(scale=1):
            progress = gr.HTML("", elem_id=f"{prefix}_progress")
            preview = gr.Image(label="Live preview", visible=False, interactive=False, format="png",
                               elem_id=f"{prefix}_preview")
            gallery = gr.Gallery(label="Output", columns=2, height="auto", format="png", interactive=False,
                                 elem_id=f"{prefix}_gallery")
            with gr.Row():
                send_buttons = {target: gr.Button(f"Send to {label}", size="sm", elem_id=f"{prefix}_send_to_{target}")
                                for target, label in send_to}
            info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, buttons=["copy"],
                              elem_id=f"html_info_{prefix}")
    form = GenerationForm(prefix, prompt, negative, generate, interrupt, skip, sampler, schedule, steps, width, height,
                          batch_count, batch_size, cfg, seed, clip_skip, styles, variation_seed, variation_strength,
                          resize_w, resize_h, refiner, paste, progress, preview, gallery, info,
                          send_buttons, gr.State(None), gr.State([]), gr.State(0), extension_controls)
    _wire_seed_buttons(form, random_seed, reuse_seed)
    return form


def _wire_token_counters(prefix: str, services: Services, prompt: gr.Textbox, negative: gr.Textbox) -> None:
    """A1111's "n/75" beside each prompt box, updated as the user types."""
    with gr.Row():
        counters = [gr.HTML("", elem_id=f"{prefix}_token_counter", elem_classes="token-counter"),
                    gr.HTML("", elem_id=f"{prefix}_negative_token_counter", elem_classes="token-counter")]
    for box, counter in zip((prompt, negative), counters, strict=True):
        box.change(lambda text: f"<span>{escape.text(services.generation.count_tokens(text, 20))}</span>",
                   inputs=[box], outputs=[counter], queue=False, trigger_mode="always_last", show_progress="hidden",
                   api_visibility="private")


def _wire_seed_buttons(form: GenerationForm, random_seed: gr.Button, reuse_seed: gr.Button) -> None:
    def on_select(result_infos: list[dict[str, Any]], evt: gr.SelectData) -> tuple[str, int]:
        index = evt.index if isinstance(evt.index, int) else 0
        return (result_infos[index]["infotext"] if index < len(result_infos) else "", index)

    form.gallery.select(on_select, inputs=[form.infos], outputs=[form.info, form.selected], api_visibility="private")
    random_seed.click(lambda: -1, outputs=[form.seed], api_visibility="private", queue=False)
    reuse_seed.click(lambda infos, index: infos[index]["seed"] if index < len(infos) else -1,
                     inputs=[form.infos, form.selected], outputs=[form.seed], api_visibility="private", queue=False)


def _gallery(result: GenerationResult) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    shown = ([result.grid] if result.grid is not None else []) + list(result.images)
    # An image that could not be saved (disk full) is shown from its bytes.
    items = [(str(img.path) if img.path else Image.open(io.BytesIO(img.png)),
              "Grid" if img.index < 0 else f"Seed {img.seed}") for img in shown]
    infos = [{"seed": img.seed, "infotext": img.infotext, "path": str(img.path) if img.path else None}
             for img in shown]
    return items, infos


def wire_generation(form: GenerationForm, services: Services, extra_inputs: list[Any],
                    make_request: Callable[..., GenerationRequest], triggers: list[Any] | None = None,
                    with_stop_buttons: bool = True) -> None:
    """Generate (with progress and preview), Interrupt and Skip for a form.

    ``make_request(values: FormValues, *extra_values)`` builds the request; it may raise AtelierError.
    """
    job_queue = services.queue
    shared = len(fields(FormValues))
    extension_count = len(form.extensions.inputs())
    tab = "txt2img" if form.prefix == "txt2img" else "img2img"

    def run(request: gr.Request, *values: Any) -> Iterator[tuple[Any, ...]]:
        options = services.options.get()  # server-wide defaults the form does not show (ENSD, RNG, VAE)
        own, extension_values = values[:len(values) - extension_count], list(values[len(values) - extension_count:])
        params, script, script_values = form.extensions.read(extension_values)
        keep = gr.skip()
        try:
            job_request = make_request(FormValues(*own[:shared]), *own[shared:])
            job_request = replace(job_request, eta_noise_seed_delta=options.eta_noise_seed_delta,
                                  rng=RngSource(options.randn_source), vae=job_request.vae or options.sd_vae,
                                  extension_params=params)
            if script is not None:
                for snapshot, image, done in run_script_for(services, user_of(request), script, tab, job_request,
                                                            script_values):
                    if done is not None:
                        result = done
                    elif snapshot is not None:
                        yield None, progress_html(snapshot), gr.update(value=image, visible=image is not None), \
                            keep, keep, keep
            else:
                job = services.generation.submit(job_request, owner=user_of(request))
                for snapshot, image in wait_for(job, job_queue):
                    yield job.id, progress_html(snapshot), gr.update(value=image, visible=image is not None), \
                        keep, keep, keep
                result = job.future.result()
        except AtelierError as exc:
            raise ui_error(exc) from exc
        for note in result.warnings:
            gr.Info(escape.text(note))  # warnings quote prompts and file names
        items, infos = _gallery(result)
        note = "Interrupted: kept the images finished before the stop." if result.interrupted else ""
        yield None, note, gr.update(value=None, visible=False), items, infos[0]["infotext"] if infos else "", infos

    outputs = [form.job_id, form.progress, form.preview, form.gallery, form.info, form.infos]
    for trigger in triggers or [form.generate.click]:  # Ctrl+Enter presses Generate (see common.HEAD)
        trigger(run, inputs=form.values() + extra_inputs + form.extensions.inputs(), outputs=outputs, concurrency_limit=None,
                show_progress="hidden", api_visibility="private")
    if not with_stop_buttons:
        return

    def on_interrupt(jid: str | None, request: gr.Request) -> None:
        # This tab's job; with no id yet, the running one (as A1111 does) if this user may stop it.
        job_queue.interrupt(jid, user_of(request))

    def on_skip(jid: str | None, request: gr.Request) -> None:
        job_queue.skip(jid, user_of(request))

    form.interrupt.click(on_interrupt, inputs=[form.job_id], outputs=None, concurrency_limit=None,
                         api_visibility="private")
    form.skip.click(on_skip, inputs=[form.job_id], outputs=None, concurrency_limit=None, api_visibility="private")


def fields_from_infotext(text: str, form: GenerationForm, services: Services) -> list[Any]:
    """Values for ``form``'s :meth:`GenerationForm.request_fields` from an image's infotext."""
    request, _warnings = request_from_infotext(parse_infotext(text))
    values = [request.prompt, request.negative_prompt, request.sampler, request.schedule.value, request.steps,
              request.cfg_scale, request.width, request.height, request.seed, request.clip_skip,
              request.variation_seed, request.variation_strength, request.seed_resize_from_width,
              request.seed_resize_from_height, *refiner_values_from(request, services)]
    return values + (HiresControls.values_from(request) if form.hires else [])
