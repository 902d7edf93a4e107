"""The Extras tab (A1111's): upscale and restore faces of one image, of uploaded files, or of a folder.

Inputs in three tabs (single image, batch from files, batch from a folder inside the inputs or
outputs folder); resize by a factor or to a size (cropped to fit); upscaler 1 and 2 with 2's
visibility; GFPGAN and CodeFormer with their visibility and CodeFormer's weight; upscale before
restoring faces. The job goes through the queue (progress shown); results are saved to
``outputs/extras-images`` with the source's parameters kept, and shown with "Send to" buttons.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gradio as gr

from modules.errors import AtelierError, FieldError, ValidationError
from modules.params import FRACTION_RANGE
from modules.services.container import Services
from modules.services.extras import ExtrasResult
from modules.services.extras_request import (
    MAX_BATCH,
    MAX_FACTOR,
    MIN_FACTOR,
    ExtrasImage,
    ExtrasRequest,
    ResizeMode,
    check_values,
)
from modules.ui import escape, model_downloads_ui
from modules.ui.common import progress_html, ui_error, wait_for
from modules.ui.form_checks import ranged_number, span
from modules.ui.form_fields import number
from modules.ui.session import user_of
from modules.upscalers import UpscalerKind, find_upscaler, upscaler_names

PREFIX = "extras"


class InputMode(enum.Enum):
    SINGLE = "single"
    FILES = "files"
    FOLDER = "folder"


@dataclass
class ExtrasTab:
    image: gr.Image  # the single image: what "Send to extras" fills
    infos: gr.State  # per shown result: {"path", "infotext"} (the source's parameters)
    selected: gr.State
    send_buttons: dict[str, gr.Button]  # target tab id -> button


@dataclass(frozen=True)
class _Controls:
    mode: gr.State
    resize: gr.State
    image: gr.Image
    files: gr.File
    folder: gr.Textbox
    show_results: gr.Checkbox
    factor: gr.Number
    width: gr.Number
    height: gr.Number
    crop: gr.Checkbox
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown
    upscaler_2_visibility: gr.Number
    gfpgan_visibility: gr.Number
    codeformer_visibility: gr.Number
    codeformer_weight: gr.Number
    upscale_first: gr.Checkbox

    def inputs(self) -> list[Any]:
        return [self.mode, self.resize, self.image, self.files, self.folder, self.show_results, self.factor,
                self.width, self.height, self.crop, self.upscaler_1, self.upscaler_2, self.upscaler_2_visibility,
                self.gfpgan_visibility, self.codeformer_visibility, self.codeformer_weight, self.upscale_first]

    def targets(self) -> dict[str, Any]:
        """The control each field name of a refusal belongs to (A1111's API names, and the tab's)."""
        return {"upscaling_resize": self.factor, "upscaling_resize_w": self.width, "Width": self.width,
                "upscaling_resize_h": self.height, "Height": self.height, "upscaler_2": self.upscaler_2,
                "extras_upscaler_2_visibility": self.upscaler_2_visibility, "gfpgan_visibility": self.gfpgan_visibility,
                "codeformer_visibility": self.codeformer_visibility, "codeformer_weight": self.codeformer_weight}


def image_upscaler_names(services: Services) -> list[str]:
    """The upscalers Extras can use: None, Lanczos, Nearest and the model files (no latent modes)."""
    models = services.upscalers.names()
    return [n for n in upscaler_names(models) if find_upscaler(n, models).kind is not UpscalerKind.LATENT]  # type: ignore[union-attr]


def _inputs(services: Services) -> tuple[gr.State, gr.Image, gr.File, gr.Textbox, gr.Checkbox]:
    mode = gr.State(InputMode.SINGLE.value)
    with gr.Tabs(elem_id="extras_input_tabs"):
        with gr.Tab("Single Image", id="extras_single", elem_id="extras_single_tab") as single_tab:
            image = gr.Image(label="Source", type="filepath", sources=["upload", "clipboard"], height=360,
                             elem_id="extras_image")
        with gr.Tab("Batch Process", id="extras_batch", elem_id="extras_batch_tab") as files_tab:
            files = gr.File(label="Images", file_count="multiple", file_types=["image"], elem_id="extras_image_batch")
        with gr.Tab("Batch from Directory", id="extras_folder", elem_id="extras_folder_tab") as folder_tab:
            roots = ", ".join(f"`{escape.markdown(root)}`" for root in services.extras.input_roots)
            gr.Markdown(f"A folder inside {roots} (a relative path is looked for in each).")
            folder = gr.Textbox(label="Input directory", placeholder="e.g. my-photos", elem_id="extras_batch_input_dir")
            show_results = gr.Checkbox(value=True, label="Show result images", elem_id="extras_show_extras_results")
    for tab, value in ((single_tab, InputMode.SINGLE), (files_tab, InputMode.FILES), (folder_tab, InputMode.FOLDER)):
        tab.select(lambda chosen=value.value: chosen, outputs=[mode], api_visibility="private", queue=False)
    return mode, image, files, folder, show_results


def _resize(max_size: int) -> tuple[gr.State, gr.Number, gr.Number, gr.Number, gr.Checkbox]:
    resize = gr.State(int(ResizeMode.SCALE_BY))
    with gr.Tabs(elem_id="extras_resize_mode"):
        with gr.Tab("Scale by", id="extras_scale_by", elem_id="extras_scale_by_tab") as by_tab:
            factor = ranged_number("Resize", 2.0, span(MIN_FACTOR, MAX_FACTOR), "extras_upscaling_resize", step=0.05)
        with gr.Tab("Scale to", id="extras_scale_to", elem_id="extras_scale_to_tab") as to_tab:
            with gr.Row():
                width = ranged_number("Width", 512, span(1, max_size), "extras_upscaling_resize_w")
                height = ranged_number("Height", 512, span(1, max_size), "extras_upscaling_resize_h")
                crop = gr.Checkbox(value=True, label="Crop to fit", elem_id="extras_upscaling_crop")
    for tab, value in ((by_tab, ResizeMode.SCALE_BY), (to_tab, ResizeMode.SCALE_TO)):
        tab.select(lambda chosen=int(value): chosen, outputs=[resize], api_visibility="private", queue=False)
    return resize, factor, width, height, crop


def _controls(services: Services) -> tuple[_Controls, gr.Button]:
    mode, image, files, folder, show_results = _inputs(services)
    run = gr.Button("Generate", variant="primary", elem_id="extras_generate")
    resize, factor, width, height, crop = _resize(services.options.get().max_image_size)
    fraction = span(*FRACTION_RANGE)
    names = image_upscaler_names(services)
    with gr.Row():
        # Custom values pass the dropdown: the list is refreshed while the page is open, and the field
        # check sees the choices the tab was built with. The job's own check refuses an unknown name.
        upscaler_1 = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1",
                                 allow_custom_value=True)
        upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2",
                                 allow_custom_value=True)
        refresh = gr.Button("Refresh", size="sm", elem_id="extras_refresh_upscalers", scale=0)
    upscaler_2_visibility = ranged_number("Upscaler 2 visibility", 0.0, fraction, "extras_upscaler_2_visibility",
                                          step=0.001)
    with gr.Accordion("Face restoration", open=False, elem_id="extras_face_restoration"):
        gfpgan = ranged_number("GFPGAN visibility", 0.0, fraction, "extras_gfpgan_visibility", step=0.001)
        codeformer = ranged_number("CodeFormer visibility", 0.0, fraction, "extras_codeformer_visibility", step=0.001)
        weight = ranged_number("CodeFormer weight (0 = maximum effect, 1 = minimum effect)", 0.0, fraction,
                               "extras_codeformer_weight", step=0.001)
        first = gr.Checkbox(value=False, label="Upscale before restoring faces", elem_id="extras_upscale_before_face_fix")

    def refreshed(one: str, two: str) -> tuple[Any, Any]:
        fresh = image_upscaler_names(services)
        return (gr.update(choices=fresh, value=one if one in fresh else "None"),
                gr.update(choices=fresh, value=two if two in fresh else "None"))

    refresh.click(refreshed, inputs=[upscaler_1, upscaler_2], outputs=[upscaler_1, upscaler_2],
                  api_visibility="private", queue=False)
    model_downloads_ui.build_panel(services).then(refreshed, inputs=[upscaler_1, upscaler_2],
                                                  outputs=[upscaler_1, upscaler_2], api_visibility="private")
    return _Controls(mode, resize, image, files, folder, show_results, factor, width, height, crop, upscaler_1,
                     upscaler_2, upscaler_2_visibility, gfpgan, codeformer, weight, first), run


def _whole(value: Any, field: str) -> int:
    if value is None or float(value) != int(float(value)):
        raise ValidationError([FieldError(field, f"must be a whole number, got {value!r}")])
    return int(float(value))


def _request(values: list[Any], images: tuple[ExtrasImage, ...]) -> ExtrasRequest:
    (_mode, resize, _image, _files, _folder, _show, factor, width, height, crop, one, two, two_visibility,
     gfpgan, codeformer, weight, first) = values
    return ExtrasRequest(images=images, resize_mode=ResizeMode(int(resize)), upscaling_resize=number(factor),
                         upscaling_resize_w=_whole(width, "Width"), upscaling_resize_h=_whole(height, "Height"),
                         upscaling_crop=bool(crop), upscaler_1=one or "None", upscaler_2=two or "None",
                         upscaler_2_visibility=number(two_visibility), gfpgan_visibility=number(gfpgan),
                         codeformer_visibility=number(codeformer), codeformer_weight=number(weight),
                         upscale_first=bool(first), save=True)


def _validator(controls: _Controls, services: Services) -> Any:
    """A Gradio ``validator``: each value the Extras check refuses gets its message (with the range)
    next to its control, and the job does not start. The inputs' own problems (no image) are the job's."""
    inputs, targets = controls.inputs(), controls.targets()

    def validate(*values: Any) -> list[Any]:
        errors: list[FieldError] = []
        try:
            check_values(_request(list(values), ()), services.options.get().max_image_size)
        except ValidationError as exc:
            errors = list(exc.errors)
        messages: dict[int, list[str]] = {}
        for error in errors:
            if error.field in targets:
                messages.setdefault(id(targets[error.field]), []).append(f"{error.field}: {error.message}")
        return [gr.validate(id(c) not in messages, "; ".join(messages.get(id(c), []))) for c in inputs]

    return validate


def _uploaded(mode: InputMode, image: str | None, files: list[Any] | None) -> tuple[ExtrasImage, ...]:
    """The chosen inputs' bytes (files Gradio saved from the upload, under its own names)."""
    if mode is InputMode.SINGLE:
        if not image:
            raise ValidationError([FieldError("Source", "is empty: upload an image first")])
        return (ExtrasImage(Path(image).read_bytes()),)
    paths = [getattr(f, "name", f) for f in files or []]
    if not paths:
        raise ValidationError([FieldError("Images", "is empty: choose image files first")])
    if len(paths) > MAX_BATCH:
        raise ValidationError([FieldError("Images", f"has {len(paths)} files; at most {MAX_BATCH} at a time")])
    return tuple(ExtrasImage(Path(p).read_bytes(), Path(p).name) for p in paths)


