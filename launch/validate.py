"""The one validation schema of proxylab's configs: read from experiments/base.py, checked before anything runs.

Every field of experiments/base.py carries its rule at the start of its comment, beside its documentation:

    m.d_model = 64  # (int >= 1) residual stream width d
    m.attention = "softmax"  # (str: registry models.attention.ATTENTIONS) attention registry key ...
    o.b2 = 0.95  # (float >= 0, < 1) Adam beta2

i.e. `# (TYPE[: CHOICES][ OP BOUND][, OP BOUND ...][; note]) description`, where

    TYPE     int | float | float|inf | bool | str | str list (a comma-separated subset) | tuple of int|float
    CHOICES  a|b|c (a fixed set), or `registry module.NAME`: the keys of that registry (the one list the code
             dispatches on, so the schema never repeats it)
    OP BOUND >=, >, <=, <, != and a number; several are all required

Floats must be finite (NaN never; ±inf only with `float|inf`); an int field rejects bools and floats. The rules
are parsed from base.py's source (ast for the assignments, tokenize for the comments) without importing it, since
launch/ must not import experiments/ (tests/test_layering.py). Rules that relate several fields are the named
functions of `CROSS_RULES` below. `check(cfg)` applies both and raises `ConfigError` naming the field;
`configs.validate` adds what needs the devices and the built model.

`python -m launch.validate --write_docs` writes docs/configuration.md (one table per config section) from the same
source; tests/launch/test_validate.py fails when that file is stale or a field lacks a rule or a description.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib
import io
import math
import re
import sys
import tokenize
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "experiments" / "base.py"
DOCS_FILE = ROOT / "docs" / "configuration.md"
TYPES = ("tuple of int", "tuple of float", "str list", "float|inf", "int", "float", "bool", "str")
OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "!=": lambda a, b: a != b,
    ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}


class ConfigError(ValueError):
    """A config that cannot run, with a one-line message naming the field."""


class SchemaError(Exception):
    """A field of the config module without a valid rule or description: a bug of that file, not a user error."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """The schema of one field, parsed from its comment."""

    path: str  # dotted, e.g. "model.d_model"
    type: str  # one of TYPES
    choices: tuple[str, ...] | None  # the allowed strings of a fixed set
    registry: str | None  # "module.NAME" whose keys are the allowed strings
    bounds: tuple[tuple[str, float], ...]  # (op, number) pairs, all required
    note: str  # the free note after ';'
    description: str
    default: str  # the source text of the value in the schema file
    line: int

    def spec(self) -> str:
        """The rule as the docs show it, registries expanded to their keys."""
        out = self.type
        allowed = self.allowed()
        if allowed is not None:
            out += ": " + "|".join(allowed)
        if self.bounds:
            out += " " + ", ".join(f"{op} {_num(b)}" for op, b in self.bounds)
        return out + (f"; {self.note}" if self.note else "")

    def allowed(self) -> tuple[str, ...] | None:
        if self.registry is not None:
            return tuple(registry(self.registry))
        return self.choices


@dataclasses.dataclass(frozen=True)
class Section:
    """A ConfigDict of the schema file (e.g. "model.ls") and its comment."""

    path: str
    description: str


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def registry(name: str):
    """The registry `module.NAME` (a dict or tuple of names) of models/, optim/ or launch/."""
    module, _, attr = name.rpartition(".")
    if module.split(".")[0] not in ("models", "optim", "launch"):
        raise SchemaError(f"registry {name}: only models, optim and launch registries")
    return getattr(importlib.import_module(module), attr)


# ---- parsing the schema file ------------------------------------------------------------------------------------


def parse_spec(spec: str, where: str) -> dict:
    """`int >= 0, < 9; note` -> the Rule fields type, choices, registry, bounds, note."""
    head, _, note = spec.partition(";")
    head = head.strip()
    type_ = next((t for t in TYPES if head == t or head.startswith(t + " ") or head.startswith(t + ":")), None)
    if type_ is None:
        raise SchemaError(f"{where}: schema ({spec}) must start with one of {', '.join(TYPES)}")
    rest, choices, reg = head[len(type_):].strip(), None, None
    if rest.startswith(":"):
        if type_ not in ("str", "str list"):
            raise SchemaError(f"{where}: only str fields take a set of values")
        rest = rest[1:].strip()
        if rest.startswith("registry "):
            reg = rest.split()[1]
        elif re.fullmatch(r"[\w.-]+(\|[\w.-]+)*", rest):
            choices = tuple(rest.split("|"))
        else:
            raise SchemaError(f"{where}: schema ({spec}): a set is a|b|c or `registry module.NAME`")
        rest = ""
    bounds = []
    for part in filter(None, (p.strip() for p in rest.split(","))):
        m = re.fullmatch(r"(>=|<=|!=|>|<)\s*(-?[\d.e+-]+|inf)", part)
        if not m or type_ in ("bool", "str", "str list"):
            raise SchemaError(f"{where}: schema ({spec}): bad bound {part!r} (OP NUMBER, numeric types only)")
        bounds.append((m[1], float(m[2])))
    return dict(type=type_, choices=choices, registry=reg, bounds=tuple(bounds), note=note.strip())


def _comments(source: str) -> dict[int, str]:
    """{line: comment text without '#'} of every comment in `source`."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string[1:]
    return out


