"""A flow family's conditioning from A1111 prompt syntax: ``AND`` and prompt editing, any encoder.

The same scheduling as the Stable Diffusion path (:func:`modules.engine.prompt_encoding.build_conditioning`),
with the family's own encoder: every distinct text of the job is encoded once, in one call, so the
family can give them all the same token count (they are batched together at each model call).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from modules import prompt_parser
from modules.engine.sampling.denoiser import Conditioning, CondSchedule, Embeds

Encode = Callable[[Sequence[str]], Mapping[str, Embeds]]


def build_flow_conditioning(encode: Encode, prompt: str, negative: str, steps: int,
                            hires_base_steps: int | None = None) -> Conditioning:
    """``steps`` counts model calls, as A1111's prompt editing does (see ``prompt_parser.schedule``)."""
    # ``AND`` leaves the spaces around it in the parts: CLIP never saw them, but T5 and LLM
    # tokenizers would, so each part is stripped.
    positives = [(prompt_parser.schedule(text.strip(), steps, hires_base_steps), weight)
                 for text, weight in prompt_parser.split_and(prompt)]
    negatives = prompt_parser.schedule(negative, steps, hires_base_steps)
    texts = list(dict.fromkeys(entry.text for entries, _w in positives for entry in entries))
    texts += [entry.text for entry in negatives if entry.text not in texts]
    embeds = encode(texts)

    def scheduled(entries: list[prompt_parser.ScheduledText]) -> CondSchedule:
        # A1111 uses an entry while the step (counting model calls from 0) is <= its end step.
        return CondSchedule(parts=tuple((entry.end_at_step + 1, embeds[entry.text]) for entry in entries))

    return Conditioning(positive=tuple((scheduled(entries), weight) for entries, weight in positives),
                        negative=scheduled(negatives))
