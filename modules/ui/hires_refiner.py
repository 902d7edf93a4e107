"""Hires fix (txt2img) and refiner (every generating tab) controls, with A1111's labels and elem_ids.

Each builder returns its controls declared by name (``hires.<HiresFix field>``,
``refiner.<Refiner field>``, and ``<group>.enable``); :mod:`modules.ui.form_fields` turns them into
the request's :class:`HiresFix` and :class:`Refiner` and back.
"""

from __future__ import annotations

import gradio as gr

from modules.params import FRACTION_RANGE, HIRES_SCALE_RANGE
from modules.samplers import ScheduleType, sampler_names
from modules.services.container import Services
from modules.ui.form_checks import ranged_number, span
from modules.ui.form_fields import SAME, Component
from modules.upscalers import DEFAULT_UPSCALER, upscaler_names


def build_hires(prefix: str, services: Services) -> dict[str, Component]:
    """The "Hires. fix" accordion; its controls by field name."""
    limits = services.settings.limits
    fields: dict[str, Component] = {}
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{prefix}_hr"):
        fields["hires.enable"] = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enable_hr")
        with gr.Row():
            fields["hires.upscaler"] = gr.Dropdown(upscaler_names(services.upscalers.names()), value=DEFAULT_UPSCALER,
                                                   label="Upscaler",
                                                   elem_id=f"{prefix}_hr_upscaler")
            fields["hires.steps"] = ranged_number("Hires steps (0 = same as sampling steps)", 0,
                                                  span(0, limits.max_steps), f"{prefix}_hires_steps")
            fields["hires.denoising_strength"] = ranged_number("Denoising strength", 0.7, span(*FRACTION_RANGE),
                                                               f"{prefix}_denoising_strength", step=0.01)
        with gr.Row():
            fields["hires.scale"] = ranged_number("Upscale by", 2.0, span(*HIRES_SCALE_RANGE), f"{prefix}_hr_scale",
                                                  step=0.05)
            size = f"0 or a multiple of 8, {span(limits.min_size, limits.max_size)}"
            fields["hires.resize_width"] = ranged_number("Resize width to (0 = by factor)", 0, size,
                                                         f"{prefix}_hr_resize_x", step=8)
            fields["hires.resize_height"] = ranged_number("Resize height to (0 = by factor)", 0, size,
                                                          f"{prefix}_hr_resize_y", step=8)
        with gr.Row():
            fields["hires.sampler"] = gr.Dropdown([SAME, *sampler_names()], value=SAME, label="Hires sampling method",
                                                  elem_id=f"{prefix}_hr_sampler")
            fields["hires.schedule"] = gr.Dropdown([SAME, *(s.value for s in ScheduleType)], value=SAME,
                                                   label="Hires schedule type", elem_id=f"{prefix}_hr_scheduler")
            fields["hires.save_first_pass"] = gr.Checkbox(label="Save the image before hires fix too", value=False,
                                                          elem_id=f"{prefix}_hr_save_first_pass")
        with gr.Row():
            fields["hires.prompt"] = gr.Textbox(label="Hires prompt (empty = the prompt)", lines=2,
                                                elem_id=f"{prefix}_hr_prompt")
            fields["hires.negative_prompt"] = gr.Textbox(label="Hires negative prompt (empty = the negative prompt)",
                                                         lines=2, elem_id=f"{prefix}_hr_neg_prompt")
    return fields


def build_refiner(prefix: str, services: Services) -> dict[str, Component]:
    """The "Refiner" accordion; its controls by field name."""
    with gr.Accordion("Refiner", open=False, elem_id=f"{prefix}_refiner"):
        with gr.Row():
            enable = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enable_refiner", scale=1)
            checkpoint = gr.Dropdown(choices=[i.title for i in services.registry.all()], value=None,
                                     label="Checkpoint", elem_id=f"{prefix}_refiner_checkpoint", scale=3,
                                     allow_custom_value=True)
            switch_at = ranged_number("Switch at", 0.8, span(*FRACTION_RANGE), f"{prefix}_refiner_switch_at",
                                      step=0.01, scale=3)
    # The list follows the checkpoint folder: refreshed whenever it is opened.
    checkpoint.focus(lambda: gr.Dropdown(choices=[i.title for i in services.registry.all()]), outputs=[checkpoint],
                     queue=False, show_progress="hidden", api_visibility="private")
    return {"refiner.enable": enable, "refiner.checkpoint": checkpoint, "refiner.switch_at": switch_at}
