"""The txt2img tab, with A1111's labels and elem_ids (users' CSS, scripts and habits rely on them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.params import GenerationRequest, GenerationResult
from modules.samplers import DEFAULT_SAMPLER, RngSource, ScheduleType, sampler_names
from modules.services.container import Services
from modules.ui.common import progress_html, ui_error, wait_for

PREFIX = "txt2img"


@dataclass(frozen=True)
class FormValues:
    """The tab's controls by name, converted from what the browser sent into request fields."""

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

    def to_request(self) -> GenerationRequest:
        schedule = ScheduleType(self.schedule) if self.schedule in {s.value for s in ScheduleType} else self.schedule
        return GenerationRequest(
            prompt=self.prompt or "", negative_prompt=self.negative_prompt or "", sampler=self.sampler,
            schedule=schedule,  # type: ignore[arg-type]  # an unknown label is reported by validation
            steps=_whole(self.steps), cfg_scale=float(self.cfg_scale), width=_whole(self.width),
            height=_whole(self.height), seed=-1 if self.seed is None else _whole(self.seed),
            batch_count=_whole(self.batch_count), batch_size=_whole(self.batch_size), clip_skip=_whole(self.clip_skip),
        )


def _whole(value: float | int) -> Any:
    # Sliders send floats; keep non-integral values as they are so validation names the field.
    return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else value


def _gallery_items(result: GenerationResult) -> list[tuple[str, str]]:
    items = [(str(img.path), f"Seed {img.seed}") for img in result.images]
    if result.grid is not None:
        items.insert(0, (str(result.grid.path), "Grid"))
    return items


def _result_infos(result: GenerationResult) -> list[dict[str, Any]]:
    infos = [{"seed": img.seed, "infotext": img.infotext} for img in result.images]
    if result.grid is not None:
        infos.insert(0, {"seed": result.grid.seed, "infotext": result.grid.infotext})
    return infos


