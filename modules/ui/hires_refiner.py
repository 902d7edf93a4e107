"""Hires fix (txt2img) and refiner (every generating tab) controls, with A1111's labels and elem_ids.

Each control group turns its values into the request's part (:class:`HiresFix`, :class:`Refiner`)
and back (for "send to" and pasted parameters), by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.params import GenerationRequest, HiresFix, Refiner
from modules.samplers import ScheduleType, sampler_names
from modules.services.container import Services
from modules.upscalers import DEFAULT_UPSCALER, upscaler_names

SAME = "Use same"  # A1111's label for "as the first pass" in the hires sampler and schedule lists


def _whole(value: float | int | None) -> Any:
    return int(value) if isinstance(value, (int, float)) and float(value).is_integer() else value


@dataclass
class HiresControls:
    enable: gr.Checkbox
    upscaler: gr.Dropdown
    steps: gr.Slider
    denoise: gr.Slider
    scale: gr.Slider
    resize_width: gr.Slider
    resize_height: gr.Slider
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    prompt: gr.Textbox
    negative: gr.Textbox
    save_first_pass: gr.Checkbox

    def components(self) -> list[Any]:
        """In :meth:`to_hires` argument order."""
        return [self.enable, self.upscaler, self.steps, self.denoise, self.scale, self.resize_width,
                self.resize_height, self.sampler, self.schedule, self.prompt, self.negative, self.save_first_pass]

    @staticmethod
    def to_hires(enable: bool, upscaler: str, steps: float, denoise: float, scale: float, resize_width: float,
                 resize_height: float, sampler: str, schedule: str, prompt: str, negative: str,
                 save_first_pass: bool) -> HiresFix | None:
        if not enable:
            return None
        labels = {s.value: s for s in ScheduleType}
        return HiresFix(scale=float(scale), resize_width=_whole(resize_width), resize_height=_whole(resize_height),
                        upscaler=upscaler or DEFAULT_UPSCALER, steps=_whole(steps), denoising_strength=float(denoise),
                        sampler=None if sampler in (None, "", SAME) else sampler,
                        schedule=None if schedule in (None, "", SAME) else labels.get(schedule, schedule),  # type: ignore[arg-type]
                        prompt=prompt or "", negative_prompt=negative or "", save_first_pass=bool(save_first_pass))

    @staticmethod
    def values_from(request: GenerationRequest) -> list[Any]:
        """Control values for a request read from an infotext (hires off when it has none)."""
        hires = request.hires
        if hires is None:
            return [False] + [gr.skip()] * 11
        return [True, hires.upscaler, hires.steps, hires.denoising_strength, hires.scale, hires.resize_width,
                hires.resize_height, hires.sampler or SAME, hires.schedule.value if hires.schedule else SAME,
                hires.prompt, hires.negative_prompt, gr.skip()]


def build_hires(prefix: str, services: Services) -> HiresControls:
    limits = services.settings.limits
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{prefix}_hr"):
        enable = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enable_hr")
        with gr.Row():
            upscaler = gr.Dropdown(upscaler_names(), value=DEFAULT_UPSCALER, label="Upscaler",
                                   elem_id=f"{prefix}_hr_upscaler")
            steps = gr.Slider(0, limits.max_steps, value=0, step=1, label="Hires steps (0 = same as sampling steps)",
                              elem_id=f"{prefix}_hires_steps")
            denoise = gr.Slider(0.0, 1.0, value=0.7, step=0.01, label="Denoising strength",
                                elem_id=f"{prefix}_denoising_strength")
        with gr.Row():
            scale = gr.Slider(1.0, 4.0, value=2.0, step=0.05, label="Upscale by", elem_id=f"{prefix}_hr_scale")
            resize_width = gr.Slider(0, limits.max_size, value=0, step=8, label="Resize width to (0 = by factor)",
                                     elem_id=f"{prefix}_hr_resize_x")
            resize_height = gr.Slider(0, limits.max_size, value=0, step=8, label="Resize height to (0 = by factor)",
                                      elem_id=f"{prefix}_hr_resize_y")
        with gr.Row():
            sampler = gr.Dropdown([SAME, *sampler_names()], value=SAME, label="Hires sampling method",
                                  elem_id=f"{prefix}_hr_sampler")
            schedule = gr.Dropdown([SAME, *(s.value for s in ScheduleType)], value=SAME, label="Hires schedule type",
                                   elem_id=f"{prefix}_hr_scheduler")
            save_first_pass = gr.Checkbox(label="Save the image before hires fix too", value=False,
                                          elem_id=f"{prefix}_hr_save_first_pass")
        with gr.Row():
            prompt = gr.Textbox(label="Hires prompt (empty = the prompt)", lines=2, elem_id=f"{prefix}_hr_prompt")
            negative = gr.Textbox(label="Hires negative prompt (empty = the negative prompt)", lines=2,
                                  elem_id=f"{prefix}_hr_neg_prompt")
    return HiresControls(enable, upscaler, steps, denoise, scale, resize_width, resize_height, sampler, schedule,
                         prompt, negative, save_first_pass)


@dataclass
class RefinerControls:
    enable: gr.Checkbox
    checkpoint: gr.Dropdown
    switch_at: gr.Slider

    def components(self) -> list[Any]:
        return [self.enable, self.checkpoint, self.switch_at]


def to_refiner(enable: bool, checkpoint: str | None, switch_at: float) -> Refiner | None:
    if not enable:
        return None
    return Refiner(checkpoint=checkpoint or "", switch_at=float(switch_at))


def refiner_values_from(request: GenerationRequest, services: Services) -> list[Any]:
    refiner = request.refiner
    if refiner is None:
        return [False, gr.skip(), gr.skip()]
    found = services.registry.find(refiner.checkpoint)
    return [True, found.title if found else refiner.checkpoint, refiner.switch_at]


def build_refiner(prefix: str, services: Services) -> RefinerControls:
    with gr.Accordion("Refiner", open=False, elem_id=f"{prefix}_refiner"):
        with gr.Row():
            enable = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enable_refiner", scale=1)
            checkpoint = gr.Dropdown(choices=[i.title for i in services.registry.all()], value=None,
                                     label="Checkpoint", elem_id=f"{prefix}_refiner_checkpoint", scale=3,
                                     allow_custom_value=True)
            switch_at = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                  elem_id=f"{prefix}_refiner_switch_at", scale=3)
    # The list follows the checkpoint folder: refreshed whenever it is opened.
    checkpoint.focus(lambda: gr.Dropdown(choices=[i.title for i in services.registry.all()]), outputs=[checkpoint],
                     queue=False, show_progress="hidden", api_visibility="private")
    return RefinerControls(enable, checkpoint, switch_at)
