"""Reading the lines of "Prompts from file or textbox", in A1111's format.

A line is either a plain prompt or, when it starts with ``--``, options in command-line style::

    --prompt "a cat in the snow" --negative_prompt "blurry" --steps 20 --cfg_scale 7 --seed 5

Values with spaces are quoted (shell rules); ``--prompt`` and ``--negative_prompt`` also take every
word up to the next option, as A1111 does. Errors are ValueError with a message for the user.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from modules.extension_api import (
    GenerationRequest,
    find_schedule,
    is_sampler,
    sampler_names,
    with_denoising,
    with_sampler,
)

TEXT_OPTIONS = ("prompt", "negative_prompt")


def _boolean(value: str) -> bool:
    if value.lower() not in ("true", "false"):
        raise ValueError(f"{value!r} is not true or false")
    return value.lower() == "true"


def _sampler(value: str) -> str:
    if not is_sampler(value):
        raise ValueError(f"unknown sampler {value!r}; valid: {', '.join(sampler_names())}")
    return value


def _sampler_index(value: str) -> str:
    names = sampler_names()
    index = int(value)
    if not 0 <= index < len(names):
        raise ValueError(f"sampler_index {index} is not between 0 and {len(names) - 1}")
    return names[index]


def _schedule(value: str) -> Any:
    schedule = find_schedule(value)
    if schedule is None:
        raise ValueError(f"unknown scheduler {value!r}")
    return schedule


def _styles(value: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in value.split(",") if name.strip())


# option -> how its text is read
CONVERTERS: dict[str, Callable[[str], Any]] = {
    "prompt": str, "negative_prompt": str, "styles": _styles, "sd_model": str,
    "steps": int, "cfg_scale": float, "seed": int, "subseed": int, "subseed_strength": float,
    "sampler_name": _sampler, "sampler_index": _sampler_index, "scheduler": _schedule,
    "width": int, "height": int, "batch_size": int, "n_iter": int, "clip_skip": int,
    "denoising_strength": float, "seed_resize_from_w": int, "seed_resize_from_h": int,
    "do_not_save_samples": _boolean, "restore_faces": _boolean, "tiling": _boolean,
}
# A1111 options that mean nothing here: accepted so that A1111 files run, with a warning.
IGNORED = {"outpath_samples", "outpath_grids", "prompt_for_display", "do_not_save_grid"}
QUIET = {"do_not_save_grid", "prompt_for_display"}  # nothing the user would miss


@dataclass(frozen=True)
class Line:
    number: int  # 1-based, as the text box counts
    options: dict[str, Any]
    ignored: tuple[str, ...] = ()


_NUMBER_KINDS: dict[Any, str] = {int: "a whole number", float: "a number"}


def _value(option: str, text: str) -> Any:
    converter = CONVERTERS[option]
    try:
        return converter(text)
    except ValueError as exc:
        if converter in _NUMBER_KINDS:
            raise ValueError(f"--{option}: {text!r} is not {_NUMBER_KINDS[converter]}") from None
        raise ValueError(f"--{option}: {exc}") from None


def parse_options(line: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """(options by name, A1111 options that are ignored here)."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot split the line ({exc}); check its quotes") from None
    options: dict[str, Any] = {}
    ignored: list[str] = []
    pos = 0
    while pos < len(words):
        word = words[pos]
        option = word[2:]
        if not word.startswith("--") or not option:
            raise ValueError(f"expected an option such as --steps, got {word!r}")
        if option not in CONVERTERS and option not in IGNORED:
            raise ValueError(f"unknown option {word}; known: {', '.join('--' + o for o in CONVERTERS)}")
        if pos + 1 >= len(words) or words[pos + 1].startswith("--"):
            raise ValueError(f"{word} needs a value")
        end = pos + 2
        if option in TEXT_OPTIONS:  # the prompt runs on to the next option
            while end < len(words) and not words[end].startswith("--"):
                end += 1
        text = " ".join(words[pos + 1:end])
        if option in IGNORED:
            ignored.append(option)
        else:
            options[option] = _value(option, text)
        pos = end
    return options, tuple(ignored)


def parse_lines(text: str) -> list[Line]:
    """Every non-blank line; ValueError("line N: ...") for the first bad one."""
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if not line.startswith("--"):
            lines.append(Line(number, {"prompt": line}))
            continue
        try:
            options, ignored = parse_options(line)
        except ValueError as exc:
            raise ValueError(f"line {number}: {exc}") from None
        lines.append(Line(number, options, ignored))
    return lines


def _joined(line_text: str, form_text: str, at_start: bool) -> str:
    if not line_text or not form_text:
        return line_text or form_text
    return f"{line_text} {form_text}" if at_start else f"{form_text} {line_text}"


def apply_line(base: GenerationRequest, options: dict[str, Any], at_start: bool) -> GenerationRequest:
    """The job for one line: the form's job with the line's options; its prompts join the form's."""
    o = options
    request = replace(base, prompt=_joined(o.get("prompt", ""), base.prompt, at_start),
                      negative_prompt=_joined(o.get("negative_prompt", ""), base.negative_prompt, at_start))
    simple = {"steps": "steps", "cfg_scale": "cfg_scale", "seed": "seed", "subseed": "variation_seed",
              "subseed_strength": "variation_strength", "width": "width", "height": "height",
              "batch_size": "batch_size", "n_iter": "batch_count", "clip_skip": "clip_skip",
              "seed_resize_from_w": "seed_resize_from_width", "seed_resize_from_h": "seed_resize_from_height",
              "styles": "styles", "sd_model": "checkpoint", "scheduler": "schedule",
              "restore_faces": "restore_faces", "tiling": "tiling"}
    request = replace(request, **{field: o[option] for option, field in simple.items() if option in o})
    sampler = o.get("sampler_name", o.get("sampler_index"))
    if sampler is not None:
        # A1111's combined names ("DPM++ 2M Karras") bring a schedule, unless the line names one
        request = with_sampler(request, sampler)
        if "scheduler" in o:
            request = replace(request, schedule=o["scheduler"])
    if o.get("do_not_save_samples"):
        request = replace(request, save_images=False)
    if "denoising_strength" in o:  # txt2img with hires fix: A1111's field is the second pass's
        request = with_denoising(request, o["denoising_strength"])
    return request
