"""A1111's prompt language, parsed into what the encoder needs. Pure Python (lark), no torch.

Three layers, as A1111 applies them:
1. ``AND`` splits a prompt into weighted sub-prompts (``a cat AND a dog :0.5``), composed at
   sampling time (composable diffusion).
2. Prompt editing and alternation make each sub-prompt a schedule of plain texts over the steps:
   ``[a:b:N]`` (a until step N, then b; N written with a "." is a fraction of the steps, as in
   A1111's default scheduling, so ``1.0`` is the last step and ``1`` the first), ``[a::N]`` (remove),
   ``[a:N]`` (add), ``[a|b]`` (alternate every step).
3. Emphasis turns each text into weighted fragments: ``(x)`` x1.1, ``((x))`` x1.21, ``[x]`` /1.1,
   ``(x:1.3)``, ``\\(`` literal, ``BREAK`` starts a new 75-token chunk.
Malformed brackets never raise: they degrade to literal text, as in A1111.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import lark

# Prompt editing and alternation. Emphasis brackets pass through as text for layer 3.
_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|]|[^\\()\[\]:]+|:
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
ROUND, SQUARE = 1.1, 1 / 1.1
BREAK_MARK = "BREAK"  # a fragment with weight -1 marks a chunk break


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(_GRAMMAR)


@dataclass(frozen=True)
class ScheduledText:
    """``text`` is the prompt from the previous entry's step up to and including ``end_at_step``."""

    end_at_step: int
    text: str


def split_and(prompt: str) -> list[tuple[str, float]]:
    """``AND``-separated sub-prompts with their weights (``text :weight``, default 1)."""
    parts = []
    for sub in _AND.split(prompt):
        match = _WEIGHT.search(sub)
        text, weight = (match.group(1), float(match.group(2))) if match and match.group(2) else (sub, 1.0)
        parts.append((text, weight))
    return parts


def _resolve_step(number: str, steps: int, hires_base: int | None) -> int:
    """The step a ``[a:b:N]`` switches at, as A1111 (v1.10, default scheduling) computes it: a number
    written with a "." is a fraction of the steps, one without is a step count. In hires fix's
    second pass (``hires_base`` = the first pass's steps) both count on from the first pass: ``N``
    is ``N - hires_base``, ``0.5`` already passed and ``1.5`` is half of this pass's steps."""
    value = float(number)
    int_offset, float_offset = (0, 0.0) if hires_base is None else (hires_base, 1.0)
    value = (value - float_offset) * steps if "." in number else value - int_offset
    return min(steps, int(value))


def _collect_steps(tree: lark.Tree, steps: int, hires_base: int | None) -> list[int]:
    found = [steps]

    class Collect(lark.Visitor):
        def scheduled(self, node: lark.Tree) -> None:
            step = _resolve_step(str(node.children[-2]), steps, hires_base)
            node.children[-2] = step  # resolved once; at_step reads it
            if step >= 1:  # a switch at step 0 or before: the second text from the start
                found.append(step)

        def alternate(self, node: lark.Tree) -> None:
            found.extend(range(1, steps + 1))

    Collect().visit(tree)
    return sorted(set(found))


def _text_at(tree: lark.Tree, step: int) -> str:
    class AtStep(lark.Transformer):  # type: ignore[type-arg]
        def scheduled(self, args: list) -> object:
            before, after, _, when, _ = args
            yield before or () if step <= when else after

        def alternate(self, args: list) -> object:
            options = ["" if arg is None else arg for arg in args]
            yield options[(step - 1) % len(options)]

        def start(self, args: list) -> str:
            def flatten(items: object) -> object:
                if isinstance(items, str):
                    yield items
                else:
                    for item in items:  # type: ignore[attr-defined]
                        yield from flatten(item)

            return "".join(flatten(args))

        def plain(self, args: list) -> object:
            yield args[0].value

        def __default__(self, data: object, children: list, _meta: object) -> object:
            for child in children:
                yield child

    return AtStep().transform(tree)


def schedule(text: str, steps: int, hires_base: int | None = None) -> list[ScheduledText]:
    """The plain texts ``text`` becomes over ``steps`` steps; the whole text when it does not parse.

    ``hires_base``: hires fix's second pass, scheduled over its own ``steps`` after a first pass of
    ``hires_base`` steps (A1111's ``hires_steps`` schedules)."""
    try:
        tree = _parser().parse(text)
    except lark.exceptions.LarkError:
        return [ScheduledText(steps, text)]
    return [ScheduledText(step, _text_at(tree, step)) for step in _collect_steps(tree, steps, hires_base)]


def has_brackets(prompt: str, steps: int, hires_base: int | None = None) -> bool:
    """Whether a text ``prompt`` is scheduled to (its ``AND`` parts over ``steps``) holds "(" or "[":
    A1111 records a non-default emphasis mode in the infotext only then."""
    return any("(" in entry.text or "[" in entry.text
               for text, _weight in split_and(prompt) for entry in schedule(text, steps, hires_base))


def uses_weights(*texts: str) -> bool:
    """Whether any of ``texts`` gives some words a weight other than 1 (A1111 reads an infotext
    without an ``Emphasis`` key as "Original" only then)."""
    return any(weight not in (1.0, -1.0) or (weight == -1.0 and fragment != BREAK_MARK)
               for text in texts for fragment, weight in parse_attention(text))


def parse_attention(text: str) -> list[tuple[str, float]]:
    """Fragments of ``text`` with their emphasis weights; ``("BREAK", -1)`` marks a chunk break."""
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    for match in _ATTENTION.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_open.append(len(res))
        elif piece == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif piece == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    res.append([BREAK_MARK, -1.0])
                res.append([part, 1.0])
    for start in round_open:  # unclosed brackets still weigh, as in A1111
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    if not res:
        return [("", 1.0)]
    merged = [res[0]]
    for item in res[1:]:
        if item[1] == merged[-1][1] and item[1] != -1.0:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(t, w) for t, w in merged]
