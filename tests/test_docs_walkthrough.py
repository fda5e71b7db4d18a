"""docs/add_attention_variant.md stays true: its ```python blocks, run in order in one namespace (from a temporary
directory, so its `runs/` lands there), add a variant, train it a few steps and check its promise."""

from __future__ import annotations

import re
import sys
import types

import helpers
from models import attention

DOC = helpers.REPO / "docs" / "add_attention_variant.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_walkthrough_code_runs(tmp_path, monkeypatch):
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) == 4  # kernel, registry entry, training, the check: a lost fence would skip a step silently
    monkeypatch.chdir(tmp_path)
    module = types.ModuleType("walkthrough")  # a real module: dataclasses look their class's module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    namespace = module.__dict__
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"{DOC.name} python block {i + 1}", "exec"), namespace)
        assert "softcap" in attention.ATTENTIONS
        assert (tmp_path / "runs" / "softcap" / "summary.json").is_file()
        assert namespace["summary"]["steps"] == 20 and len(namespace["max_logits"]) == 4
    finally:
        attention.ATTENTIONS.pop("softcap", None)  # the registry is global: leave it as the other tests expect


def test_python_blocks_are_found_only_inside_python_fences():
    text = "intro\n```python\nx = 1\n```\n\n```bash\nrm -rf /\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = 2\n"]
