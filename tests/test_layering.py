"""The layering of DESIGN §1, from the source: models/ and optim/ import nothing from launch/ or experiments/,
launch/ imports nothing from experiments/, and no import cycle among the product's modules."""

from __future__ import annotations

import ast
from pathlib import Path

import helpers

PACKAGES = ("models", "optim", "launch", "benchmarks", "experiments")
FORBIDDEN = {"models": ("launch", "experiments", "benchmarks"), "optim": ("launch", "experiments", "benchmarks"),
             "launch": ("experiments", "benchmarks")}


def module_name(path: Path) -> str:
    parts = path.relative_to(helpers.REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, known: set[str]) -> set[str]:
    """The product modules `path` imports (any depth of the file: lazy imports count too)."""
    out = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (helpers.REPO / pkg).rglob("*.py")]
    known = {module_name(p) for p in files}
    return {module_name(p): imports(p, known) - {module_name(p)} for p in files}


def test_layers_import_only_downwards():
    bad = [(m, d) for m, deps in graph().items() for d in deps
           if d.split(".")[0] in FORBIDDEN.get(m.split(".")[0], ())]
    assert not bad, bad


def test_no_import_cycles():
    g = graph()
    # a package's __init__ importing its own submodules is how packages work; a cycle needs two modules
    deps = {m: {d for d in ds if not m.startswith(d + ".")} for m, ds in g.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in deps.get(m, ()):
            if state.get(d) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(d):] + [d])}")
            if d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(deps):
        if m not in state:
            visit(m, [m])


def test_the_checks_see_a_violation():
    """The walker is not blind: launch.sweep imports launch.loop, and models.transformer imports models.attention."""
    g = graph()
    assert "launch.loop" in g["launch.sweep"] and "models.attention" in g["models.transformer"]
