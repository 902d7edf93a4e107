"""modules.ui.form_fields: each generating form is declared once, by request field name, and its
request, its Gradio inputs and what "send to"/"paste" fill all come from that declaration."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
import pytest
from PIL import Image

from modules.params import GenerationRequest, HiresFix, MaskedContent, Refiner, ResizeMode
from modules.samplers import ScheduleType
from modules.ui import img2img, inpaint, txt2img
from modules.ui.checkpoints import with_job_checkpoint
from modules.ui.form_fields import (
    GROUPS,
    SAME,
    SHARED,
    FormFields,
    filled_names,
    request_from_values,
    values_from_request,
)
from modules.ui.generation_form import GenerationForm
from modules.ui.infotext_fill import values_from_infotext
from modules.ui.override_settings import with_overrides
from tests.conftest import make_services

INFOTEXT = ("a lighthouse at dusk\nNegative prompt: fog\n"
            "Steps: 23, Sampler: Euler a, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 576x448, "
            "Clip skip: 2, Tiling: True, Variation seed: 77, Variation seed strength: 0.25, Seed resize from: 320x256, "
            "Denoising strength: 0.45, Hires upscale: 1.5, Hires steps: 7, Hires upscaler: Latent, "
            "Hires prompt: sharper, Refiner: other-model [abcd1234], Refiner switch at: 0.6")
# What sending INFOTEXT fills, by elem_id (the component the declaration binds to each name).
FILLED = {
    "prompt": "a lighthouse at dusk", "neg_prompt": "fog", "sampling": "Euler a", "scheduler": "Karras",
    "steps": 23, "cfg_scale": 6.5, "width": 576, "height": 448, "seed": 1234, "clip_skip": 2, "subseed": 77,
    "subseed_strength": 0.25, "seed_resize_from_w": 320, "seed_resize_from_h": 256, "enable_refiner": True,
    "refiner_checkpoint": "other-model", "refiner_switch_at": 0.6,
    "tiling": True, "restore_faces": False,  # the infotext has no "Face restoration": unticked
    "distilled_cfg_scale": 3.5, "shift": None,  # no Forge keys: no distilled guidance, the family's own shift
    "quality": None, "style": None,  # no remote model's keys: none of its options
}
FILLED_HIRES = {
    "enable_hr": True, "hr_upscaler": "Latent", "hires_steps": 7, "denoising_strength": 0.45, "hr_scale": 1.5,
    "hr_resize_x": 0, "hr_resize_y": 0, "hr_sampler": SAME, "hr_scheduler": SAME, "hr_prompt": "sharper",
    "hr_neg_prompt": "",
}


@dataclass(frozen=True)
class Forms:
    services: Any
    demo: gr.Blocks
    by_tab: dict[str, GenerationForm]


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forms]:
    services = make_services(tmp_path_factory.mktemp("data"), tmp_path_factory.mktemp("no-models"))
    try:
        with gr.Blocks() as demo:
            by_tab = {"txt2img": txt2img.build_tab(services), "img2img": img2img.build_tab(services),
                      "inpaint": inpaint.build_tab(services)}
        yield Forms(services, demo, by_tab)
    finally:
        services.close()


class Recorded(dict):  # type: ignore[type-arg]
    """Values by name that note every name read (``in`` is not a read); an undeclared name is a KeyError."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        self.read.add(name)
        return super().__getitem__(name)



def defaults(form: GenerationForm, **changes: Any) -> dict[str, Any]:
    """The form's values as a fresh page sends them, by name, with ``changes``."""
    values = {name: component.value for name, component in form.fields.by_name.items()}
    values.update({name.replace("__", "."): value for name, value in changes.items()})
    return values


def picture() -> Image.Image:
    return Image.new("RGB", (64, 64), "white")


def editor(with_mask: bool = True) -> dict[str, Any]:
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    if with_mask:
        layer.paste((255, 255, 255, 255), (8, 8, 24, 24))
    return {"background": picture(), "layers": [layer], "composite": picture()}


def on_generate(make: Any) -> Any:
    """What Generate builds from a tab's request: it with the "Override settings" entries and the
    page's "Checkpoint for my jobs" applied."""
    return lambda values: with_job_checkpoint(with_overrides(make(values), values), values)


def reads(make: Any, values: dict[str, Any]) -> set[str]:
    recorded = Recorded(values)
    make(recorded)
    return recorded.read


# --- the declaration covers what the request reads, and the request reads what it declares ---------


