"""launch/report/curves.py on hand-made sweep directories, and the spam / wsd_s study presets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import base, spam, wsd_s
from launch import configs, report, sweep
from launch.report import curves

BUDGETS = (10, 20, 40)


def eval_loss(method: str, step: int) -> float:
    """A distinct, recognisable eval loss per (method, step): the table must pick exactly these."""
    return {"wsd_s": 3.0, "cyclic_cosine": 4.0, "wsd": 5.0, "warmup_cosine": 6.0}[method] + step / 1000


def write_trial(root: Path, overrides: dict, cfg) -> dict:
    tid = sweep.trial_id(overrides)
    run = root / "trials" / tid
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(configs.flatten(cfg), default=list))
    method, steps = cfg.optim.schedule, cfg.train.steps
    rows = [{"step": s, "loss": 5.0 - s / 100, "eval_loss": eval_loss(method, s)} for s in range(10, steps + 1, 10)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dict(id=tid, overrides=overrides, lr=cfg.optim.lr, initial_loss=7.0, diverged=False, diverged_at_step=None,
                eval_loss=eval_loss(method, steps), final_loss=5.0, steps=steps, wall_seconds=1.0, n_params=1000)


def make_schedule_sweep(root: Path) -> None:
    """The layout of experiments/wsd_s.py: two cyclic runs to 40 with cycle ends 10, 20; one run per budget each
    for wsd and warmup_cosine. Eval every 10 steps."""
    cfg0 = base.get_config("tiny")
    cfg0.train.steps = BUDGETS[-1]
    cycles = {"optim.wsd.cycles": BUDGETS[:-1]}
    sweep_ = [
        {"optim.schedule": "wsd_s", **cycles},
        {"optim.schedule": "cyclic_cosine", **cycles},
        *({"optim.schedule": "wsd", "train.steps": b} for b in BUDGETS),
        *({"optim.schedule": "warmup_cosine", "train.steps": b} for b in BUDGETS),
    ]
    rows = [write_trial(root, o, configs.apply_overrides(cfg0, o)) for o in sweep_]
    (root / "results.jsonl").write_text("".join(json.dumps(r, default=list) + "\n" for r in rows))


def test_budget_table_picks_each_methods_decayed_model(tmp_path):
    make_schedule_sweep(tmp_path)
    out = report.write_report(tmp_path)
    assert (out / "loss_over_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    table = summary[summary.index("## Eval loss at each budget"):]
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[3:-1]] for line in table.splitlines()
             if line.startswith("| schedule=")}
    # cyclic runs: the eval at every cycle end and at the end; per-budget runs: each run's final eval
    assert lines["schedule=wsd_s, cycles=[10, 20]"] == [f"{eval_loss('wsd_s', b):.4f}" for b in BUDGETS]
    assert lines["schedule=cyclic_cosine, cycles=[10, 20]"] == [f"{eval_loss('cyclic_cosine', b):.4f}" for b in BUDGETS]
    assert lines["schedule=wsd"] == [f"{eval_loss('wsd', b):.4f}" for b in BUDGETS]
    assert lines["schedule=warmup_cosine"] == [f"{eval_loss('warmup_cosine', b):.4f}" for b in BUDGETS]


def test_decayed_budgets_and_when_curves_are_wanted():
    cfg = configs.flatten(base.get_config("tiny"))
    assert curves.decayed_budgets({**cfg, "optim.schedule": "wsd", "optim.wsd.cycles": [5]}) == [cfg["train.steps"]]
    assert curves.decayed_budgets({**cfg, "optim.schedule": "wsd_s", "optim.wsd.cycles": [5, 9]}) == [5, 9, 300]
    assert not curves.wanted([cfg, {**cfg, "optim.lr": 1.0}])  # a plain LR sweep: the LR report says it all
    assert curves.wanted([cfg, {**cfg, "train.spike_at_step": 7}])
    assert curves.wanted([cfg, {**cfg, "optim.name": "spam"}])
    assert curves.wanted([cfg, {**cfg, "train.steps": 100}])


def test_lr_only_sweep_gets_no_curves_section(tmp_path):
    cfg0 = base.get_config("tiny")
    rows = [write_trial(tmp_path, {"optim.lr": lr}, configs.apply_overrides(cfg0, {"optim.lr": lr})) for lr in (1e-3, 1e-2)]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = report.write_report(tmp_path)
    assert not (out / "loss_over_tokens.png").exists()
    assert "Loss over tokens" not in (out / "summary.md").read_text()


@pytest.mark.parametrize("study", [spam, wsd_s])
@pytest.mark.parametrize("preset", ["tiny", "gpu"])
def test_spike_and_schedule_study_presets_are_valid_sweeps(study, preset):
    cfg = study.get_config(preset)
    trials = sweep.make_trials(cfg, study.get_sweep(preset))
    trials = [t for t in trials if t.cfg.train.seed == 0]  # one seed (the seed axis: tests/experiments)
    if study is wsd_s:  # an eval lands on every budget, so every method's decayed model is measured
        budgets = {b for t in trials for b in curves.decayed_budgets(configs.flatten(t.cfg))}
        assert budgets == set(wsd_s.BUDGETS[preset]) and all(b % cfg.train.eval_every == 0 for b in budgets)
        assert len(sweep.group_trials(trials)) == 8
    else:  # adam and adam+clip share a program (clip is an optimizer scalar); spam is its own
        assert {t.cfg.train.spike_at_step for t in trials} == {0, int(spam.SPIKE_FRACTION * cfg.train.steps)}
        assert len(sweep.group_trials(trials)) == 4
        assert len(trials) == len(spam.METHODS) * 2 * len(spam.LRS[preset])
