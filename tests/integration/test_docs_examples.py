"""The extension guide's promises: its three walkthrough extensions (docs/examples) pass their own
tests the way an author runs them from the shipped install, and every Python example in
docs/extensions.md (and the examples' code) imports only the public extension API."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("cfg_rescale", "wildcards", "watermark_note")
GUIDE = ROOT / "docs" / "extensions.md"
# What an extension (and its tests) may import from Atelier.
PUBLIC = ("modules.extension_api", "modules.devtools.extension_testing")
_PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_the_walkthrough_extensions_pass_their_own_tests(tmp_path: Path) -> None:
    # What `app.py test-extension FOLDER` runs for one folder (pytest with the plugin, Atelier's folder
    # on the import path), over the three folders at once: one process start, not three.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "pytest", "-p", "modules.devtools.extension_testing", "-q",
               "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "run"),
               *(f"docs/examples/{name}" for name in EXAMPLES)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert re.search(r"\b5 passed\b", output), output[-4000:]


def _atelier_imports(code: str) -> set[str]:
    """The ``modules...`` modules a piece of code imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "modules" or name.startswith("modules.")}


def test_examples_import_only_the_public_api() -> None:
    blocks = [block for block in _PYTHON_BLOCK.findall(GUIDE.read_text(encoding="utf-8")) if "from modules" in block]
    assert len(blocks) >= 10  # the guide's examples were found (one per hook, at least)
    sources = {f"docs/extensions.md, block {i}": block for i, block in enumerate(blocks)}
    for file in sorted((ROOT / "docs" / "examples").rglob("*.py")):
        sources[str(file.relative_to(ROOT))] = file.read_text(encoding="utf-8")
    private = {where: sorted(imports - set(PUBLIC)) for where, code in sources.items()
               if (imports := _atelier_imports(code)) - set(PUBLIC)}
    assert not private, f"examples import Atelier's internals: {private}"