def test_txt2img_reads_every_declared_field_and_nothing_else(forms: Forms) -> None:
    form = forms.by_tab["txt2img"]
    on = defaults(form, hires__enable=True, refiner__enable=True, refiner__checkpoint="x")
    assert reads(on_generate(request_from_values), on) == set(form.fields.by_name)


def test_img2img_reads_every_declared_field_over_its_sub_tabs(forms: Forms) -> None:
    form = forms.by_tab["img2img"]
    base = defaults(form, init_image=picture(), init_image__sketch=editor(), refiner__enable=True)
    make = on_generate(img2img.img2img_request)
    read = reads(make, base) | reads(make, {**base, "init_image.mode": "sketch"})
    assert read == set(form.fields.by_name)


def test_inpaint_and_outpaint_read_every_declared_field_over_their_sub_tabs(forms: Forms) -> None:
    form = forms.by_tab["inpaint"]
    base = defaults(form, init_image=editor(), inpaint__sketch=editor(), inpaint__upload=picture(),
                    inpaint__upload_mask=Image.new("L", (64, 64), 255), refiner__enable=True)
    read: set[str] = set()
    for mode in ("brush", "sketch", "upload"):
        read |= reads(on_generate(inpaint.inpaint_request), {**base, "inpaint.mode": mode})
    read |= reads(on_generate(lambda values: inpaint.outpaint_request_from(values, 2048)), base)
    assert read == set(form.fields.by_name)


def test_every_form_declares_the_shared_fields_and_the_groups_it_uses(forms: Forms) -> None:
    for tab, form in forms.by_tab.items():
        assert set(SHARED) <= set(form.fields.by_name), tab
        for group in GROUPS:
            declared = {name for name in form.fields.by_name if name.startswith(f"{group.name}.")}
            assert declared in (set(), set(group.keys())), (tab, group.name)
    assert "hires.enable" in forms.by_tab["txt2img"].fields
    assert "hires.enable" not in forms.by_tab["img2img"].fields


# --- values become the request by name ----------------------------------------------------------


def test_a_tabs_values_become_its_request(forms: Forms) -> None:
    values = defaults(forms.by_tab["inpaint"], init_image=editor(), prompt="a cat", steps=12.0, seed=None,
                      invert_mask="Inpaint not masked", inpaint_only_masked="Only masked", masked_content="fill",
                      mask_blur=6.0, denoising_strength=0.5, resize_mode=ResizeMode.CROP_AND_RESIZE.value)
    request = inpaint.inpaint_request(values)
    assert (request.prompt, request.steps, request.seed) == ("a cat", 12, -1)
    assert request.invert_mask and request.inpaint_only_masked and request.masked_content is MaskedContent.FILL
    assert (request.mask_blur, request.denoising_strength, request.resize_mode) == (6, 0.5, ResizeMode.CROP_AND_RESIZE)
    assert request.init_image is not None and request.mask is not None and request.hires is None


def test_the_request_leaves_server_settings_unset(forms: Forms) -> None:
    request = request_from_values(defaults(forms.by_tab["txt2img"]))
    plain = GenerationRequest()
    assert (request.eta_noise_seed_delta, request.rng, request.vae, request.checkpoint) == (
        plain.eta_noise_seed_delta, plain.rng, plain.vae, plain.checkpoint)


def test_groups_are_read_when_switched_on() -> None:
    values = {**{name: None for name in SHARED}, "prompt": "p", "sampler": "Euler", "schedule": "Automatic",
              "steps": 20.0, "cfg_scale": 7, "width": 512.0, "height": 512.0, "batch_count": 1.0, "batch_size": 1.0,
              "clip_skip": 1.0, "hires.enable": True, "hires.upscaler": "Latent", "hires.steps": 5.0,
              "hires.denoising_strength": 0.4, "hires.scale": 2.0, "hires.resize_width": 0.0,
              "hires.resize_height": 0.0, "hires.sampler": SAME, "hires.schedule": "Karras", "hires.prompt": None,
              "hires.negative_prompt": "", "hires.save_first_pass": True, "refiner.enable": False}
    request = request_from_values(values)
    assert request.hires == HiresFix(scale=2.0, upscaler="Latent", steps=5, denoising_strength=0.4, sampler=None,
                                     schedule=ScheduleType.KARRAS, prompt="", save_first_pass=True)
    assert request.refiner is None and request.seed == -1 and request.styles == ()