def _shown(result: ExtrasResult, show: bool) -> tuple[list[Any], list[dict[str, Any]]]:
    if not show:
        return [], []
    items = [str(path) for path in result.paths if path is not None]
    infos = [{"path": str(path) if path else None, "infotext": output.source_parameters or ""}
             for output, path in zip(result.outputs, result.paths)]
    return items, infos


def build_tab(services: Services) -> ExtrasTab:
    """The Extras controls and their events; call inside a ``gr.Tab``."""
    with gr.Row():
        with gr.Column():
            controls, run = _controls(services)
        with gr.Column():
            progress = gr.HTML("", elem_id="extras_progress")
            gallery = gr.Gallery(label="Result", columns=2, height="auto", format="png", interactive=False,
                                 elem_id="extras_gallery")
            info = gr.HTML("", elem_id="html_info_extras")
            with gr.Row():
                send = {t: gr.Button(f"Send to {t}", size="sm", elem_id=f"extras_send_to_{t}")
                        for t in ("img2img", "inpaint")}
    infos, selected = gr.State([]), gr.State(0)

    def process(mode_value: str, resize: int, image: str | None, files: list[Any] | None, folder: str | None,
                show: bool, factor: float, width: Any, height: Any, crop: bool, upscaler_1: str, upscaler_2: str,
                upscaler_2_visibility: float, gfpgan: float, codeformer: float, weight: float, first: bool,
                request: gr.Request) -> Iterator[dict[Any, Any]]:
        values = [mode_value, resize, image, files, folder, show, factor, width, height, crop, upscaler_1,
                  upscaler_2, upscaler_2_visibility, gfpgan, codeformer, weight, first]
        mode = InputMode(mode_value)
        owner = user_of(request)
        try:
            job_request = _request(list(values), ())
            if mode is InputMode.FOLDER:
                yield {progress: "Working through the folder…"}
                result = services.extras.run_folder(job_request, values[4] or "", owner)
            else:
                job_request = replace(job_request, images=_uploaded(mode, values[2], values[3]))
                job = services.extras.submit(job_request, owner)
                for snapshot, _preview in wait_for(job, services.queue):
                    yield {progress: progress_html(snapshot)}
                result = services.extras.finish(job_request, job)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        items, shown = _shown(result, mode is not InputMode.FOLDER or bool(values[5]))
        note = "Interrupted: kept the images finished before the stop." if result.interrupted else ""
        saved = f"Saved {len(result.outputs)} image(s) to {escape.text(services.paths.outputs_dir / 'extras-images')}"
        text = escape.text(result.infotext) if result.infotext else "Nothing to do: the image is unchanged."
        yield {progress: note, gallery: items, infos: shown, selected: 0,
               info: f"<p>{text}</p><p class='atelier-note'>{saved}</p>"}

    run.click(process, inputs=controls.inputs(), outputs=[progress, gallery, infos, selected, info],
              validator=_validator(controls, services), concurrency_limit=None, show_progress="hidden",
              api_visibility="private")

    def on_select(evt: gr.SelectData) -> int:
        return int(evt.index) if isinstance(evt.index, int) else 0

    gallery.select(on_select, outputs=[selected], api_visibility="private", queue=False)
    return ExtrasTab(image=controls.image, infos=infos, selected=selected, send_buttons=send)
