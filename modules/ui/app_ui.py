"""The whole page: the checkpoint bar and quicksettings on top, then one tab per feature, Settings last."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import gradio as gr

from modules import __version__
from modules.extension_api import Hook, UiTabs
from modules.infotext import parse_infotext
from modules.services.container import Services
from modules.services.engine_slot import STARTING
from modules.services.system_memory import memory_report
from modules.ui import (
    account_tab,
    checkpoints,
    escape,
    extensions_tab,
    extras_tab,
    family_fields,
    gallery,
    icons,
    img2img,
    inpaint,
    png_info,
    private_events,
    queue_tab,
    remote_fields,
    settings_tab,
    txt2img,
    workers_panel,
)
from modules.ui.generation_form import GenerationForm
from modules.ui.send_to import SendWiring, pick_shown


def build_ui(services: Services) -> gr.Blocks:
    """Build the Blocks. Outputs are served in place (no copy into Gradio's cache)."""
    gr.set_static_paths(paths=[services.paths.outputs_dir, services.paths.cache_dir / "thumbnails"])
    with gr.Blocks(title="Atelier", analytics_enabled=False) as demo:
        checkpoint, job_checkpoint = checkpoints.build_bar(services, demo)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.build_tab(services)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = img2img.build_tab(services)
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab_inpaint"):
                inp = inpaint.build_tab(services)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = extras_tab.build_tab(services)
            with gr.Tab("Gallery", id="gallery", elem_id="tab_gallery") as gallery_tab:
                gal = gallery.build_tab(services, gallery_tab)
            with gr.Tab(queue_tab.TAB_LABEL, id="queue", elem_id="tab_queue") as queue_page:
                queue = queue_tab.build_tab(services, queue_page, tabs)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                png = png_info.build_tab()
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.build_tab(services, demo)
            _extension_tabs(services)
            with gr.Tab("Account", id="account", elem_id="tab_account") as account_page:
                account_tab.build_tab(services, demo, account_page)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings_tab.build_tab(services, demo)
        forms = {"txt2img": t2i, "img2img": i2i, "inpaint": inp}  # by tab id
        checkpoints.share_job_checkpoint(job_checkpoint, [f.fields[checkpoints.JOB_CHECKPOINT] for f in forms.values()])
        family_fields.wire_family_fields(checkpoint, forms, services)  # Forge's per-family controls and presets
        remote_fields.wire_remote_fields(checkpoint, job_checkpoint, forms, services)  # remote models' own controls
        _wire_sends(SendWiring(services, tabs, checkpoint), forms, gal, png, extras, queue)
        workers_panel.build_panel(services)
        _footer(services)
    return demo


def _footer(services: Services) -> None:
    """Version, device and memory use, refreshed every few seconds while the page is open (the device
    reads "starting…" until the engine is built: the page never waits for torch)."""
    def text() -> str:
        engine = services.engine.peek()
        device = engine.device if engine is not None else None
        memory = memory_report(device).summary()
        described = device.describe() if device is not None else STARTING
        return f"Atelier {__version__} · device: {described}" + (f" · {memory}" if memory else "")

    footer = gr.Markdown(text(), elem_id="footer")
    gr.Timer(5.0).tick(text, outputs=[footer], show_progress="hidden", api_visibility="private", queue=False)


def _extension_tabs(services: Services) -> None:
    """A tab per extension that adds one (Hook.UI_TABS); a builder that raises shows why instead."""
    for record, handler in services.extensions.handlers(Hook.UI_TABS):
        title = (record.setup.tab_title if record.setup else None) or record.name
        with gr.Tab(title, id=f"ext_{record.name}", elem_id=f"tab_ext_{record.name}"):
            try:
                with private_events.extension_build(record.name):  # no public API from its events
                    handler.call(UiTabs(services.extensions.host(record.name)))
            except Exception as exc:  # its bug: shown in its tab, the extension is switched off
                services.extensions.fail(record.name, "UI_TABS", exc)
                gr.Markdown(f"{icons.WARNING} The extension {escape.markdown(record.name)} failed to build this tab: "
                            f"{escape.markdown(exc)}")


def _wire_sends(send: SendWiring, forms: Mapping[str, GenerationForm], gal: gallery.GalleryTab,
                png: png_info.PngInfoTab, extras: extras_tab.ExtrasTab, queue: queue_tab.QueueTab) -> None:
    """Every "Send to" button and each form's paste, by target tab id (the forms' prefixes)."""
    for source in forms.values():
        for target_id in source.send_buttons:
            if target_id == "extras":
                send.from_form_to_extras(source, extras.image)
            else:
                send.from_form(source, target_id, forms[target_id])
        # Paste: an infotext in the prompt box fills this same tab (its fields; the image stays).
        send.wire(source.paste, [source.fields["prompt"]], _pasted, source.prefix, source, with_image=False)
    for target_id, target in forms.items():
        send.wire(png.send_buttons[target_id], [png.image, png.text], lambda path, text: (path, text or ""),
                  target_id, target)
        send.wire(gal.send_buttons[target_id], [gal.selected, gal.info], gal.pick, target_id, target)
        send.wire(queue.send_buttons[target_id], [queue.picked], queue.pick, target_id, target)
    for target_id, button in extras.send_buttons.items():
        send.wire(button, [extras.infos, extras.selected], pick_shown, target_id, forms[target_id])
    send.to_extras(png.send_buttons["extras"], [png.image, png.text], lambda path, text: (path, text or ""),
                   extras.image)
    send.to_extras(gal.send_buttons["extras"], [gal.selected, gal.info], gal.pick, extras.image)


def _pasted(text: str | None) -> tuple[None, str]:
    if not text or not parse_infotext(text).params:
        raise gr.Error("Paste a whole parameters text (prompt, negative prompt and the Steps: ... line) "
                       "into the prompt box first.")
    return None, text


# What a browser needs before it has logged in: the login page and its static assets. Gradio
# itself answers these (the config route says 401 until the login succeeds).
_OPEN_EXACT = ("/", "/login", "/login/", "/logout", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css",
               "/config", "/config/", "/gradio_api/login_check", "/gradio_api/login_check/", "/gradio_api/app_id",
               "/gradio_api/app_id/", "/pwa_icon")
_OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")


def open_paths(subpath: str) -> Callable[[str], bool]:
    """Whether a path is open without a login, for a UI mounted at ``subpath``."""

    def is_open(path: str) -> bool:
        if subpath:
            if path == subpath:
                return True
            if not path.startswith(subpath + "/"):
                return False
            path = path[len(subpath):]
        return path in _OPEN_EXACT or path.startswith(_OPEN_PREFIXES)

    return is_open