# --- "send to" and "paste" fill components by name --------------------------------------------


def filled_by_elem_id(form: GenerationForm, services: Any, text: str) -> dict[str, Any]:
    updates = form.fields.fill(values_from_infotext(text, services))
    return {component.elem_id.removeprefix(f"{form.prefix}_"): value for component, value in updates.items()}


def test_send_to_fills_each_declared_component_from_an_infotext(forms: Forms) -> None:
    assert filled_by_elem_id(forms.by_tab["txt2img"], forms.services, INFOTEXT) == FILLED | FILLED_HIRES
    for tab in ("img2img", "inpaint"):  # no hires fix there: its values are not sent
        assert filled_by_elem_id(forms.by_tab[tab], forms.services, INFOTEXT) == FILLED, tab


def test_an_infotext_without_hires_or_refiner_switches_them_off_and_keeps_their_values(forms: Forms) -> None:
    filled = filled_by_elem_id(forms.by_tab["txt2img"], forms.services, "a cat\nSteps: 9, Seed: 5, Size: 64x64")
    assert (filled["enable_hr"], filled["enable_refiner"], filled["steps"]) == (False, False, 9)
    assert filled["tiling"] is False  # an infotext without "Tiling: True" unticks it
    assert not {"hr_upscaler", "hires_steps", "refiner_checkpoint", "refiner_switch_at"} & set(filled)


def test_what_send_to_fills_comes_back_as_the_same_request(forms: Forms) -> None:
    form = forms.by_tab["txt2img"]
    request = GenerationRequest(prompt="p", negative_prompt="n", sampler="Euler", schedule=ScheduleType.KARRAS,
                                steps=9, cfg_scale=5.5, width=320, height=256, seed=42, clip_skip=2,
                                variation_seed=3, variation_strength=0.5, seed_resize_from_width=64,
                                seed_resize_from_height=64, refiner=Refiner("r", 0.7), tiling=True,
                                hires=HiresFix(scale=1.5, steps=4, sampler="Euler a", prompt="hp",
                                               save_first_pass=False))  # the checkbox always says
    values = defaults(form) | values_from_request(request)
    assert request_from_values(values) == request


def test_filled_names_are_what_values_from_request_may_fill() -> None:
    full = values_from_request(GenerationRequest(hires=HiresFix(), refiner=Refiner("r")))
    assert set(full) == set(filled_names())


# --- the declaration itself ------------------------------------------------------------------------


def test_reordering_a_declaration_changes_nothing(forms: Forms) -> None:
    form = forms.by_tab["txt2img"]
    backwards = FormFields(dict(reversed(list(form.fields.by_name.items()))))
    received = {component: value for component, value in zip(form.fields.by_name.values(),
                                                               defaults(form, prompt="x").values(), strict=True)}
    assert backwards.values(received) == form.fields.values(received)
    assert request_from_values(backwards.values(received)) == request_from_values(form.fields.values(received))
    sent = values_from_infotext(INFOTEXT, forms.services)
    assert backwards.fill(sent) == form.fields.fill(sent)
    assert backwards.inputs() == form.fields.inputs()


def test_a_name_or_a_component_declared_twice_is_refused() -> None:
    with gr.Blocks():
        box, other = gr.Textbox(), gr.Textbox()
    with pytest.raises(ValueError, match="same component"):
        FormFields({"prompt": box, "negative_prompt": box})
    with pytest.raises(ValueError, match="declared twice: prompt"):
        _ = FormFields({"prompt": box}) | {"prompt": other}


def test_generate_takes_the_declaration_and_the_extensions_as_one_set_of_inputs(forms: Forms) -> None:
    for tab, form in forms.by_tab.items():
        [generate] = [f for f in forms.demo.fns.values() if f.fn.__qualname__ == "wire_generation.<locals>.run"
                      and any(forms.demo.blocks.get(target) is form.generate for target, _event in f.targets)]
        assert generate.inputs_as_dict, tab  # the handler receives {component: value}
        # and the confirmation's asker (which button's question a Start answers)
        assert set(generate.inputs) == form.fields.inputs() | form.extensions.inputs() | {form.confirm.asker}, tab


def test_fill_skips_names_a_form_does_not_declare() -> None:
    with gr.Blocks():
        steps = gr.Slider()
    assert FormFields({"steps": steps}).fill({"steps": 5, "hires.steps": 3}) == {steps: 5}


# --- the page's "send to" and "paste" events --------------------------------------------------------