def _target_path(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """`m.ls.window` -> "model.ls.window" with m an alias of "model"; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases or not parts:
        return None
    return ".".join(filter(None, [aliases[node.id], *reversed(parts)]))


def _is_configdict(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "ConfigDict"


@functools.cache
def parse_schema(path: Path = SCHEMA_FILE) -> tuple[dict[str, Rule], tuple[Section, ...]]:
    """The rules and sections of the config module `path`: the statements of its `get_config` body (not those
    inside the preset branches). A field without a rule or a description is a SchemaError."""
    path = Path(path)
    source = path.read_text()
    comments, lines = _comments(source), source.splitlines()
    fn = next((n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "get_config"), None)
    if fn is None:
        raise SchemaError(f"{path}: no get_config function")
    aliases: dict[str, str] = {}
    rules: dict[str, Rule] = {}
    sections: list[Section] = []
    for stmt in fn.body:
        if not isinstance(stmt, ast.Assign):
            continue
        names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]
        paths = [p for t in stmt.targets if (p := _target_path(t, aliases)) is not None]
        if _is_configdict(stmt.value):
            for name in names:
                aliases[name] = paths[0] if paths else ""
            if paths:
                text = _comment_block(comments, lines, stmt).strip()
                heading = comments.get(stmt.lineno - 1, "").strip()
                if not text and heading.startswith("----"):  # a top-level section: the heading above it
                    text = heading.strip("- ").rstrip("-").strip()
                sections.append(Section(paths[0], text))
            continue
        for p in paths:
            text = _comment_block(comments, lines, stmt).strip()
            where = f"{path.name}:{stmt.lineno} {p}"
            m = re.match(r"\(([^()]*)\)\s*(.*)", text, re.S)
            if not m:
                raise SchemaError(f"{where}: the comment must start with its schema, e.g. `# (int >= 1) ...`")
            if not m[2].strip():
                raise SchemaError(f"{where}: the schema ({m[1]}) needs a description after it")
            rules[p] = Rule(path=p, **parse_spec(m[1], where), description=" ".join(m[2].split()),
                            default=ast.get_source_segment(source, stmt.value), line=stmt.lineno)
    return rules, tuple(sections)


def _comment_block(comments: dict[int, str], lines: list[str], stmt: ast.stmt) -> str:
    """The comment on the statement's last line plus the aligned comment-only lines right below it (those whose
    text starts after two or more spaces: continuations, not section headings)."""
    line = stmt.end_lineno
    parts = [comments.get(line, "")]
    while line < len(lines) and lines[line].lstrip().startswith("#") and re.match(r"#\s{2,}", lines[line].lstrip()):
        parts.append(comments[line + 1])
        line += 1
    return " ".join(p.strip() for p in parts)


def rules() -> dict[str, Rule]:
    return parse_schema()[0]


# ---- checking a config --------------------------------------------------------------------------------------------


def check_value(rule: Rule, value) -> str | None:
    """What is wrong with `value` for `rule` (one line starting with the field), or None."""
    f = f"{rule.path}={value!r}"
    if rule.type.startswith("tuple of "):
        if not isinstance(value, (tuple, list)):
            return f"{f} must be a tuple of {rule.type[9:]}s, e.g. (300, 600)"
        item = dataclasses.replace(rule, type=rule.type[9:])
        return next((f"{f}: {err}" for v in value if (err := check_value(item, v))), None)
    if rule.type == "bool":
        return None if isinstance(value, bool) else f"{f} must be True or False"
    if rule.type in ("str", "str list"):
        if not isinstance(value, str):
            return f"{f} must be a string"
        allowed = rule.allowed()
        items = [s.strip() for s in value.split(",") if s.strip()] if rule.type == "str list" else [value]
        bad = [s for s in items if allowed is not None and s not in allowed]
        if bad:
            return f"{rule.path}={bad[0]!r} is not one of {' | '.join(allowed)}"
        return None
    if rule.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"{f} must be an integer"
    if rule.type != "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{f} must be a number"
        if math.isnan(value) or (math.isinf(value) and rule.type != "float|inf"):
            return f"{f} must be a finite number"
    for op, bound in rule.bounds:
        if not OPS[op](value, bound):
            return f"{f} must be {op} {_num(bound)}" + (f" ({rule.note})" if rule.note else "")
    return None


def did_you_mean(key: str, known) -> str:
    """"; did you mean model.d_ff?" when a known field is close to `key`, else ""."""
    # the same leaf in another section first (train.lr -> optim.lr), else the closest spelling
    close = [k for k in known if k.rpartition(".")[2] == key.rpartition(".")[2]][:1]
    close = close or difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def flatten(cfg, prefix: str = "") -> dict:
    """{"model.d_model": 64, ...} of a (nested) ConfigDict or dict."""
    out = {}
    for k, v in cfg.items():
        if hasattr(v, "items"):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check(cfg) -> None:
    """Checks every field of `cfg` against its rule, then the cross-field rules; raises ConfigError."""
    schema = rules()
    for key, value in flatten(cfg).items():
        if key not in schema:
            raise ConfigError(f"unknown field {key}{did_you_mean(key, schema)} (every field is declared in "
                              f"experiments/base.py)")
        err = check_value(schema[key], value)
        if err:
            raise ConfigError(err)
    for rule in CROSS_RULES:
        rule(cfg)


# ---- cross-field rules ----------------------------------------------------------------------------------------------


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def heads_divide_width(cfg) -> None:
    """head_dim = 0 takes d_model // n_heads, so n_heads must divide d_model; RoPE rotates pairs: Dh even."""
    m = cfg.model
    if not m.head_dim:
        _require(m.d_model % m.n_heads == 0, f"model.d_model={m.d_model} is not divisible by model.n_heads="
                 f"{m.n_heads} (set model.head_dim explicitly)")
    head_dim = m.head_dim or m.d_model // m.n_heads
    _require(head_dim % 2 == 0, f"model.head_dim={head_dim} must be even (RoPE rotates channel pairs)")


