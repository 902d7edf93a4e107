"""Arrows point down: faces -> services -> engine. Nothing imports the faces but app.py."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FACES = ("modules.ui", "modules.api")


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for path in paths:
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    return bad


def test_engine_imports_no_web_framework_config_or_upper_layer() -> None:
    forbidden = ("gradio", "fastapi", "yaml", "modules.services", "modules.config", *FACES)
    assert offending(modules_under("modules/engine"), forbidden) == []


def test_services_do_not_import_faces_or_web_frameworks() -> None:
    assert offending(modules_under("modules/services"), ("gradio", "fastapi", *FACES)) == []


def test_top_level_modules_do_not_import_torch_or_layers_above() -> None:
    top = [p for p in (ROOT / "modules").glob("*.py")]
    forbidden = ("torch", "diffusers", "gradio", "fastapi", "modules.engine", "modules.services", *FACES)
    assert offending(top, forbidden) == []


def test_only_app_imports_the_faces() -> None:
    everything = [p for p in ROOT.joinpath("modules").rglob("*.py")
                  if not any(part in ("ui", "api") for part in p.relative_to(ROOT / "modules").parts[:-1])]
    assert offending(everything, FACES) == []


def test_nothing_runs_at_import_in_app() -> None:
    """app.py's top level holds only imports, definitions and the __main__ guard."""
    tree = ast.parse((ROOT / "app.py").read_text(encoding="utf-8"))
    allowed = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign, ast.If, ast.Expr)
    for node in tree.body:
        assert isinstance(node, allowed), ast.dump(node)[:80]
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant)  # the docstring only
