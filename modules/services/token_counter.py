"""The token counter beside the prompt boxes, counted as A1111 counts it.

Extra-network tags (``<lora:...>``, ``<hypernet:...>``) are taken out first: they never reach the
text encoder. A textual-inversion embedding named in the prompt counts as many tokens as it has
vectors (those of the loaded model's fit, or every readable one while no model is loaded). The
result reads "N/75": the tokens of the longest text the prompt becomes (AND parts, prompt-editing
steps) over the next 75-token chunk boundary.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from modules.extra_networks import strip_tags
from modules.services.addon_library import AddonLibrary

if TYPE_CHECKING:  # the engine imports torch: counting imports it when first used
    from modules.engine.loader import LoadedModel
    from modules.engine.token_count import TokenCount


def count_prompt_tokens(prompt: str, steps: int, addons: AddonLibrary, model: LoadedModel | None) -> TokenCount:
    """``prompt``'s token count and chunk capacity, the way its encoding will chunk it."""
    from modules.engine.token_count import count_tokens

    # 1. What the encoder will see: the prompt without its extra-network tags.
    text = strip_tags(prompt or "")
    # 2. The embeddings it names, each counting as its number of vectors.
    embeddings = addons.embeddings_for(model, [text], hashes=False).by_name if text.strip() else {}
    # 3. The longest text over the chunks it needs.
    return count_tokens(text, max(1, int(steps)), embeddings)