def long_short_heads(cfg) -> None:
    """attention=ls: at most n_heads global heads."""
    m = cfg.model
    if m.attention == "ls":
        _require(m.ls.n_global <= m.n_heads, f"model.ls.n_global={m.ls.n_global} exceeds model.n_heads={m.n_heads}")


def spam_reset(cfg) -> None:
    """SPAM's cosine warmup after a reset must end before the next reset (W < ΔT, spec optimizers §1)."""
    o = cfg.optim
    if o.name == "spam":
        _require(o.spam.reset_warmup < o.spam.reset_interval, f"optim.spam.reset_warmup={o.spam.reset_warmup} must "
                 f"be < optim.spam.reset_interval={o.spam.reset_interval}")


def schedule_budgets(cfg) -> None:
    """wsd.cycles are increasing budgets before train.steps (the last budget)."""
    cycles, steps = tuple(cfg.optim.wsd.cycles), cfg.train.steps
    _require(all(a < b for a, b in zip(cycles, (*cycles[1:], steps))), f"optim.wsd.cycles={cycles} must increase "
             f"and end below train.steps={steps}")


def stacked_params_regex(cfg) -> None:
    """optim.stacked_params must compile as a regular expression."""
    try:
        re.compile(cfg.optim.stacked_params)
    except re.error as e:
        raise ConfigError(f"optim.stacked_params={cfg.optim.stacked_params!r} is not a regex: {e}") from None


