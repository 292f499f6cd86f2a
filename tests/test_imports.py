"""The package's import graph: no cycle anywhere (module-level, function-level or TYPE_CHECKING imports all
count), and the facade stays a facade."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "optimum_alpha"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports. ``from . import x`` points at ``x`` when ``x`` is a module."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                submodules = {f"{target}.{alias.name}" for alias in node.names} & set(modules)
                if submodules:
                    deps |= submodules
                    if len(submodules) < len(node.names) and target in modules:
                        deps.add(target)
                elif target in modules:
                    deps.add(target)
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_facade_is_thin():
    graph = import_graph()
    facade = PACKAGE / "pruner.py"
    assert len(facade.read_text().splitlines()) <= 200
    assert len(graph["optimum_alpha.pruner"] - {"optimum_alpha"}) <= 11


def test_stages_never_import_the_facade():
    graph = import_graph()
    importers = sorted(name for name, deps in graph.items() if "optimum_alpha.pruner" in deps)
    assert set(importers) <= {"optimum_alpha.checkpoint.prune_on_load", "optimum_alpha.commands.cli",
                              "optimum_alpha.commands.prune", "optimum_alpha.commands.analyze",
                              "optimum_alpha.commands.evaluate"}, importers


def test_every_module_is_in_the_test_map():
    """tests/README.md names where each module is tested; a new module must be added there."""
    text = (ROOT / "tests" / "README.md").read_text()
    missing = []
    for name in _modules():
        parts = name.split(".")
        stem = parts[-1]
        if stem in ("optimum_alpha", "__main__") or name == "optimum_alpha.testing":
            continue
        listed = any(token in text for token in (f"`{stem}`", f"{stem}.py", f"{'/'.join(parts)}/",
                                                   f"{parts[-2]}/" if len(parts) > 2 else f"{stem}.py"))
        if not listed:
            missing.append(name)
    assert not missing, f"add these modules to tests/README.md: {missing}"


def test_lazy_exports_load_on_first_use_and_refuse_unknown_names():
    code = ("import sys, optimum_alpha, optimum_alpha.checkpoint as c\n"
            "before = 'optimum_alpha.checkpoint.save' in sys.modules\n"
            "listed = 'save_pruned' in dir(c) and 'AlphaPruner' in dir(optimum_alpha)\n"
            "c.save_pruned\n"
            "print(before, listed, 'optimum_alpha.checkpoint.save' in sys.modules, 'save_pruned' in vars(c))\n"
            "try:\n    c.nope\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["False True True True", "module 'optimum_alpha.checkpoint' has no attribute 'nope'"]
