"""launch/report/early_warning.py: a hand-made sweep whose signals lead the divergence by known numbers of steps
(and one false alarm by construction), and a tiny CPU sweep with forced divergences whose report has the table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import test_report  # tests/launch/report/test_report.py: make_row, write_sweep

from experiments import base
from launch import configs, report, sweep
from launch.report import early_warning


def write_trial(root: Path, lr: float, diverged_at: int | None, grad_norm: dict, logits: dict) -> dict:
    """A trial: grad_norm at every step 1..100 (or up to the divergence), attn_max_logit per layer every 10."""
    row = test_report.make_row({"optim.lr": lr}, None if diverged_at else 3.0, 6.0)
    row["diverged_at_step"] = diverged_at
    trial = root / "trials" / row["id"]
    trial.mkdir(parents=True)
    last = diverged_at or 100
    lines = [{"step": t, "loss": 3.0, "grad_norm": grad_norm.get(t, 1.0)} for t in range(1, last + 1)]
    lines += [{"step": t, "attn_max_logit/layer_0": logits.get((0, t), 5.0),
               "attn_max_logit/layer_1": logits.get((1, t), 10.0 if not diverged_at else 8.0)}
              for t in range(10, last + 1, 10)]
    (trial / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return row


def test_known_leads_and_false_alarms(tmp_path):
    rows = [
        write_trial(tmp_path, 1e-3, None, {}, {}),
        write_trial(tmp_path, 2e-3, None, {}, {}),
        write_trial(tmp_path, 3e-3, None, {20: 2.0}, {}),  # a stable grad-norm spike: 2.0 > 1.5 × the others' 1.0
        # grad_norm above 3.0 (= 1.5 × 2.0) from step 38, diverged at 50: lead 12; attn logit 20 > 15 at 30: lead 20
        write_trial(tmp_path, 1e-1, 50, {t: 4.0 for t in range(38, 51)}, {(1, 30): 20.0}),
        # no grad-norm warning (a miss); layer 0's logit 16 at step 20, diverged at 30: lead 10
        write_trial(tmp_path, 3e-1, 30, {}, {(0, 20): 16.0}),
    ]
    test_report.write_sweep(tmp_path, rows)
    ids = [r["id"] for r in rows]
    results = {r.name: r for r in early_warning.evaluate(
        {i: (r["diverged_at_step"], early_warning.series(tmp_path / "trials" / i)) for i, r in zip(ids, rows)
         if r["diverged"]},
        {i: early_warning.series(tmp_path / "trials" / i) for i, r in zip(ids, rows) if not r["diverged"]},
    )}
    assert set(results) == {"grad-norm spike", "max attention logit"}  # the only signals logged
    grad, logit = results["grad-norm spike"], results["max attention logit"]
    assert grad.threshold == 3.0 and logit.threshold == 15.0
    assert grad.leads == {ids[3]: 12, ids[4]: None} and logit.leads == {ids[3]: 20, ids[4]: 10}
    assert (grad.false_alarms, grad.n_stable) == (1, 3) and logit.false_alarms == 0  # leave-one-out: trial 2

    out = report.write_report(tmp_path)
    summary = (out / "summary.md").read_text()
    table = test_report.summary_rows(summary, "Early warning of divergence")
    assert table["grad-norm spike"] == ["> 3", "1/2", "12", "12", "1/3"]
    assert table["max attention logit"] == ["> 15", "2/2", "15", "10", "0/3"]
    with open(out / "early_warning.csv") as f:
        leads = {(r["signal"], r["trial"]): r["lead_steps"] for r in csv.DictReader(f)}
    assert leads[("max attention logit", ids[3])] == "20" and leads[("grad-norm spike", ids[4])] == ""


def test_no_section_without_diverged_trials(tmp_path):
    rows = [write_trial(tmp_path, 1e-3, None, {}, {}), write_trial(tmp_path, 2e-3, None, {}, {})]
    assert early_warning.write_early_warning_report(tmp_path, rows, tmp_path) == ""
    assert not (tmp_path / "early_warning.csv").exists()


def test_tiny_sweep_with_forced_divergences_has_the_table(tmp_path):
    cfg = configs.apply_overrides(base.get_config("tiny"), {
        "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.vocab_size": 128,
        "model.dtype": "float32", "data.source": "synthetic", "data.synthetic_tokens": 50_000, "data.seq_len": 32,
        "data.batch_size": 8, "optim.warmup_steps": 5, "train.steps": 20, "train.log_every": 2,
        "train.eval_every": 20, "train.eval_batches": 1, "train.ckpt_every": 0, "train.diag_every": 2,
        "train.progress": False, "train.divergence_margin": 1.0,
    })
    trials = [{"optim.lr": lr} for lr in (1e-3, 3e-3, 1e-2, 30.0, 100.0)]
    rows = sweep.run_sweep(cfg, trials, tmp_path, "batched")
    assert sum(r["diverged"] for r in rows) >= 1 and sum(not r["diverged"] for r in rows) >= 2
    summary = (tmp_path / "report" / "summary.md").read_text()
    table = test_report.summary_rows(summary, "Early warning of divergence")
    assert set(early_warning.SIGNALS) <= set(table)  # every signal is logged by this config's diagnostics
    assert (tmp_path / "report" / "early_warning.csv").exists()
