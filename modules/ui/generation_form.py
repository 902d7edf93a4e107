"""The controls every generating tab shares (prompts, sampler, size, seed, results) and their run loop.

Each tab builds a :class:`GenerationForm` with its own ``elem_id`` prefix (A1111's ``txt2img_``,
``img2img_``), adds its own controls (declared by name, see :mod:`modules.ui.form_fields`), and
passes a function that turns the form's named values into a :class:`GenerationRequest`. Values
travel by name, never by position.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.params import FRACTION_RANGE, LATENT_SCALE, MIN_CFG_SCALE, GenerationRequest, GenerationResult
from modules.samplers import DEFAULT_SAMPLER, ScheduleType, sampler_names
from modules.services.container import Services
from modules.ui import escape, icons
from modules.ui.checkpoints import JOB_CHECKPOINT, with_job_checkpoint
from modules.ui.common import ui_error
from modules.ui.extension_panels import ExtensionControls, build_extension_controls, run_script_for
from modules.ui.extra_networks_ui import build_browser
from modules.ui.family_fields import build_family_fields
from modules.ui.form_checks import ConfirmBox, build_confirm, confirmation, field_validator, ranged_number, span
from modules.ui.form_fields import HIRES, SHARED, Component, FormFields, Values
from modules.ui.hires_refiner import build_refiner
from modules.ui.job_queue_panel import (
    JobView,
    QueuePanel,
    build_panel,
    ended_unrun,
    place_in_line,
    progress_updates,
    result_updates,
    watch,
    wire_cancel,
    wire_follow,
)
from modules.ui.override_settings import OVERRIDE_FIELD, build_box, with_overrides
from modules.ui.remote_fields import build_remote_fields, cost_estimate
from modules.ui.session import user_of
from modules.ui.styles_ui import build_styles

__all__ = ["GenerationForm", "build_form", "run_script_for", "wire_generation"]

Declare = Callable[[], Mapping[str, Component]]  # builds a tab's own controls; returns them by field name
MakeRequest = Callable[[Values], GenerationRequest]  # a tab's request from its named values


@dataclass(frozen=True)
class GenerationForm:
    """One tab's form: ``fields`` declares every control that sets the request, by name; the rest
    are its buttons and result components."""

    prefix: str
    fields: FormFields
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    send_buttons: Mapping[str, gr.Button]  # target tab id -> its "Send to" button under the gallery
    job_id: gr.State
    infos: gr.State  # per shown image: {"seed", "infotext", "path"}
    selected: gr.State  # index of the selected image in the gallery
    extensions: ExtensionControls
    memory_estimate: gr.Markdown  # the predicted peak memory, beside Generate
    queue: QueuePanel  # the user's waiting jobs, each cancellable
    confirm: ConfirmBox  # asks before a job of very many images starts

    def view(self) -> JobView:
        return JobView(self.job_id, self.progress, self.preview, self.gallery, self.info, self.infos, self.queue)


@dataclass(frozen=True)
class _Results:
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    send_buttons: dict[str, gr.Button]
    queue: QueuePanel
    confirm: ConfirmBox


def _build_prompts(prefix: str) -> dict[str, Component]:
    """The prompt boxes, by field name."""
    prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{prefix}_prompt",
                        placeholder="Prompt (press Ctrl+Enter to generate)")
    negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_neg_prompt",
                          placeholder="Negative prompt")
    return {"prompt": prompt, "negative_prompt": negative}


def _build_buttons(prefix: str) -> dict[str, Component]:
    """Generate, Interrupt, Skip, paste and the memory estimate: at the top of the results column, so
    the button and what it makes stay together (side by side with the prompt, one above the other
    on a phone)."""
    with gr.Row(elem_classes="generate-row"):
        generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate",
                             elem_classes="generate-button", scale=3)
        with gr.Column(scale=1, min_width=100):
            interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", size="sm")
            skip = gr.Button("Skip", elem_id=f"{prefix}_skip", size="sm")
    # A1111's "read generation parameters": a whole infotext pasted into the prompt fills the form.
    paste = gr.Button(f"{icons.PASTE} Read parameters from prompt", size="sm", elem_id=f"{prefix}_paste")
    estimate = gr.Markdown("", elem_id=f"{prefix}_memory_estimate", elem_classes="memory-estimate")
    return {"generate": generate, "interrupt": interrupt, "skip": skip, "paste": paste, "estimate": estimate}


def _whole_number(label: str, value: int, low: int, high: int, elem_id: str, step: int = 1) -> gr.Number:
    """A whole-number box stating its range (see :func:`ranged_number`)."""
    return ranged_number(label, value, span(low, high), elem_id, step)


def _build_sampling(prefix: str, services: Services) -> dict[str, Component]:
    """Sampler, schedule, steps, size, batch and CFG, by field name."""
    limits = services.settings.limits
    fields: dict[str, Component] = {}
    with gr.Row():
        fields["sampler"] = gr.Dropdown(list(sampler_names()), value=DEFAULT_SAMPLER, label="Sampling method",
                                        elem_id=f"{prefix}_sampling")
        fields["schedule"] = gr.Dropdown([s.value for s in ScheduleType], value=ScheduleType.AUTOMATIC.value,
                                         label="Schedule type", elem_id=f"{prefix}_scheduler")
    fields["steps"] = _whole_number("Sampling steps", 20, 1, limits.max_steps, f"{prefix}_steps")
    with gr.Row():
        with gr.Column(scale=2):
            size = f"multiple of 8, {limits.min_size} to {limits.max_size}"
            fields["width"] = gr.Number(value=512, step=8, label="Width", info=size,
                                        elem_id=f"{prefix}_width")
            fields["height"] = gr.Number(value=512, step=8, label="Height", info=size,
                                         elem_id=f"{prefix}_height")
        with gr.Column(scale=1, min_width=120):
            fields["batch_count"] = _whole_number("Batch count", 1, 1, limits.max_batch_count,
                                                  f"{prefix}_batch_count")
            fields["batch_size"] = _whole_number("Batch size", 1, 1, limits.max_batch_size, f"{prefix}_batch_size")
    fields["cfg_scale"] = ranged_number("CFG Scale", 7.0, span(MIN_CFG_SCALE, limits.max_cfg_scale),
                                        f"{prefix}_cfg_scale", step=0.5)
    fields |= build_family_fields(prefix)  # Distilled CFG Scale and Shift, shown for the families that use them
    fields |= build_remote_fields(prefix)  # a remote model's quality and style, and what it supports
    with gr.Row():
        # A1111's face restoration (the restorer and CodeFormer's weight are settings), and seamless
        # tiling: the image's opposite edges continue each other.
        fields["restore_faces"] = gr.Checkbox(value=False, label="Restore faces", elem_id=f"{prefix}_restore_faces")
        fields["tiling"] = gr.Checkbox(value=False, label="Tiling", elem_id=f"{prefix}_tiling")
    return fields


def _build_seed(prefix: str, services: Services) -> tuple[dict[str, Component], gr.Button, gr.Button]:
    """The seed with its random and reuse buttons, and the variation seed accordion, by field name."""
    max_size = services.settings.limits.max_size
    fields: dict[str, Component] = {}
    with gr.Row():
        fields["seed"] = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{prefix}_seed", scale=4)
        random_seed = gr.Button(icons.RANDOM, elem_id=f"{prefix}_random_seed", elem_classes="tool-button", scale=0)
        reuse_seed = gr.Button(icons.REUSE, elem_id=f"{prefix}_reuse_seed", elem_classes="tool-button", scale=0)
    with gr.Accordion("Variation seed", open=False, elem_id=f"{prefix}_subseed_show"):
        with gr.Row():
            fields["variation_seed"] = gr.Number(value=-1, precision=0, label="Variation seed",
                                                 elem_id=f"{prefix}_subseed")
            fields["variation_strength"] = ranged_number("Variation strength", 0.0, span(*FRACTION_RANGE),
                                                         f"{prefix}_subseed_strength", step=0.01)
        with gr.Row():  # A1111: the seed's noise made at another size, for a similar picture
            resize = f"0 (off) or {span(LATENT_SCALE, max_size)}"
            fields["seed_resize_from_width"] = ranged_number("Resize seed from width", 0, resize,
                                                             f"{prefix}_seed_resize_from_w", step=8)
            fields["seed_resize_from_height"] = ranged_number("Resize seed from height", 0, resize,
                                                              f"{prefix}_seed_resize_from_h", step=8)
    return fields, random_seed, reuse_seed


def _build_results(prefix: str, send_to: tuple[tuple[str, str], ...]) -> _Results:
    progress = gr.HTML("", elem_id=f"{prefix}_progress")
    confirm = build_confirm(prefix)
    queue = build_panel(prefix)
    preview = gr.Image(label="Live preview", visible=False, interactive=False, format="png",
                       elem_id=f"{prefix}_preview")
    # No fixed height: the gallery grows with the batch, every image in view without scrolling inside it.
    gallery = gr.Gallery(label="Output", columns=2, height="auto", format="png", interactive=False,
                         elem_id=f"{prefix}_gallery", elem_classes="output-gallery")
    with gr.Row():
        send_buttons = {target: gr.Button(f"Send to {label}", size="sm", elem_id=f"{prefix}_send_to_{target}")
                        for target, label in send_to}
    info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, buttons=["copy"],
                      elem_id=f"html_info_{prefix}")
    return _Results(progress, preview, gallery, info, send_buttons, queue, confirm)


def build_form(prefix: str, services: Services, extra: Declare | None = None,
               send_to: tuple[tuple[str, str], ...] = (), below: Declare | None = None) -> GenerationForm:
    """The prompt row, the settings column (``extra`` adds the tab's own controls first, ``below`` after
    the seed; each returns them by field name) and results, with a "Send to" button per
    ``(tab id, label)`` in ``send_to`` under the gallery."""
    # As in A1111, the results column starts level with the prompt: styles and extra networks sit
    # under the prompt, in the settings column.
    with gr.Row(equal_height=False, elem_classes="generation-columns"):
        with gr.Column(scale=1, elem_classes="settings-column"):
            fields = _build_prompts(prefix)
            _wire_token_counters(prefix, services, fields["prompt"], fields["negative_prompt"])
            fields["styles"] = build_styles(prefix, services, fields["prompt"], fields["negative_prompt"]).chosen
            build_browser(prefix, services, fields["prompt"])
            declared = FormFields(fields) | (extra() if extra is not None else {}) | _build_sampling(prefix, services)
            seed_fields, random_seed, reuse_seed = _build_seed(prefix, services)
            declared = declared | seed_fields | (below() if below is not None else {})
            declared = declared | build_refiner(prefix, services)
            extensions = build_extension_controls(prefix, "txt2img" if prefix == "txt2img" else "img2img", services)
            clip_skip = _whole_number("Clip skip", lambda: services.options.get().clip_skip, 1,  # type: ignore[arg-type]
                                      services.settings.limits.max_clip_skip, f"{prefix}_clip_skip")
            declared = declared | {"clip_skip": clip_skip}
            declared = declared | {OVERRIDE_FIELD: build_box(prefix)}  # a pasted infotext's other options
            declared = declared | {JOB_CHECKPOINT: gr.State(None)}  # a user's "Checkpoint for my jobs"
        with gr.Column(scale=1, elem_classes="results-column"):
            buttons = _build_buttons(prefix)
            results = _build_results(prefix, send_to)
    form = GenerationForm(prefix, declared, buttons["generate"], buttons["interrupt"], buttons["skip"],
                          buttons["paste"], results.progress, results.preview, results.gallery, results.info,
                          results.send_buttons, gr.State(None), gr.State([]), gr.State(0), extensions,
                          buttons["estimate"], results.queue, results.confirm)
    _wire_seed_buttons(form, random_seed, reuse_seed)
    wire_cancel(form.queue, services.queue)
    wire_follow(form.view(), services.queue, prefix)  # a reloaded page shows the user's job from this tab
    gr.on(None, **_memory_estimate_event(form, services))  # on page load and whenever its inputs change
    return form


# What the memory estimate reads: the sizes, the batch, guidance (CFG 1 halves the UNet's batch) and
# the hires fix (txt2img). The prompts are left out: they change its estimate little, and on each key.
# For a remote model it is the estimated cost instead (its size, quality and images).
_ESTIMATE_FIELDS = ("width", "height", "batch_size", "cfg_scale", *HIRES.keys(), "batch_count", "quality",
                    JOB_CHECKPOINT)


def _memory_estimate_event(form: GenerationForm, services: Services) -> dict[str, Any]:
    """The keyword arguments of an event that shows the predicted peak memory of the form's job
    beside Generate (or, for a remote model, its estimated cost). It only reads (the loaded model's
    weights and the device's free memory)."""
    names = [name for name in _ESTIMATE_FIELDS if name in form.fields]
    init_image = form.prefix != "txt2img"  # img2img and inpaint always encode an init image
    numbers = [name for name in names if isinstance(form.fields[name], gr.Number)]

    def estimate(*values: Any) -> str:
        named = dict(zip(names, values, strict=True))
        images = SHARED["batch_size"].read(named["batch_size"]), SHARED["batch_count"].read(named["batch_count"])
        cost = cost_estimate(services, named[JOB_CHECKPOINT], named["width"], named["height"], named["quality"],
                             images[0] * images[1] if all(isinstance(n, int) for n in images) else 1)
        if cost is not None:
            return cost
        engine = services.engine.peek()
        if engine is None:
            return "Estimated peak memory: Atelier is starting"
        if any(named[name] is None for name in numbers):
            return ""  # a number box left empty: Generate says what it needs
        request = GenerationRequest(**{name: SHARED[name].read(named[name]) for name in names
                                       if name in SHARED and name not in ("quality", "batch_count")},
                                    hires=HIRES.read(named))
        return engine.generation.estimate_memory(request, init_image).summary

    return {"fn": estimate, "inputs": form.fields.components_of(names), "outputs": [form.memory_estimate],
            "queue": False, "show_progress": "hidden", "trigger_mode": "always_last", "api_visibility": "private"}


def _wire_token_counters(prefix: str, services: Services, prompt: gr.Textbox, negative: gr.Textbox) -> None:
    """A1111's "n/75" beside each prompt box, updated as the user types."""
    with gr.Row():
        counters = {prompt: gr.HTML("", elem_id=f"{prefix}_token_counter", elem_classes="token-counter"),
                    negative: gr.HTML("", elem_id=f"{prefix}_negative_token_counter", elem_classes="token-counter")}
    for box, counter in counters.items():
        box.change(lambda text: f"<span>{escape.text(services.generation.count_tokens(text, 20))}</span>",
                   inputs=[box], outputs=[counter], queue=False, trigger_mode="always_last", show_progress="hidden",
                   api_visibility="private")


def _wire_seed_buttons(form: GenerationForm, random_seed: gr.Button, reuse_seed: gr.Button) -> None:
    def on_select(result_infos: list[dict[str, Any]], evt: gr.SelectData) -> dict[Component, Any]:
        index = evt.index if isinstance(evt.index, int) else 0
        return {form.info: result_infos[index]["infotext"] if index < len(result_infos) else "",
                form.selected: index}

    seed = form.fields["seed"]
    form.gallery.select(on_select, inputs=[form.infos], outputs=[form.info, form.selected], api_visibility="private")
    random_seed.click(lambda: -1, outputs=[seed], api_visibility="private", queue=False)
    reuse_seed.click(lambda infos, index: infos[index]["seed"] if index < len(infos) else -1,
                     inputs=[form.infos, form.selected], outputs=[seed], api_visibility="private", queue=False)


Updates = dict[Component, Any]  # an event's outputs by component


def wire_generation(form: GenerationForm, services: Services, make_request: MakeRequest,
                    triggers: list[Any] | None = None, with_stop_buttons: bool = True) -> None:
    """Generate (with progress and preview), Interrupt and Skip for a form.

    ``make_request(values)`` builds the request from the form's values by field name; it may raise
    AtelierError. The request leaves ENSD, RNG and VAE unset: the generation service fills the
    server's settings in once. Every click queues a job: a click while one runs waits in line (shown
    in the queue panel, cancellable there), and each job's results replace the gallery when it ends.
    """
    job_queue = services.queue
    tab = "txt2img" if form.prefix == "txt2img" else "img2img"
    view = form.view()

    def full_request(values: Values) -> GenerationRequest:  # the tab's request, with the override box's fields
        return with_job_checkpoint(with_overrides(make_request(values), values), values)

    def jobs(job_request: GenerationRequest, owner: str | None,
             script: str | None, script_values: dict[str, Any]) -> Generator[Updates, None, GenerationResult | None]:
        if script is not None:
            for snapshot, image, done in run_script_for(services, owner, script, tab, job_request, script_values):
                if done is not None:
                    return done
                if snapshot is not None:
                    yield progress_updates(view, None, snapshot, image)
            raise RuntimeError("the script run ended without its result")
        job = services.generation.submit(job_request, owner=owner)
        if (place := place_in_line(job_queue, job)) > 1:  # behind another job, not just about to start
            gr.Info(f"Queued: position {place}")
        yield from watch(view, job_queue, job, owner)
        result = job.future.result()
        return None if ended_unrun(job) else result  # cancelled while waiting: the gallery stays as it is

    def run(received: dict[Component, Any], request: gr.Request, confirmed: bool = False) -> Iterator[Updates]:
        params, script, script_values = form.extensions.read(received)
        try:
            job_request = replace(full_request(form.fields.values(received)), extension_params=params)
            ask = None if confirmed else confirmation(form.confirm, job_request,
                                                      services.options.get().confirm_images_above)
            if ask is not None:
                yield ask | {form.confirm.asker: asker}
                return
            result = yield from jobs(job_request, user_of(request), script, script_values)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        if result is not None:
            yield result_updates(view, result)

    def run_confirmed(received: dict[Component, Any], request: gr.Request) -> Iterator[Updates]:
        if received[form.confirm.asker] != asker:  # the question was another button's (outpaint's)
            return
        yield {form.confirm.box: gr.update(visible=False)}
        yield from run(received, request, confirmed=True)

    asker = f"wiring-{id(make_request)}"  # which of the form's wirings asked (inpaint has two: outpaint)
    inputs = form.fields.inputs() | form.extensions.inputs() | {form.confirm.asker}
    outputs = [*view.outputs(), form.confirm.box, form.confirm.text, form.confirm.asker]

    def read(received: dict[Component, Any]) -> GenerationRequest:
        return full_request(form.fields.values(received))

    check = field_validator(form.fields, form.extensions, services, tab, read)
    check_asked = field_validator(form.fields, form.extensions, services, tab, read,
                                  applies=lambda received: received[form.confirm.asker] == asker)
    # trigger_mode "multiple": a click while a job runs is a new job, never dropped by the browser.
    wirings = [(t, run, check) for t in triggers or [form.generate.click]]
    for trigger, fn, validator in [*wirings, (form.confirm.start.click, run_confirmed, check_asked)]:
        event = trigger(fn, inputs=inputs, outputs=outputs, validator=validator, trigger_mode="multiple",
                        concurrency_limit=None, show_progress="hidden", api_visibility="private")
        event.then(**_memory_estimate_event(form, services))  # the job may have loaded another model
    if with_stop_buttons:
        _wire_stop_buttons(form, services)


def _wire_stop_buttons(form: GenerationForm, services: Services) -> None:
    job_queue = services.queue

    def on_interrupt(jid: str | None, request: gr.Request) -> None:
        # This tab's job; with no id yet, the running one (as A1111 does) if this user may stop it.
        job_queue.interrupt(jid, user_of(request))

    def on_skip(jid: str | None, request: gr.Request) -> None:
        job_queue.skip(jid, user_of(request))

    form.interrupt.click(on_interrupt, inputs=[form.job_id], outputs=None, concurrency_limit=None,
                         api_visibility="private")
    form.skip.click(on_skip, inputs=[form.job_id], outputs=None, concurrency_limit=None, api_visibility="private")
