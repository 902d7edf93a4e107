"""The extra-networks browser under the prompt: LoRAs and embeddings, searchable; a click puts the
LoRA's ``<lora:name:1>`` tag (or the embedding's name) into the prompt, and a second click takes it out."""

from __future__ import annotations

import re

import gradio as gr

from modules.server_effects import changes_server
from modules.services.addons import AddonFile
from modules.services.container import Services

LORA_WEIGHT = 1.0  # A1111's default multiplier for a tag inserted from the browser


def _rows(items: tuple[AddonFile, ...], query: str) -> list[list[str]]:
    wanted = (query or "").strip().lower()
    return [[item.name, item.relative] for item in items
            if not wanted or wanted in item.name.lower() or wanted in item.relative.lower()]


def toggle_lora(prompt: str, name: str) -> str:
    """``prompt`` with ``<lora:name:1>`` added, or with every tag of that LoRA removed if it has one."""
    pattern = re.compile(rf"\s*<(?:lora|lyco):{re.escape(name)}(?::[^>]*)?>", re.IGNORECASE)
    if pattern.search(prompt or ""):
        return pattern.sub("", prompt).strip()
    tag = f"<lora:{name}:{LORA_WEIGHT:g}>"
    return f"{prompt.rstrip()} {tag}".strip() if prompt else tag


def toggle_word(prompt: str, word: str) -> str:
    """``prompt`` with an embedding's name added at the end, or removed where it stands as a word."""
    pattern = re.compile(rf"(^|[\s,]+){re.escape(word)}(?=$|[\s,])", re.IGNORECASE)
    if pattern.search(prompt or ""):
        return pattern.sub("", prompt).strip(" ,")
    return f"{prompt.rstrip().rstrip(',')}, {word}" if prompt and prompt.strip() else word


def build_browser(prefix: str, services: Services, prompt: gr.Textbox) -> None:
    """The accordion with its search box, refresh button and one list per kind."""
    addons = services.addons
    with gr.Accordion("Extra networks: LoRA and embeddings", open=False, elem_id=f"{prefix}_extra_networks"):
        with gr.Row():
            search = gr.Textbox(show_label=False, placeholder="Search LoRAs and embeddings",
                                elem_id=f"{prefix}_extra_search", scale=4)
            refresh = gr.Button("🔄 Refresh", size="sm", elem_id=f"{prefix}_extra_refresh", scale=0)
        with gr.Tabs():
            with gr.Tab("Lora", id=f"{prefix}_lora"):
                loras = gr.Dataset(components=["textbox", "textbox"], headers=["Name", "File"],
                                   samples=_rows(addons.loras.all(), ""), samples_per_page=24, layout="table",
                                   label="LoRA: click to add or remove its tag", elem_id=f"{prefix}_lora_cards")
            with gr.Tab("Textual Inversion", id=f"{prefix}_ti"):
                embeds = gr.Dataset(components=["textbox", "textbox"], headers=["Name", "File"],
                                    samples=_rows(addons.embeddings.all(), ""), samples_per_page=24, layout="table",
                                    label="Embeddings: click to add or remove the name",
                                    elem_id=f"{prefix}_ti_cards")

    def filtered(query: str) -> tuple[gr.Dataset, gr.Dataset]:
        return (gr.Dataset(samples=_rows(addons.loras.all(), query)),
                gr.Dataset(samples=_rows(addons.embeddings.all(), query)))

    @changes_server  # rescans the LoRA and embedding folders for everyone
    def on_refresh(query: str) -> tuple[gr.Dataset, gr.Dataset]:
        addons.loras.refresh()
        addons.embeddings.refresh()
        return filtered(query)

    search.change(filtered, inputs=[search], outputs=[loras, embeds], queue=False, show_progress="hidden",
                  api_visibility="private")
    refresh.click(on_refresh, inputs=[search], outputs=[loras, embeds], api_visibility="private")
    loras.click(lambda row, text: toggle_lora(text, row[0]), inputs=[loras, prompt], outputs=[prompt],
                queue=False, api_visibility="private")
    embeds.click(lambda row, text: toggle_word(text, row[0]), inputs=[embeds, prompt], outputs=[prompt],
                 queue=False, api_visibility="private")