@pytest.fixture(scope="module")
def page(forms: Forms) -> gr.Blocks:
    from modules.ui.app_ui import build_ui

    return build_ui(forms.services)


def handler(page: gr.Blocks, elem_id: str, event: str = "click") -> Any:
    for block_fn in page.fns.values():
        for target, name in block_fn.targets:
            if name == event and getattr(page.blocks.get(target), "elem_id", None) == elem_id:
                return block_fn.fn
    raise LookupError(f"no {event} handler on #{elem_id}")


def by_elem_id(updates: dict[Any, Any]) -> dict[str, Any]:
    return {component.elem_id: value for component, value in updates.items()}


def test_sending_to_inpaint_puts_the_picture_in_its_editor_and_the_fields_by_name(page: gr.Blocks) -> None:
    sent = by_elem_id(handler(page, "pnginfo_send_to_inpaint")("/outputs/a.png", INFOTEXT))
    assert sent["img2maskimg"] == {"background": "/outputs/a.png", "layers": [], "composite": "/outputs/a.png"}
    assert (sent["inpaint_steps"], sent["inpaint_prompt"], sent["inpaint_enable_refiner"]) == (23, INFOTEXT[:20], True)
    assert sent["tabs"].selected == "inpaint"
    assert not any(key.startswith("inpaint_hr") for key in sent)


def test_sending_to_img2img_fills_its_image_and_to_txt2img_its_hires_fix(page: gr.Blocks) -> None:
    to_img2img = by_elem_id(handler(page, "pnginfo_send_to_img2img")(None, INFOTEXT))
    assert to_img2img["img2img_image"] is None and to_img2img["img2img_seed"] == 1234  # as before: no file, no image
    to_txt2img = by_elem_id(handler(page, "txt2img_send_to_img2img")([{"seed": 1, "infotext": INFOTEXT,
                                                                         "path": "/o/b.png"}], 0))
    assert to_txt2img["img2img_image"] == "/o/b.png"
    from_png = by_elem_id(handler(page, "pnginfo_send_to_txt2img")(None, INFOTEXT))
    assert (from_png["txt2img_enable_hr"], from_png["txt2img_hires_steps"], from_png["txt2img_cfg_scale"]) == (True, 7, 6.5)


def test_paste_fills_the_same_tab_and_leaves_its_image(page: gr.Blocks) -> None:
    pasted = by_elem_id(handler(page, "img2img_paste")(INFOTEXT))
    assert pasted["img2img_prompt"] == "a lighthouse at dusk" and pasted["tabs"].selected == "img2img"
    assert "img2img_image" not in pasted
    with pytest.raises(gr.Error):
        handler(page, "img2img_paste")("just a prompt")
    with pytest.raises(gr.Error, match="Nothing to send"):
        handler(page, "pnginfo_send_to_txt2img")(None, "")


def test_the_tiling_checkbox_of_each_tab_reaches_its_request(forms: Forms) -> None:
    makers = {"txt2img": (request_from_values, {}), "img2img": (img2img.img2img_request, {"init_image": picture()}),
              "inpaint": (inpaint.inpaint_request, {"init_image": editor()})}
    for tab, (make, inputs) in makers.items():
        form = forms.by_tab[tab]
        checkbox = form.fields["tiling"]
        assert (checkbox.label, checkbox.value, checkbox.elem_id) == ("Tiling", False, f"{tab}_tiling")
        assert make(defaults(form, **inputs)).tiling is False, tab
        assert make(defaults(form, tiling=True, **inputs)).tiling is True, tab


def test_the_restore_faces_checkbox_of_each_tab_reaches_its_request(forms: Forms) -> None:
    makers = {"txt2img": (request_from_values, {}), "img2img": (img2img.img2img_request, {"init_image": picture()}),
              "inpaint": (inpaint.inpaint_request, {"init_image": editor()})}
    for tab, (make, inputs) in makers.items():
        form = forms.by_tab[tab]
        checkbox = form.fields["restore_faces"]
        assert (checkbox.label, checkbox.value, checkbox.elem_id) == ("Restore faces", False, f"{tab}_restore_faces")
        assert make(defaults(form, **inputs)).restore_faces is False, tab
        assert make(defaults(form, restore_faces=True, **inputs)).restore_faces is True, tab
    pasted = values_from_infotext("a face\nSteps: 9, Seed: 5, Face restoration: GFPGAN, Size: 64x64", forms.services)
    assert pasted["restore_faces"] is True
