"""Arrows point down: faces -> services -> engine. Nothing imports the faces but app.py; no import
cycles; the engine takes values, not flags; extensions import only the extension API."""

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


# --- the module graph: no cycles, the engine free of flags, extensions on the public API only ------


def _module_names() -> dict[str, Path]:
    """Every module under modules/ by dotted name (a package by its own name)."""
    found = {}
    for path in modules_under("modules"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported_modules(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that ``path`` (module ``name``) imports anywhere in it, TYPE_CHECKING
    blocks and function bodies included; relative imports resolved; ``from package import module``
    counted as the module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names)
    resolved = set()
    for target in targets:
        while target and target not in known:  # "modules.x.Class" -> "modules.x"
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a -> b -> ... -> a), or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_finding_cycles_and_relative_imports() -> None:
    """The checker itself: it sees a cycle, and resolves relative imports."""
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None
    known = _module_names()
    jobs = ROOT / "modules/services/jobs.py"
    assert "modules.services.queue_contract" in _imported_modules(jobs, "modules.services.jobs", known)


def _module_graph() -> dict[str, set[str]]:
    known = _module_names()
    return {name: _imported_modules(path, name, known) for name, path in known.items()}


def _importers(graph: dict[str, set[str]], under: str, imported: str) -> list[str]:
    return sorted(name for name, deps in graph.items()
                  if (name == under or name.startswith(under + ".")) and imported in deps)


def test_no_import_cycle_among_modules() -> None:
    cycle = _find_cycle(_module_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_engine_takes_values_not_command_line_flags() -> None:
    assert _importers(_module_graph(), "modules.engine", "modules.cmd_args") == []


def test_scale_out_does_not_import_the_in_process_queue() -> None:
    assert _importers(_module_graph(), "modules.services.scaleout", "modules.services.jobs") == []


def test_extensions_import_only_the_extension_api() -> None:
    """Every file of every extension: the standard library, third-party packages (PIL, ...), its own
    sibling modules, and from Atelier only ``modules.extension_api``."""
    bad = []
    for path in modules_under("extensions"):
        siblings = {p.stem for p in path.parent.glob("*.py")}
        for name in imports_of(path):
            if name == "modules.extension_api" or name.split(".")[0] in siblings:
                continue
            if name.split(".")[0] == "modules":  # anything else is the standard library or third-party
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []
