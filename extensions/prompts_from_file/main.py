"""Prompts from file or textbox (A1111's script of that name): one job per line.

Each line is a prompt, or A1111's command-line style options (see ``prompt_file_lines``). A line's
prompts join the form's (at the start or the end, as chosen); its options replace the form's values.
Every line is read and checked before the first job, and a bad one is reported by its number.
Seeds: "Iterate seed every line" moves the form's seed on by one batch's worth of images per line;
"Use same random seed for all lines" fixes a -1 seed once, so every line gets the same one.
"""

from __future__ import annotations

import time
from dataclasses import replace

from prompt_file_lines import QUIET, apply_line, parse_lines

from modules.extension_api import (
    ExtensionSetup,
    FieldError,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    Param,
    Script,
    ScriptRun,
    ValidationError,
    find_checkpoint,
    offset_seed,
    random_seed,
    validate_request,
)

TITLE = "Prompts from file or textbox"
WHERE = "script_args.prompt_txt"

# In A1111's order, so clients sending positional script_args keep working.
PARAMS = (
    Param.bool("iterate_seed", False, "Iterate seed every line"),
    Param.bool("same_seed_each_line", False, "Use same random seed for all lines"),
    Param.choice("prompt_position", ("start", "end"), "start", "Insert prompts at the"),
    Param.text("prompt_txt", "", "List of prompt inputs", lines=8),
)


def plan(run: ScriptRun) -> tuple[list[GenerationRequest], list[str]]:
    """The job of every line and the warnings about A1111 options that do nothing here."""
    try:
        lines = parse_lines(run.values["prompt_txt"])
    except ValueError as exc:
        raise ValidationError([FieldError(WHERE, str(exc))]) from None
    if not lines:
        raise ValidationError([FieldError(WHERE, "is empty: write one prompt (or line of --options) per line")])
    base = run.request
    iterate = run.values["iterate_seed"]
    if (iterate or run.values["same_seed_each_line"]) and base.seed == -1:
        base = replace(base, seed=random_seed(room=10_000))  # room to iterate
    checkpoints = tuple(run.host.checkpoints())
    requests: list[GenerationRequest] = []
    warnings: list[str] = []
    errors: list[FieldError] = []
    for line in lines:
        options = dict(line.options)
        if "sd_model" in options:
            options["sd_model"] = find_checkpoint(options["sd_model"], checkpoints)
            if options["sd_model"] is None:
                errors.append(FieldError(WHERE, f"line {line.number}: unknown checkpoint {line.options['sd_model']!r}; "
                                                f"available: {', '.join(checkpoints) or 'none'}"))
                continue
        request = apply_line(base, options, run.values["prompt_position"] == "start")
        try:
            validate_request(request)
        except ValidationError as exc:
            errors += [FieldError(WHERE, f"line {line.number}: {error}") for error in exc.errors]
        requests.append(request)
        warnings += [f"Line {line.number}: --{option} is not supported here; it was ignored"
                     for option in line.ignored if option not in QUIET]
        if iterate:  # A1111 moves on by the form's batch, whatever the line asked for
            base = replace(base, seed=offset_seed(base.seed, base.batch_size * base.batch_count))
    if errors:
        raise ValidationError(errors)
    return requests, warnings


def run_lines(run: ScriptRun) -> GenerationResult:
    started = time.monotonic()
    requests, warnings = plan(run)
    results: list[GenerationResult] = []
    for request in requests:
        results.append(run.host.generate(request))
        if results[-1].interrupted:
            break
    images: tuple[GeneratedImage, ...] = tuple(image for result in results for image in result.images)
    first = results[0]
    return GenerationResult(request=first.request, images=images, interrupted=results[-1].interrupted,
                            model_title=first.model_title, elapsed_seconds=time.monotonic() - started,
                            warnings=tuple(dict.fromkeys(warnings + [n for r in results for n in r.warnings])))


def setup(ext: ExtensionSetup) -> None:
    ext.add_script(Script(title=TITLE, run=run_lines, params=PARAMS, remote=True))
