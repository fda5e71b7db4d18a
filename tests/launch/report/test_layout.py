"""launch/report/ as a package: siblings import each other only through public names, and without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import launch.report

PACKAGE = Path(launch.report.__file__).parent


def sibling_uses() -> dict[str, dict[str, set[str]]]:
    """{module: {sibling it imports: the names it takes from it}} over launch/report/*.py."""
    out = {}
    for path in PACKAGE.glob("*.py"):
        tree, uses, aliases = ast.parse(path.read_text()), {}, {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "launch.report":
                for a in node.names:
                    aliases[a.asname or a.name] = a.name
                    uses.setdefault(a.name, set())
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("launch.report."):
                uses.setdefault(node.module.rpartition(".")[2], set()).update(a.name for a in node.names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                uses[aliases[node.value.id]].add(node.attr)
        out[path.stem] = uses
    return out


def test_no_private_names_across_modules_and_no_cycle():
    uses = sibling_uses()
    assert set(uses) >= {"__init__", "__main__", "common", "lr_curves", "seeds", "buckets", "curves"}
    private = {(m, s, n) for m, sib in uses.items() for s, names in sib.items() for n in names if n.startswith("_")}
    assert not private
    assert uses["common"] == {} and set(uses["lr_curves"]) == {"common"}  # the bottom of the package

    def reaches(a: str, b: str, seen=()) -> bool:
        return any(s == b or (s not in seen and reaches(s, b, (*seen, s))) for s in uses.get(a, {}) if s in uses)

    assert not [m for m in uses if m != "__init__" and reaches(m, m)]
    assert not [m for m in uses if m not in ("__init__", "__main__") and "__init__" in uses[m]]
