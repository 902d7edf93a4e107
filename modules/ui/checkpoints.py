"""The checkpoint bar at the top of the page: choose, refresh, or (with none) get one; a checkpoint
that needs a part Atelier can download (a T5 / LLM tokenizer) gets a button that fetches it and loads
the checkpoint again.

The server-wide choice is an admin's. A signed-in user who is no admin sees "Checkpoint for my jobs"
instead: a choice of this page's own, among the checkpoints their limits allow, that each Generate
click of the page puts in its job (``request.checkpoint``); the front checks it against the limits."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import gradio as gr

from modules.errors import AtelierError, MissingComponentError
from modules.identity import is_admin
from modules.params import GenerationRequest
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.missing_components import downloadable
from modules.services.queue_contract import QueueMode
from modules.services.tokenizer_downloads import TokenizerFetcher
from modules.ui import escape, icons
from modules.ui.common import ui_error
from modules.ui.quicksettings import build_quicksettings
from modules.ui.session import identity_of
from modules.ui.vae_bar import build_vae_choice

log = logging.getLogger(__name__)

JOB_CHECKPOINT = "job_checkpoint"  # a form's field: this page's "Checkpoint for my jobs" (None: the server's)


def _titles(services: Services) -> list[str]:
    """The local checkpoints, then the remote models on offer (``openai/dall-e-3``)."""
    return [info.title for info in services.registry.all()] + services.remote.titles()


def _current_title(services: Services) -> str | None:
    """The server's selection: a remote model when one is selected, else the loaded checkpoint."""
    remote = services.remote.selected_title()
    if remote is not None:
        return remote
    current = services.models.current()
    return current.title if current else None


def _no_model_notice(services: Services) -> str:
    folder = escape.markdown(services.paths.default_checkpoint_dir)  # a code span would not escape it
    return (f"**No checkpoint found.** Copy a Stable Diffusion checkpoint (`.safetensors`, `.ckpt`, or a diffusers "
            f"folder) into <code>{folder}</code> and press {icons.REFRESH} (refresh), or download Stable Diffusion 1.5 from the Hugging "
            "Face hub with the button below (needs internet).")


def _offer(services: Services, error: AtelierError | None) -> tuple[dict, list[str] | None]:
    """The download button's update and what it fetches ([component, checkpoint title]): shown only
    for a missing part Atelier can download, of a checkpoint in the list."""
    component = downloadable(error) if isinstance(error, MissingComponentError) else None
    info = next((i for i in services.registry.all() if str(i.path) == error.path), None) if component else None
    if component is None or info is None:
        return gr.update(visible=False), None
    return gr.update(visible=True, value=f"Download {component}"), [component, info.title]


def _switch(services: Services, title: str) -> tuple[dict, str, dict, list[str] | None]:
    """Load ``title``; a failure is a warning (its message names the file and folder) and, for a part
    Atelier can download, the button that fetches it (the last two values update it and its state)."""
    error = None
    try:
        services.generation.switch_model(title).future.result()
    except AtelierError as exc:
        gr.Warning(f"{escape.text(exc)} The previous model stays loaded.")
        error = exc
    return (gr.update(choices=_titles(services), value=_current_title(services)), _status_text(services),
            *_offer(services, error))


def build_component_offer(services: Services, checkpoint: gr.Dropdown,
                          status: gr.Markdown) -> tuple[gr.Button, gr.State]:
    """The hidden "Download <component>" button a failed switch shows (see :func:`_offer`), and its
    state ([component, checkpoint title]); a click downloads the part with progress, then loads the
    checkpoint again."""
    fetch = gr.Button("", visible=False, elem_id="download_missing_component")
    fetch_wanted = gr.State(None)  # [component, checkpoint title]: what the button downloads, then loads
    tokenizers = TokenizerFetcher(services.paths.tokenizers_dir)

    @changes_server  # downloads into the models folder and switches the model for everyone
    def on_fetch(wanted: list[str] | None,
                 progress: gr.Progress = gr.Progress()) -> tuple[dict, str, dict, list[str] | None]:
        if not wanted:
            return gr.skip(), _status_text(services), gr.update(visible=False), None
        component, title = wanted

        def report(done: int, total: int) -> None:
            progress((done, total or None), desc=f"Downloading {component}", unit="bytes")

        try:
            tokenizers.download(component, on_progress=report)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return _switch(services, title)  # the next missing part, if any, gets its own message

    fetch.click(on_fetch, inputs=[fetch_wanted], outputs=[checkpoint, status, fetch, fetch_wanted],
                api_visibility="private")
    return fetch, fetch_wanted


