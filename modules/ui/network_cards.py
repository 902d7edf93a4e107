"""The extra-networks cards as HTML: a preview (or a "no preview" box), the name, the description
and the trigger words. Every text comes from files and is escaped; a card carries only its key."""

from __future__ import annotations

from collections.abc import Sequence

from modules.services.network_cards import NetworkCard
from modules.ui import escape

# The HTML component reads its value as a template: braces and dollars stay text.
_TEMPLATE_SAFE = str.maketrans({"{": "&#123;", "}": "&#125;", "$": "&#36;"})

# Event delegation on the component's own element: a click or Enter on a card sends its key.
CARDS_JS = """
const send = (card) => { if (card) trigger('click', {card: card.dataset.card}); };
element.addEventListener('click', (event) => send(event.target.closest('[data-card]')));
element.addEventListener('keydown', (event) => {
  if (event.key === 'Enter' || event.key === ' ') { event.preventDefault(); send(event.target.closest('[data-card]')); }
});
"""

CARDS_CSS = """
.en-cards { display: flex; flex-wrap: wrap; gap: .6em; max-height: 32em; overflow-y: auto; padding: .2em; }
.en-card { width: 11em; border: 1px solid var(--border-color-primary); border-radius: 8px; overflow: hidden;
  cursor: pointer; background: var(--block-background-fill); display: flex; flex-direction: column; }
.en-card:hover, .en-card:focus { border-color: var(--color-accent); outline: none; }
.en-card img, .en-card .en-card-noimg { width: 100%; height: 9em; object-fit: cover; display: block; }
.en-card .en-card-noimg { display: flex; align-items: center; justify-content: center;
  color: var(--body-text-color-subdued); background: var(--background-fill-secondary); font-size: .85em; }
.en-card-text { padding: .35em .5em .5em; font-size: .85em; line-height: 1.3; color: var(--body-text-color); }
.en-card-name { font-weight: 600; word-break: break-word; }
.en-card-desc { margin-top: .2em; word-break: break-word; }
.en-card-trigger { margin-top: .2em; font-style: italic; word-break: break-word; }
.en-empty { padding: .6em; color: var(--body-text-color); }
"""


def _text(value: object) -> str:
    return escape.text(value).translate(_TEMPLATE_SAFE)


def card_html(card: NetworkCard) -> str:
    """One card; its ``data-card`` key is all a click sends back."""
    picture = (f'<img src="{_text(card.preview)}" alt="" loading="lazy">' if card.preview
               else '<div class="en-card-noimg">No preview</div>')
    parts = [f'<div class="en-card-name">{_text(card.name)}</div>']
    if card.description:
        parts.append(f'<div class="en-card-desc">{_text(card.description)}</div>')
    if card.activation_text:
        parts.append(f'<div class="en-card-trigger">Trigger words: {_text(card.activation_text)}</div>')
    return (f'<div class="en-card" role="button" tabindex="0" data-card="{_text(card.key)}" '
            f'title="{_text(card.relative)}">{picture}<div class="en-card-text">{"".join(parts)}</div></div>')


def cards_html(cards: Sequence[NetworkCard], query: str, empty_folder: str) -> str:
    """The cards, or a line saying why there are none (nothing matched, or no files yet)."""
    if cards:
        return f'<div class="en-cards">{"".join(card_html(c) for c in cards)}</div>'
    if query.strip():
        return f'<div class="en-empty">Nothing found for "{_text(query.strip())}".</div>'
    return f'<div class="en-empty">{_text(empty_folder)}</div>'