def build_tab(services: Services) -> None:
    """The txt2img controls and their events; call inside a ``gr.Tab``."""
    job_queue = services.queue
    with gr.Row():
        with gr.Column(scale=6):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id=f"{PREFIX}_prompt",
                                placeholder="Prompt (press Ctrl+Enter to generate)")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{PREFIX}_neg_prompt",
                                  placeholder="Negative prompt")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{PREFIX}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{PREFIX}_interrupt", size="sm")
                skip = gr.Button("Skip", elem_id=f"{PREFIX}_skip", size="sm")
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Row():
                sampler = gr.Dropdown(sampler_names(), value=DEFAULT_SAMPLER, label="Sampling method",
                                      elem_id=f"{PREFIX}_sampling")
                schedule = gr.Dropdown([s.value for s in ScheduleType], value=ScheduleType.AUTOMATIC.value,
                                       label="Schedule type", elem_id=f"{PREFIX}_scheduler")
            steps = gr.Slider(1, services.settings.limits.max_steps, value=20, step=1, label="Sampling steps",
                              elem_id=f"{PREFIX}_steps")
            with gr.Row():
                with gr.Column(scale=4):
                    width = gr.Slider(64, services.settings.limits.max_size, value=512, step=8, label="Width",
                                      elem_id=f"{PREFIX}_width")
                    height = gr.Slider(64, services.settings.limits.max_size, value=512, step=8, label="Height",
                                       elem_id=f"{PREFIX}_height")
                with gr.Column(scale=1, min_width=120):
                    batch_count = gr.Slider(1, services.settings.limits.max_batch_count, value=1, step=1,
                                            label="Batch count", elem_id=f"{PREFIX}_batch_count")
                    batch_size = gr.Slider(1, services.settings.limits.max_batch_size, value=1, step=1,
                                           label="Batch size", elem_id=f"{PREFIX}_batch_size")
            cfg = gr.Slider(1.0, 30.0, value=7.0, step=0.5, label="CFG Scale", elem_id=f"{PREFIX}_cfg_scale")
            with gr.Row():
                seed = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{PREFIX}_seed", scale=4)
                random_seed = gr.Button("🎲", elem_id=f"{PREFIX}_random_seed", elem_classes="tool-button", scale=0)
                reuse_seed = gr.Button("♻️", elem_id=f"{PREFIX}_reuse_seed", elem_classes="tool-button", scale=0)
            clip_skip = gr.Slider(1, 12, value=lambda: services.options.get().clip_skip, step=1, label="Clip skip",
                                  elem_id=f"{PREFIX}_clip_skip")
        with gr.Column(scale=1):
            progress = gr.HTML("", elem_id=f"{PREFIX}_progress")
            preview = gr.Image(label="Live preview", visible=False, interactive=False, format="png",
                               elem_id=f"{PREFIX}_preview")
            gallery = gr.Gallery(label="Output", columns=2, height="auto", format="png", interactive=False,
                                 elem_id=f"{PREFIX}_gallery")
            info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, buttons=["copy"],
                              elem_id=f"html_info_{PREFIX}")
    job_id = gr.State(None)
    infos = gr.State([])
    selected = gr.State(0)

    form = [prompt, negative, sampler, schedule, steps, cfg, width, height, seed, batch_count, batch_size, clip_skip]

    def run(prompt_v: str, neg_v: str, sampler_v: str, schedule_v: str, steps_v: float, cfg_v: float,
            width_v: float, height_v: float, seed_v: float | None, count_v: float, size_v: float,
            skip_v: float) -> Iterator[tuple[Any, ...]]:
        values = FormValues(prompt_v, neg_v, sampler_v, schedule_v, steps_v, cfg_v, width_v, height_v, seed_v,
                            count_v, size_v, skip_v)
        options = services.options.get()  # server-wide defaults the form does not show (ENSD, RNG)
        request = replace(values.to_request(), eta_noise_seed_delta=options.eta_noise_seed_delta,
                          rng=RngSource(options.randn_source))
        try:
            job = services.generation.submit(request)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        keep = gr.skip()
        for snapshot, image in wait_for(job, job_queue):
            yield job.id, progress_html(snapshot), gr.update(value=image, visible=image is not None), keep, keep, keep
        try:
            result = job.future.result()
        except AtelierError as exc:
            raise ui_error(exc) from exc
        first = _result_infos(result)[0]["infotext"] if result.images else ""
        note = "Interrupted: kept the images finished before the stop." if result.interrupted else ""
        yield (None, note, gr.update(value=None, visible=False), _gallery_items(result), first,
               _result_infos(result))

    events = dict(fn=run, inputs=form, outputs=[job_id, progress, preview, gallery, info, infos],
                  concurrency_limit=None, show_progress="hidden", api_visibility="private")
    generate.click(**events)
    prompt.submit(**events)

    def on_select(result_infos: list[dict[str, Any]], evt: gr.SelectData) -> tuple[str, int]:
        index = evt.index if isinstance(evt.index, int) else 0
        return (result_infos[index]["infotext"] if index < len(result_infos) else "", index)

    gallery.select(on_select, inputs=[infos], outputs=[info, selected], api_visibility="private")
    def on_interrupt(jid: str | None) -> None:
        job_queue.interrupt(jid)  # this tab's job; with no id yet, the running one (as A1111 does)

    def on_skip(jid: str | None) -> None:
        job_queue.skip(jid)

    interrupt.click(on_interrupt, inputs=[job_id], outputs=None, concurrency_limit=None, api_visibility="private")
    skip.click(on_skip, inputs=[job_id], outputs=None, concurrency_limit=None, api_visibility="private")
    random_seed.click(lambda: -1, outputs=[seed], api_visibility="private", queue=False)
    reuse_seed.click(lambda result_infos, index: result_infos[index]["seed"] if index < len(result_infos) else -1,
                     inputs=[infos, selected], outputs=[seed], api_visibility="private", queue=False)
