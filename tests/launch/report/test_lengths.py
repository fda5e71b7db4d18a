"""launch/report/lengths.py on a hand-made sweep directory: trials with launch.eval_length's length_eval.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from launch import report, sweep
from launch.report import lengths

LENGTHS = (64, 128, 256, 512)
ARMS = {"softmax": {"model.attention": "softmax"},
        "lssar": {"model.attention": "softplus", "model.softplus.power": 15}}
SEEDS = (0, 1, 2)


def write_trial(root: Path, overrides: dict, losses: dict | None) -> dict:
    """A finished trial's run directory (metrics.jsonl, and length_eval.json when `losses`) and its results row."""
    tid = sweep.trial_id(overrides)
    run = root / "trials" / tid
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 - s / 100}) + "\n" for s in (10, 20)))
    if losses is not None:
        (run / "length_eval.json").write_text(json.dumps(
            {"step": 20, "train_seq_len": 64, "batch_size": 4, "batches": 2,
             "eval_loss": {str(n): v for n, v in losses.items()}}))
    return dict(id=tid, overrides=overrides, lr=overrides["optim.lr"], initial_loss=7.0, diverged=False,
                diverged_at_step=None, eval_loss=4.0, final_loss=4.5, steps=20, wall_seconds=1.0, n_params=1000)


def make_sweep(root: Path, with_evals: bool = True) -> dict[str, np.ndarray]:
    """2 arms x 3 seeds at one LR; returns {arm: loss[seed, length]} as written (one NaN: a non-finite cell).
    A seventh trial (another LR) has no length_eval.json and must not appear."""
    rng = np.random.default_rng(7)
    written, rows = {}, []
    for arm, items in ARMS.items():
        y = 3.0 + rng.uniform(0, 2, size=(len(SEEDS), len(LENGTHS)))
        if arm == "softmax":
            y[1, 2] = math.nan  # json.dumps writes NaN: the cell's stats must skip it
        written[arm] = y
        for i, s in enumerate(SEEDS):
            losses = dict(zip(LENGTHS, y[i].tolist())) if with_evals else None
            rows.append(write_trial(root, {**items, "optim.lr": 1e-3, "train.seed": s}, losses))
    rows.append(write_trial(root, {**ARMS["softmax"], "optim.lr": 1e-2, "train.seed": 0}, None))
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return written


def expected(ys: np.ndarray) -> str:
    ys = ys[np.isfinite(ys)]
    return f"{np.mean(ys):.4f} [{np.min(ys):.4f}, {np.max(ys):.4f}]"


def table_rows(text: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| attention=")}


def test_table_is_the_mean_min_max_over_seeds_and_the_figure_is_drawn(tmp_path):
    written = make_sweep(tmp_path)
    out = report.write_report(tmp_path)
    assert (out / lengths.FIGURE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / lengths.TABLE).read_text()
    summary = (out / "summary.md").read_text()
    assert "## Eval loss vs evaluation length" in summary and f"]({lengths.FIGURE})" in summary
    assert table[table.index("| group"):] in summary  # the same table in both
    header = next(line for line in table.splitlines() if line.startswith("| group"))
    assert [c.strip() for c in header.split("|")[4:-2]] == ["64 (1×)", "128 (2×)", "256 (4×)", "512 (8×)"]
    got = table_rows(table)
    labels = {"softmax": "attention=softmax", "lssar": "attention=softplus, power=15"}
    assert set(got) == set(labels.values())  # one line per arm; the lr=1e-2 trial has no length_eval.json
    for arm, y in written.items():
        lr, seeds, *cells, rise = got[labels[arm]]
        assert (lr, seeds) == ("0.001", "3")
        assert cells == [expected(y[:, j]) for j in range(len(LENGTHS))]
        assert rise == expected(y[:, -1] - y[:, 0])
    assert "1 seed × length cells without a finite loss are left out" in table


def test_figure_marks_the_training_length_and_bands_the_seeds(tmp_path):
    make_sweep(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    groups = report.sensitivity_table(rows)
    evals = lengths.read_length_evals(tmp_path, rows)
    lines = lengths.length_lines(groups, rows, evals)
    fig = lengths.plot_loss_vs_length(lines, lengths.lengths(evals), tmp_path / "f.png", "t")
    ax = fig.axes[0]
    gids = {a.get_gid() for a in [*ax.lines, *ax.collections]}
    assert {"attention=softmax/mean", "attention=softmax/band", "attention=softplus, power=15/seeds",
            "train_len/64"} <= gids
    assert ax.get_xscale() == "log"
    mark = next(a for a in ax.lines if a.get_gid() == "train_len/64")
    assert list(mark.get_xdata()) == [64, 64]


def test_nothing_without_length_evals(tmp_path):
    make_sweep(tmp_path, with_evals=False)
    out = report.write_report(tmp_path)
    assert not (out / lengths.FIGURE).exists() and not (out / lengths.TABLE).exists()
    assert "evaluation length" not in (out / "summary.md").read_text()