def build_bar(services: Services, demo: gr.Blocks) -> tuple[gr.Dropdown, gr.Dropdown]:
    """The dropdown ``setting_sd_model_checkpoint`` with its refresh button, the VAE and the other
    quicksettings (shown when ``demo`` loads), the download offer for a missing part, and the
    empty-state help; and "Checkpoint for my jobs" (``job_checkpoint``), shown instead of the
    server-wide dropdown to a signed-in user who is no admin (see :func:`share_job_checkpoint`)."""
    with gr.Row(elem_id="quicksettings"):
        checkpoint = gr.Dropdown(choices=_titles(services), value=None,
                                 label="Stable Diffusion checkpoint", elem_id="setting_sd_model_checkpoint", scale=4)
        mine = gr.Dropdown(choices=[], value=None, label="Checkpoint for my jobs", elem_id="job_checkpoint", scale=4,
                           visible=False)
        refresh = gr.Button(icons.REFRESH, elem_id="refresh_sd_model_checkpoint", elem_classes="tool-button",
                            scale=0)
        build_vae_choice(services)
        build_quicksettings(services, demo)
    status = gr.Markdown("", elem_id="sd_model_status")
    fetch, fetch_wanted = build_component_offer(services, checkpoint, status)
    with gr.Group(visible=not services.registry.all()) as empty:
        gr.Markdown(_no_model_notice(services), elem_id="no_checkpoint_notice")
        download = gr.Button("Download Stable Diffusion 1.5 (about 4 GB)", elem_id="download_default_checkpoint")

    @changes_server  # rescans the checkpoint folders (and asks the providers for their models) for everyone
    def on_refresh() -> tuple[dict, dict, str]:
        services.registry.refresh()
        services.remote.refresh()
        titles = _titles(services)
        return (gr.update(choices=titles, value=_current_title(services)), gr.update(visible=not titles),
                _status_text(services))

    @changes_server  # switches the model every user generates with
    def on_select(title: str | None) -> tuple[dict, str, dict, list[str] | None]:
        if not title or title == _current_title(services):
            return gr.skip(), _status_text(services), gr.skip(), gr.skip()
        return _switch(services, title)

    @changes_server  # downloads a checkpoint and switches to it
    def on_download(progress: gr.Progress = gr.Progress()) -> tuple[dict, dict, str]:
        def report(done: int, total: int) -> None:
            progress((done, total or None), desc="Downloading", unit="bytes")

        try:
            path = services.downloads.download(on_progress=report)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        services.registry.refresh()
        services.generation.switch_model(path.name).future.result()
        return on_refresh()

    def on_tick() -> tuple[dict, str, gr.Timer]:
        # Polls until a model is loaded (startup loads in the background), then stops itself.
        if services.engine.peek() is None:  # torch and the startup model are still on their way
            return gr.skip(), _status_text(services), gr.Timer(active=True)
        if services.models.current() is None and services.registry.all() and not services.models.last_error:
            return gr.skip(), _status_text(services), gr.Timer(active=True)
        return gr.update(choices=_titles(services), value=_current_title(services)), _status_text(services), \
            gr.Timer(active=False)

    timer = gr.Timer(1.0, active=True)
    timer.tick(on_tick, outputs=[checkpoint, status, timer], api_visibility="private", show_progress="hidden")
    refresh.click(on_refresh, outputs=[checkpoint, empty, status], api_visibility="private")
    checkpoint.input(on_select, inputs=[checkpoint], outputs=[checkpoint, status, fetch, fetch_wanted],
                     api_visibility="private", concurrency_limit=None)
    download.click(on_download, outputs=[checkpoint, empty, status], api_visibility="private")
    def on_page(request: gr.Request) -> tuple[dict, dict, dict]:
        return _job_choice(services, request)

    demo.load(on_page, outputs=[checkpoint, refresh, mine], api_visibility="private", queue=False)
    return checkpoint, mine


def allowed_titles(services: Services, name: str) -> list[str]:
    """The checkpoints account ``name`` may use (by their titles)."""
    limits = services.accounts.limits(name)
    return [i.title for i in services.registry.all()
            if limits.allows_checkpoint(i.title, i.name, i.path.name, i.model_name)] + \
        [title for title in services.remote.titles() if limits.allows_checkpoint(title)]


def _job_choice(services: Services, request: gr.Request) -> tuple[dict, dict, dict]:
    """On page load: the server-wide dropdown for admins (and without sign-in); for a user, their
    own choice among the checkpoints they may use, starting at the server's when it is one."""
    identity = identity_of(request)
    if is_admin(identity):
        return gr.update(visible=True), gr.update(visible=True), gr.update(visible=False, value=None)
    assert identity is not None
    titles = allowed_titles(services, identity.name)
    current = _current_title(services) if services.engine.peek() is not None else None
    value = current if current in titles else (titles[0] if titles else None)
    return gr.update(visible=False), gr.update(visible=False), gr.update(visible=True, choices=titles, value=value)


def share_job_checkpoint(mine: gr.Dropdown, fields: Iterable[Any]) -> None:
    """Every form's :data:`JOB_CHECKPOINT` field follows this page's "Checkpoint for my jobs"."""
    states = list(fields)
    mine.change(lambda title: [title or None] * len(states), inputs=[mine], outputs=states, queue=False,
                show_progress="hidden", api_visibility="private")


def with_job_checkpoint(request: GenerationRequest, values: Mapping[str, Any]) -> GenerationRequest:
    """``request`` for the checkpoint this page chose for its jobs (a user's own choice), if any."""
    chosen = values[JOB_CHECKPOINT] if JOB_CHECKPOINT in values else None
    return replace(request, checkpoint=chosen) if chosen else request


def _status_text(services: Services) -> str:
    """Markdown: checkpoint titles are file names, and errors quote them, so both are escaped."""
    if services.engine.peek() is None:
        return "Loading the model…" if services.registry.all() else ""
    remote = services.remote.selected()
    if remote is not None:
        return (f"Selected: {escape.markdown(remote.title)} (remote: each job is sent to {remote.provider.label}; "
                "nothing is loaded here)")
    current, error = services.models.current(), services.models.last_error
    title = escape.markdown(current.title) if current else ""
    if error:
        kept = f" Still loaded: {title}." if current else ""
        return f"{icons.WARNING} {escape.markdown(error)}.{kept}"
    if current is None:
        return "Loading the model…" if services.registry.all() else ""
    if services.queue.mode is QueueMode.RAY:  # the front loads nothing; each worker loads what its jobs need
        return f"Selected: {title} (the workers load it for their jobs)"
    return f"Loaded: {title}"
