"""Prompt matrix (A1111's script of that name).

The prompt (or the negative prompt) is split at ``|``: the first part is in every image, and each
combination of the other parts gives one image, so n variable parts give 2**n images. The grid puts
the first half of the variable parts along the top and the rest down the left; each header lists
its parts, the ones left out grey and struck through. A -1 seed is fixed first, so the images
differ only by their prompt (or, with "different seeds", by seed + i as A1111 numbers them).
"""

from __future__ import annotations

import time
from dataclasses import replace

from PIL import Image

from modules.extension_api import (
    ExtensionSetup,
    FieldError,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    Label,
    Param,
    Script,
    ScriptRun,
    ValidationError,
    decode_png,
    fixed_seed,
    labelled_grid,
    offset_seed,
    png_with_infotext,
)

TITLE = "Prompt matrix"
MAX_VARIABLE_PARTS = 10  # 1024 images; more is surely a prompt that uses | for something else
DELIMITERS = {"comma": ", ", "space": " "}

# In A1111's order, so clients sending positional script_args keep working.
PARAMS = (
    Param.bool("put_at_start", False, "Put variable parts at start of prompt"),
    Param.bool("different_seeds", False, "Use different seed for each picture"),
    Param.choice("prompt_type", ("positive", "negative"), "positive", "Select prompt"),
    Param.choice("variations_delimiter", tuple(DELIMITERS), "comma", "Select joining char"),
    Param.int("margin_size", 0, "Grid margins (px)", minimum=0, maximum=500),
)


def split_prompt(prompt: str) -> tuple[str, list[str]]:
    """The fixed first part and the variable parts, trimmed of spaces and of the commas people
    leave around ``|`` (``a cat, | hat`` is "a cat" and "hat")."""
    first, *variable = prompt.split("|")
    return first.strip().strip(","), [part.strip().strip(",").strip() for part in variable]


def combined_prompts(prompt: str, at_start: bool, delimiter: str) -> list[str]:
    """Every combination, combination n having the variable parts whose bits are set in n."""
    first, variable = split_prompt(prompt)
    prompts = []
    for combination in range(1 << len(variable)):
        chosen = [part for bit, part in enumerate(variable) if combination & (1 << bit)]
        parts = chosen + [first] if at_start else [first] + chosen
        prompts.append(delimiter.join(part for part in parts if part))
    return prompts


def _check(run: ScriptRun) -> str:
    field = "prompt" if run.values["prompt_type"] == "positive" else "negative_prompt"
    prompt = getattr(run.request, field)
    parts = prompt.count("|")
    if parts == 0:
        raise ValidationError([FieldError(field, "has no | : separate the parts to combine with |, "
                                                 "e.g. 'a cat | wearing a hat | in the snow'")])
    if parts > MAX_VARIABLE_PARTS:
        raise ValidationError([FieldError(field, f"has {parts} variable parts ({2 ** parts} images); "
                                                 f"the prompt matrix takes at most {MAX_VARIABLE_PARTS}")])
    return prompt


def _cell_requests(run: ScriptRun, prompt: str) -> list[GenerationRequest]:
    base = run.request
    seed = fixed_seed(base.seed, room=1 << MAX_VARIABLE_PARTS)
    prompts = combined_prompts(prompt, run.values["put_at_start"], DELIMITERS[run.values["variations_delimiter"]])
    field = "prompt" if run.values["prompt_type"] == "positive" else "negative_prompt"
    step = 1 if run.values["different_seeds"] else 0
    return [replace(base, **{field: text}, seed=offset_seed(seed, i * step), batch_count=1, batch_size=1)
            for i, text in enumerate(prompts)]


def headers(parts: list[str], count: int) -> list[list[Label]]:
    """For each of ``count`` columns (or rows): every part, active where its bit is set."""
    return [[Label(part, bool(index & (1 << bit))) for bit, part in enumerate(parts)] for index in range(count)]


def draw_matrix(prompt: str, images: list[Image.Image | None], margin: int) -> Image.Image:
    _first, variable = split_prompt(prompt)
    across = (len(variable) + 1) // 2  # A1111: the first half (rounded up) along the top
    columns, rows = 1 << across, 1 << (len(variable) - across)
    sample = next(image for image in images if image is not None)
    blank = Image.new("RGB", sample.size, "black")
    cells = [image if image is not None else blank for image in images]
    return labelled_grid(cells, columns, headers(variable[:across], columns), headers(variable[across:], rows),
                         gap=margin)


def run_matrix(run: ScriptRun) -> GenerationResult:
    started = time.monotonic()
    prompt = _check(run)
    requests = _cell_requests(run, prompt)
    results: list[GenerationResult | None] = [None] * len(requests)
    interrupted = False
    for index, request in enumerate(requests):
        result = run.host.generate(request)
        results[index] = result if result.images else None  # a skipped image stays blank in the grid
        if result.interrupted:
            interrupted = True
            break
    done = [result for result in results if result is not None]
    if not done:
        return GenerationResult(request=run.request, images=(), interrupted=interrupted,
                                elapsed_seconds=time.monotonic() - started)
    first = done[0]
    picture = draw_matrix(prompt, [decode_png(r.images[0].png) if r else None for r in results], run.values["margin_size"])
    infotext = first.images[0].infotext
    path = run.host.save_grid(picture, infotext, img2img=run.request.is_img2img) if run.request.save_images else None
    grid = GeneratedImage(path=path, seed=first.images[0].seed, infotext=infotext, index=-1,
                          png=png_with_infotext(picture, infotext))
    return GenerationResult(request=first.request, images=tuple(image for r in done for image in r.images), grid=grid,
                            interrupted=interrupted, model_title=first.model_title,
                            elapsed_seconds=time.monotonic() - started,
                            warnings=tuple(dict.fromkeys(note for r in done for note in r.warnings)))


def setup(ext: ExtensionSetup) -> None:
    ext.add_script(Script(title=TITLE, run=run_matrix, params=PARAMS))
