"""The SD VAE choice beside the checkpoint list (A1111's quicksetting ``sd_vae``): a server setting
every job from the UI uses unless it says otherwise; kept in config.yaml."""

from __future__ import annotations

import gradio as gr

from modules.errors import AtelierError
from modules.params import VAE_AUTOMATIC, VAE_NONE, GenerationRequest
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.ui import icons
from modules.ui.common import ui_error


def _choices(services: Services) -> list[str]:
    return [VAE_AUTOMATIC, VAE_NONE, *(item.name for item in services.addons.vaes.all())]


def build_vae_choice(services: Services) -> gr.Dropdown:
    """The dropdown ``setting_sd_vae`` and its refresh button; call inside the top bar's row."""
    vae = gr.Dropdown(choices=_choices(services), value=lambda: services.options.get().sd_vae, label="SD VAE",
                      elem_id="setting_sd_vae", scale=2)
    refresh = gr.Button(icons.REFRESH, elem_id="refresh_sd_vae", elem_classes="tool-button", scale=0)

    @changes_server  # writes config.yaml
    def on_select(choice: str) -> None:
        try:
            services.addons.check(GenerationRequest(vae=choice))
            services.options.update({"sd_vae": choice})
        except AtelierError as exc:
            raise ui_error(exc) from exc

    @changes_server  # rescans the VAE folders for everyone
    def on_refresh() -> gr.Dropdown:
        services.addons.vaes.refresh()
        return gr.Dropdown(choices=_choices(services), value=services.options.get().sd_vae)

    vae.input(on_select, inputs=[vae], outputs=None, api_visibility="private", queue=False)
    refresh.click(on_refresh, outputs=[vae], api_visibility="private")
    return vae
