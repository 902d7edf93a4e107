"""wildcards: every image of a job gets its own prompt (PLAN_IMAGES).

``__colour__`` in a prompt is replaced, for each image, by a line of ``wildcards/colour.txt`` chosen
with a generator seeded by that image's seed: the same seed always gives the same prompt, so an
image's infotext (which holds its own prompt) reproduces it, and so does running the job again.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from modules.extension_api import ExtensionSetup, Hook, ImagePrompt, PlanImages

WORDS = Path(__file__).parent / "wildcards"
TOKEN = re.compile(r"__([A-Za-z0-9_-]+)__")


def setup(ext: ExtensionSetup) -> None:
    ext.on(Hook.PLAN_IMAGES, plan)


def plan(ctx: PlanImages) -> list[ImagePrompt] | None:
    request = ctx.request
    if not TOKEN.search(request.prompt):
        return None  # nothing to expand: every image keeps the job's prompt
    return [ImagePrompt(prompt=expand(request.prompts_for(i)[0], request.seed_for(i)))
            for i in range(request.images_per_job)]


def expand(prompt: str, seed: int) -> str:
    chooser = random.Random(seed)

    def pick(match: re.Match[str]) -> str:
        file = WORDS / f"{match.group(1)}.txt"
        if not file.is_file():
            return match.group(0)  # an unknown wildcard stays as written
        lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        return chooser.choice(lines)

    return TOKEN.sub(pick, prompt)
