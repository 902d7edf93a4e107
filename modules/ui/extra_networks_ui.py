"""The extra-networks browser under the prompt: LoRA and embedding cards (preview, description,
trigger words), searched and sorted. A click puts the card's text into the prompt as A1111 does,
``<lora:alias:weight>`` plus the LoRA's activation text, or the embedding's name, after A1111's
separator; a second click takes it out again."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import gradio as gr

from modules.params import LORA_NAME_CHOICES
from modules.server_effects import changes_server
from modules.services.addons import AddonRegistry
from modules.services.network_cards import CardSort, NetworkCard
from modules.ui import icons
from modules.ui.network_cards import CARDS_CSS, CARDS_JS, cards_html

if TYPE_CHECKING:
    from modules.services.container import Services

SEPARATOR = ", "  # what goes between the prompt and an added card's text, and between a tag and its trigger words
ASCENDING = "Ascending"
DESCENDING = "Descending"


def lora_text(card: NetworkCard) -> str:
    """What a LoRA card adds: its tag at the preferred weight, then its activation text."""
    tag = f"<lora:{card.tag_name}:{card.weight:g}>"
    return f"{tag}{SEPARATOR}{card.activation_text}" if card.activation_text else tag


def toggle_lora(prompt: str, card: NetworkCard) -> str:
    """``prompt`` with the card's text added, or with every tag of that LoRA (and the activation
    text right after it) taken out if it has one."""
    trigger = rf"(?:[ \t]*,?[ \t]*{re.escape(card.activation_text)})?" if card.activation_text else ""
    pattern = re.compile(rf"(?:[ \t]*,)?[ \t]*<(?:lora|lyco):{re.escape(card.tag_name)}(?::[^>]*)?>{trigger}",
                         re.IGNORECASE)
    if pattern.search(prompt or ""):
        return pattern.sub("", prompt).strip(" \t,")
    text = lora_text(card)
    return f"{prompt.rstrip().rstrip(',')}{SEPARATOR}{text}" if prompt and prompt.strip() else text


def toggle_word(prompt: str, word: str) -> str:
    """``prompt`` with an embedding's name added at the end, or removed where it stands as a word."""
    pattern = re.compile(rf"(^|[\s,]+){re.escape(word)}(?=$|[\s,])", re.IGNORECASE)
    if pattern.search(prompt or ""):
        return pattern.sub("", prompt).strip(" ,")
    return f"{prompt.rstrip().rstrip(',')}{SEPARATOR}{word}" if prompt and prompt.strip() else word


def _clicked_key(evt: gr.EventData) -> str:
    """The key the clicked card sent ("" for a click beside the cards)."""
    data = getattr(evt, "_data", None)
    key = data.get("card") if isinstance(data, dict) else None
    return key if isinstance(key, str) else ""


def by_file_name(services: Services) -> bool:
    """Whether a LoRA card names the file rather than its alias (A1111's option lora_preferred_name)."""
    return services.options.get().lora_preferred_name == LORA_NAME_CHOICES[1]


def _empty_line(registry: AddonRegistry) -> str:
    folders = ", ".join(str(f) for f in registry.folders) or "its folder"
    return f"No {registry.kind.value} files yet: put them in {folders} and press Refresh."


def build_browser(prefix: str, services: Services, prompt: gr.Textbox) -> None:
    """The accordion with its search box, sort controls, refresh button and one card list per kind."""
    addons = services.addons
    registries = (addons.loras, addons.embeddings)

    def render(query: str, sort: str, order: str) -> tuple[str, str]:
        by, descending = CardSort(sort), order == DESCENDING
        by_file = by_file_name(services)
        return tuple(cards_html(addons.cards.cards(r, query or "", by, descending, by_file), query or "",
                                _empty_line(r)) for r in registries)  # type: ignore[return-value]

    with gr.Accordion("Extra networks: LoRA and embeddings", open=False,
                      elem_id=f"{prefix}_extra_networks") as accordion:
        with gr.Row():
            search = gr.Textbox(show_label=False, placeholder="Search LoRAs and embeddings",
                                elem_id=f"{prefix}_extra_search", scale=4)
            sort = gr.Dropdown([s.value for s in CardSort], value=CardSort.NAME.value, show_label=False,
                               elem_id=f"{prefix}_extra_sort", scale=1, min_width=120)
            order = gr.Dropdown([ASCENDING, DESCENDING], value=ASCENDING, show_label=False,
                                elem_id=f"{prefix}_extra_order", scale=1, min_width=120)
            refresh = gr.Button(f"{icons.REFRESH} Refresh", size="sm", elem_id=f"{prefix}_extra_refresh", scale=0)
        with gr.Tabs():
            with gr.Tab("Lora", id=f"{prefix}_lora"):
                loras = gr.HTML("", js_on_load=CARDS_JS, css_template=CARDS_CSS, elem_id=f"{prefix}_lora_cards")
            with gr.Tab("Textual Inversion", id=f"{prefix}_ti"):
                embeds = gr.HTML("", js_on_load=CARDS_JS, css_template=CARDS_CSS, elem_id=f"{prefix}_ti_cards")
    _wire(services, prompt, render, (accordion, search, sort, order, refresh), (loras, embeds))


def _wire(services: Services, prompt: gr.Textbox, render: Callable[[str, str, str], tuple[str, str]],
          controls: tuple[gr.Accordion, gr.Textbox, gr.Dropdown, gr.Dropdown, gr.Button],
          lists: tuple[gr.HTML, gr.HTML]) -> None:
    """Opening, search, sort and refresh (re-)render the cards; a click on a card edits the prompt."""
    addons = services.addons
    accordion, search, sort, order, refresh = controls
    loras, embeds = lists
    private = {"api_visibility": "private"}

    def filtered(query: str, by: str, direction: str) -> tuple[str, str]:
        return render(query, by, direction)

    @changes_server  # rescans the LoRA and embedding folders for everyone
    def on_refresh(query: str, by: str, direction: str) -> tuple[str, str]:
        addons.loras.refresh()
        addons.embeddings.refresh()
        return render(query, by, direction)

    def on_lora(text: str, evt: gr.EventData) -> str:
        card = addons.cards.find(addons.loras, _clicked_key(evt), by_file_name(services))
        return text if card is None else toggle_lora(text, card)

    def on_embedding(text: str, evt: gr.EventData) -> str:
        card = addons.cards.find(addons.embeddings, _clicked_key(evt))
        return text if card is None else toggle_word(text, card.tag_name)

    inputs = [search, sort, order]
    accordion.expand(filtered, inputs=inputs, outputs=[loras, embeds], queue=False, show_progress="hidden", **private)
    for control in (search, sort, order):
        control.change(filtered, inputs=inputs, outputs=[loras, embeds], queue=False, show_progress="hidden",
                       trigger_mode="always_last", **private)
    refresh.click(on_refresh, inputs=inputs, outputs=[loras, embeds], **private)
    loras.click(on_lora, inputs=[prompt], outputs=[prompt], queue=False, **private)
    embeds.click(on_embedding, inputs=[prompt], outputs=[prompt], queue=False, **private)