def bpe_vocab(cfg) -> None:
    """A byte-level BPE of a text source needs the 256 bytes and its end-of-text token."""
    d = cfg.data
    if d.source in ("classics", "text", "tfds") and d.tokenizer == "bpe":
        _require(cfg.model.vocab_size >= 257, f"model.vocab_size={cfg.model.vocab_size} is too small for "
                 f"data.tokenizer=bpe (needs >= 257) of data.source={d.source}")


def rewind_checkpoints(cfg) -> None:
    """train.rewind (launch/train.py): checkpoints that make every rewind possible.

    A spike is seen at the log step that closes its window, so a checkpoint (ckpt_every a multiple of log_every)
    never holds an undetected spike, and the spike lies after the newest checkpoint. The newest checkpoint at or
    before (spike − steps_back) is then among the kept ones when (keep_ckpts − 1)·ckpt_every >= steps_back.
    """
    t = cfg.train
    if not t.rewind.enabled:
        return
    r = t.rewind
    _require(
        t.ckpt_every > 0 and t.ckpt_every % t.log_every == 0,
        f"train.rewind needs train.ckpt_every={t.ckpt_every} to be a positive multiple of "
        f"train.log_every={t.log_every} (spikes are detected at log steps, before a checkpoint is saved)",
    )
    need = 1 + -(-r.steps_back // t.ckpt_every)
    _require(
        t.keep_ckpts >= need,
        f"train.rewind.steps_back={r.steps_back} needs train.keep_ckpts >= {need} with train.ckpt_every={t.ckpt_every} "
        f"(keep_ckpts={t.keep_ckpts} keeps {(t.keep_ckpts - 1) * t.ckpt_every} steps behind the newest checkpoint)",
    )


CROSS_RULES: tuple[Callable, ...] = (
    heads_divide_width, long_short_heads, spam_reset, schedule_budgets, stacked_params_regex, bpe_vocab,
    rewind_checkpoints,
)


# ---- docs/configuration.md ------------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_docs(path: Path = SCHEMA_FILE) -> str:
    """docs/configuration.md: one table per ConfigDict of `path` (field, type/range, default, description)."""
    schema, sections = parse_schema(path)
    out = [
        "# Configuration reference",
        "",
        f"Generated from `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}` by "
        "`python -m launch.validate --write_docs`; do not edit by hand. Every field is set with "
        "`--config.SECTION.FIELD=VALUE`; the rule (type and range, or allowed values) is checked before anything "
        "is compiled or written (launch/validate.py). Floats must be finite. Defaults are those of the `tiny` "
        "preset; the other presets change the shapes and the recipe.",
    ]
    for section in sections:
        fields = [r for p, r in schema.items() if p.rpartition(".")[0] == section.path]
        if not fields:
            continue
        out += ["", f"## `{section.path}`", ""]
        if section.description:
            out += [section.description, ""]
        out += ["| field | type / range | default | description |", "|---|---|---|---|"]
        out += [f"| `{r.path}` | {_cell(r.spec())} | `{_cell(r.default)}` | {_cell(r.description)} |" for r in fields]
    out += ["", "Cross-field rules (launch/validate.py `CROSS_RULES`):", ""]
    out += [f"- `{f.__name__}`: {(f.__doc__ or '').strip().splitlines()[0] if f.__doc__ else f.__name__}"
            for f in CROSS_RULES]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if argv != ["--write_docs"]:
        print("usage: python -m launch.validate --write_docs", file=sys.stderr)
        return 2
    DOCS_FILE.write_text(render_docs())
    print(f"wrote {DOCS_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
