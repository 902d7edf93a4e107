"""A1111's file and folder name patterns (options ``samples_filename_pattern`` and
``directories_filename_pattern``): ``[tag]`` replaced by what the image was made with.

As A1111's ``FilenameGenerator`` does it: the pattern is read as text, then ``[tag]`` (tags in any
case; ``[tag<arg>]`` passes an argument, as ``[datetime<%Y%m%d>]``). A known tag becomes its value;
one whose value is "nothing here" (``[seed_last]`` of a one-image batch, ``[batch_number]``,
``[denoising]`` of txt2img) also drops the text before it; an unknown tag is kept as written
(``[foo]``, without its arguments). Text values go through :func:`sanitize_part`: characters no file
name may hold (``#<>:"/\\|?*`` and line breaks, tabs) become ``_``, leading spaces and trailing
spaces and dots go, and each value is cut to 128 characters (A1111's ``--filenames-max-length``).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

INVALID_CHARS = '#<>:"/\\|?*\n\r\t'
MAX_PART_LENGTH = 128
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"
MAX_PROMPT_WORDS = 8  # A1111's directories_max_prompt_words default
_TAG = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)", re.DOTALL)
_ARG = re.compile(r"(.*)<([^>]*)>$", re.DOTALL)
_NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
_SKIP = object()  # a value meaning "nothing here, and drop the text before the tag too"


def sanitize_part(text: str, replace_spaces: bool = True) -> str:
    """One value made safe inside a file name, as A1111's ``sanitize_filename_part``."""
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(c): "_" for c in INVALID_CHARS})
    return text.lstrip(" ")[:MAX_PART_LENGTH].rstrip(" .")


@dataclass(frozen=True)
class NameContext:
    """What one saved image was made with, as the tags read it."""

    seed: int | None
    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    cfg: float | None = None
    width: int = 0
    height: int = 0
    sampler: str = ""
    scheduler: str = ""
    model_name: str = ""
    model_hash: str = ""
    styles: tuple[str, ...] = ()
    first_seed: int | None = None  # the job's first and last seeds (A1111's all_seeds[0], all_seeds[-1])
    last_seed: int | None = None
    batch_size: int = 1
    batch_index: int = 0  # the image's place in its batch
    iteration: int = 0  # which batch of the job
    batch_count: int = 1
    denoising: float | None = None
    clip_skip: int | None = None
    job_timestamp: datetime = field(default_factory=datetime.now)
    now: datetime = field(default_factory=datetime.now)
    grid: bool = False
    owner: str | None = None  # the account whose job it is: its own folder when outputs go per user


def _prompt_words(ctx: NameContext) -> str:
    words = [w for w in _NON_LETTERS.split(ctx.prompt or "") if w] or ["empty"]
    return sanitize_part(" ".join(words[:MAX_PROMPT_WORDS]), replace_spaces=False)


def _datetime(ctx: NameContext, *args: str) -> str:
    """``[datetime]``, ``[datetime<format>]``, ``[datetime<format><time zone>]``; a bad format or zone falls back."""
    time_format = args[0] if args and args[0] else DEFAULT_TIME_FORMAT
    try:
        zone = ZoneInfo(args[1]) if len(args) > 1 else None
    except (ZoneInfoNotFoundError, ValueError):
        zone = None
    moment = ctx.now.astimezone(zone)
    try:
        text = moment.strftime(time_format)
    except (ValueError, TypeError):
        text = moment.strftime(DEFAULT_TIME_FORMAT)
    return sanitize_part(text, replace_spaces=False)


def _styles(ctx: NameContext) -> str:
    return sanitize_part(", ".join(s for s in ctx.styles if s != "None") or "None", replace_spaces=False)


def _generation_number(ctx: NameContext) -> object:
    if ctx.grid or ctx.batch_count == 1 and ctx.batch_size == 1:
        return _SKIP
    return ctx.iteration * ctx.batch_size + ctx.batch_index + 1


_REPLACEMENTS: Mapping[str, Callable[..., object]] = MappingProxyType({
    "seed": lambda c: "" if c.seed is None else c.seed,
    "seed_first": lambda c: c.seed if c.batch_size == 1 or c.first_seed is None else c.first_seed,
    "seed_last": lambda c: _SKIP if c.batch_size == 1 or c.last_seed is None else c.last_seed,
    "steps": lambda c: c.steps,
    "cfg": lambda c: c.cfg,
    "width": lambda c: c.width,
    "height": lambda c: c.height,
    "styles": _styles,
    "sampler": lambda c: sanitize_part(c.sampler, replace_spaces=False),
    "scheduler": lambda c: sanitize_part(c.scheduler, replace_spaces=False),
    "model_hash": lambda c: c.model_hash,
    "model_name": lambda c: sanitize_part(c.model_name, replace_spaces=False),
    "date": lambda c: c.now.strftime("%Y-%m-%d"),
    "datetime": _datetime,
    "job_timestamp": lambda c: c.job_timestamp.strftime(DEFAULT_TIME_FORMAT),
    "prompt": lambda c: sanitize_part(c.prompt),
    "prompt_spaces": lambda c: sanitize_part(c.prompt, replace_spaces=False),
    "prompt_words": _prompt_words,
    "negative_prompt": lambda c: sanitize_part(c.negative_prompt),
    "batch_number": lambda c: _SKIP if c.batch_size == 1 or c.grid else c.batch_index + 1,
    "batch_size": lambda c: c.batch_size,
    "generation_number": _generation_number,
    "clip_skip": lambda c: c.clip_skip,
    "denoising": lambda c: c.denoising if c.denoising else _SKIP,
    "none": lambda c: "",
})
TAGS = tuple(_REPLACEMENTS)


def apply_pattern(pattern: str, ctx: NameContext) -> str:
    """``pattern`` with every known tag replaced, as A1111's ``FilenameGenerator.apply``."""
    out = []
    for match in _TAG.finditer(pattern):
        text, tag = match.groups()
        if tag is None:
            out.append(text)
            continue
        args: list[str] = []
        while (arg := _ARG.match(tag)) is not None:
            tag, value = arg.groups()
            args.insert(0, value)
        replace = _REPLACEMENTS.get(tag.lower())
        value = replace(ctx, *args) if replace is not None and (args == [] or tag.lower() == "datetime") else None
        if value is _SKIP:
            continue
        out.append(text + (str(value) if value is not None else f"[{tag}]"))
    return "".join(out)


def file_stem(pattern: str, ctx: NameContext) -> str:
    """A file name (without number or extension) from ``pattern``: no folder separators survive."""
    return apply_pattern(pattern, ctx).translate({ord(c): "_" for c in INVALID_CHARS}).strip(" ").rstrip(".")


def folder_parts(pattern: str, ctx: NameContext) -> tuple[str, ...]:
    """The sub-folders ``pattern`` names ("/" between them); never ``.``/``..`` or an empty name."""
    text = apply_pattern(pattern, ctx).lstrip(" ").rstrip("\\ /")
    parts = (sanitize_part(p.replace("\\", "_"), replace_spaces=False) for p in text.split("/"))
    return tuple(p for p in parts if p and p not in (".", ".."))
