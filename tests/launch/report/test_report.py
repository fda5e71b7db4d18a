"""launch.report on hand-made sweep and run directories: LR sensitivity (the paper's), the CSV and summary.md
contents against independent numpy computations, seeds (band, per-seed points, spread, verdicts), missing
trials from sweep.json, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import helpers
from launch import records, report
from launch.report import lr_curves, seeds as seeds_lib

LRS = (1e-3, 1e-2, 1e-1)
# (size, qk_norm) -> final eval losses over LRS; None = diverged. ℓ0 differs per size (and per trial, see below).
LOSSES = {
    (32, False): (4.0, 3.5, None),
    (32, True): (4.0, 3.4, 3.6),
    (64, False): (3.8, 3.2, None),
    (64, True): (3.9, 3.1, 9.9),  # a final loss above ℓ0 is capped at ℓ0
}
L0 = {32: 6.0, 64: 6.2}
CSV_HEADER = ["group", "model.d_model", "model.qk_norm", "n_seeds", "n_lrs", "lr_min", "lr_max", "l0", "best_loss",
              "best_lr", "lr_sensitivity", "lr_sensitivity_min", "lr_sensitivity_max", "lr_sensitivity_std",
              "n_finished", "n_diverged", "n_missing", "note"]


def np_sensitivity(losses, l0: float) -> float:
    """Float64 numpy reference of Wortsman et al. §2: mean of min(loss, ℓ0) − min over the capped grid; None = ℓ0."""
    y = np.array([l0 if x is None else min(x, l0) for x in losses], np.float64)
    return float(np.mean(y - y.min()))


def trial_id(overrides: dict) -> str:
    return ",".join(f"{k.rpartition('.')[2]}={v}" for k, v in sorted(overrides.items()))


def make_row(overrides: dict, loss: float | None, initial: float, n_params: int = 1000) -> dict:
    """A results.jsonl row as launch.sweep writes it; loss None = diverged at step 7."""
    diverged = loss is None
    return dict(id=trial_id(overrides), overrides=overrides, lr=overrides["optim.lr"], initial_loss=initial,
                diverged=diverged, diverged_at_step=7 if diverged else None, eval_loss=loss,
                final_loss=None if diverged else loss + 0.05, steps=7 if diverged else 20, wall_seconds=1.0,
                n_params=n_params, tokens_per_second=1e4)


def write_sweep(root: Path, rows: list[dict], definition: list[dict] | None = None) -> None:
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if definition is not None:
        (root / "sweep.json").write_text(json.dumps({"trials": definition}))


def read_csv(out: Path) -> tuple[list[str], list[dict]]:
    lines = [line for line in (out / "lr_sensitivity.csv").read_text().splitlines() if not line.startswith("#")]
    return lines[0].split(","), report.read_sensitivity_csv(out / "lr_sensitivity.csv")


def summary_rows(summary: str, section: str) -> dict[str, list[str]]:
    """{first cell: other cells} of the markdown table under `## section`."""
    body = summary.split(f"## {section}\n")[1].split("\n## ")[0]
    return {c[0]: c[1:] for line in body.splitlines() if line.startswith("| ") and not line.startswith("| group")
            for c in [[x.strip() for x in line.strip("|").split("|")]]}


def test_lr_sensitivity_spec_check():
    """Spec optimizers-and-metrics §4(d): 1.800; dropping the NaN run would give 0.967, which is wrong."""
    losses = [3.5, 3.3, 3.2, 3.3, 3.9, math.nan, 7.8]
    assert report.lr_sensitivity(losses, 10.0) == pytest.approx(1.8, abs=1e-9)
    assert report.lr_sensitivity([x for x in losses if math.isfinite(x)], 10.0) == pytest.approx(0.9667, abs=1e-4)
    assert report.lr_sensitivity([3.0] * 7, 10.0) == 0.0
    # a diverged run (NaN, inf or None) contributes exactly ℓ0 − ℓ*; losses above ℓ0 are capped
    assert report.lr_sensitivity([2.0, None], 5.0) == pytest.approx(1.5)
    assert report.lr_sensitivity([2.0, math.inf], 5.0) == report.lr_sensitivity([2.0, 7.0], 5.0) == pytest.approx(1.5)


def make_sweep_dir(root: Path) -> list[dict]:
    """A single-seed sweep directory as launch.sweep leaves it: results.jsonl and trials/<id>/metrics.jsonl."""
    rows = []
    for (size, qk), losses in LOSSES.items():
        for i, (lr, loss) in enumerate(zip(LRS, losses)):
            row = make_row({"model.d_model": size, "model.qk_norm": qk, "optim.lr": lr}, loss, L0[size] + 0.01 * i,
                           n_params=size * 1000)  # per-trial measured ℓ0: the group uses the mean
            rows.append(row)
            run = root / "trials" / row["id"]
            run.mkdir(parents=True)
            metric_rows = [{"step": s, "loss": row["initial_loss"] - 0.1 * s * lr * 100, "attn_max_logit/layer_0": 10.0 * s}
                           for s in range(1, 8 if loss is None else 21)]
            if loss is None:
                metric_rows[-1]["loss"] = None
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metric_rows))
    write_sweep(root, rows)
    return rows


def test_sweep_report_csv_and_summary_contents(tmp_path):
    rows = make_sweep_dir(tmp_path)
    out = report.write_report(tmp_path)
    for name in ("loss_vs_lr.png", "loss_over_steps.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    csv_text = (out / "lr_sensitivity.csv").read_text()
    assert "final EVAL loss" in csv_text and "no sweep.json" in csv_text  # says what it uses and what it lacks
    header, csv_rows = read_csv(out)
    assert header == CSV_HEADER
    table = {(int(r["model.d_model"]), r["model.qk_norm"] == "True"): r for r in csv_rows}
    assert table.keys() == LOSSES.keys()
    summary = (out / "summary.md").read_text()
    md = summary_rows(summary, "LR sensitivity per group")
    for (size, qk), losses in LOSSES.items():
        l0 = np.mean([L0[size] + 0.01 * i for i in range(len(LRS))])
        capped = [l0 if x is None else min(x, l0) for x in losses]
        expected = np_sensitivity(losses, l0)
        ok = [i for i, x in enumerate(losses) if x is not None]
        best_lr = LRS[min(ok, key=lambda i: capped[i])]
        got = table[size, qk]
        assert got["group"] == f"d_model={size}, qk_norm={qk}"
        assert float(got["l0"]) == pytest.approx(l0, abs=1e-12)
        assert float(got["lr_sensitivity"]) == pytest.approx(expected, abs=1e-12)
        assert float(got["lr_sensitivity_min"]) == float(got["lr_sensitivity_max"]) == float(got["lr_sensitivity"])
        assert got["lr_sensitivity_std"] == ""  # one seed: no spread
        assert float(got["best_loss"]) == pytest.approx(min(capped))
        assert float(got["best_lr"]) == best_lr
        assert (got["n_seeds"], got["n_lrs"], float(got["lr_min"]), float(got["lr_max"])) == ("1", "3", 1e-3, 1e-1)
        n_div = sum(x is None for x in losses)
        assert (int(got["n_finished"]), int(got["n_diverged"]), int(got["n_missing"]), got["note"]) == (3 - n_div, n_div, 0, "")
        cells = md[got["group"]]
        assert cells == ["0.001 0.01 0.1", "1", f"{l0:.4f}", f"{min(capped):.4f}", f"{best_lr:g}", f"{expected:.4f}",
                         f"{3 - n_div} / {n_div} / 0"]

    assert "eval** loss" in summary and "loss_vs_lr.png" in summary and "loss_over_steps.png" in summary
    assert "Differences against seed noise" not in summary  # a single-seed sweep looks as before
    assert "No sweep.json" in summary.split("## Missing trials")[1]
    diverged = [r["id"] for r in rows if r["diverged"]]
    assert all(f"`{tid}` at step 7" in summary for tid in diverged)
    trials = summary_rows(summary, "Trials")
    assert set(trials) - {"trial"} == {r["id"] for r in rows}


def test_single_seed_plot_has_no_band(tmp_path):
    make_sweep_dir(tmp_path)
    groups = report.sensitivity_table(records.read_results(tmp_path / "results.jsonl"))
    fig = lr_curves.plot_loss_vs_lr(groups, tmp_path / "p.png", "t")
    gids = {str(a.get_gid()) for ax in fig.axes for a in [*ax.lines, *ax.collections]}
    assert {g for g in gids if g.endswith("/mean")} == {f"d_model={d}, qk_norm={q}/mean" for d, q in LOSSES}
    assert not any(g.endswith(("/band", "/seeds")) for g in gids) and not any(ax.collections for ax in fig.axes)
    line = next(a for ax in fig.axes for a in ax.lines if a.get_gid() == "d_model=32, qk_norm=True/mean")
    np.testing.assert_allclose(line.get_xydata(), np.array([LRS, LOSSES[32, True]]).T)


# ---- seeds ----------------------------------------------------------------------------------------------------------

SEEDS = (0, 1, 2)
L0_SEED = {0: 7.0, 1: 7.1, 2: 6.9}


def seed_rows(losses_SxL: dict, extra: dict | None = None) -> list[dict]:
    """Rows of one group over SEEDS × LRS (losses_SxL[seed] = losses over LRS; None = diverged)."""
    return [make_row({**(extra or {}), "optim.lr": lr, "train.seed": s}, loss, L0_SEED[s])
            for s in SEEDS for lr, loss in zip(LRS, losses_SxL[s])]


BASE = {0: (4.0, 3.5, None), 1: (4.2, 3.3, 3.9), 2: (4.1, 3.6, 8.0)}  # 8.0 > ℓ0 = 6.9: capped
QK = {0: (4.0, 3.4, 3.5), 1: (4.1, 3.5, 3.6), 2: (4.0, 3.3, 3.7)}


def capped_reference(losses_SxL: dict) -> np.ndarray:
    return np.array([[L0_SEED[s] if x is None else min(x, L0_SEED[s]) for x in losses_SxL[s]] for s in SEEDS])


def test_three_seed_group_draws_mean_band_and_per_seed_points(tmp_path):
    rows = seed_rows(BASE) + seed_rows(QK, {"model.qk_norm": True})
    write_sweep(tmp_path, rows)
    out = report.write_report(tmp_path)
    assert (out / "loss_vs_lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    groups = report.sensitivity_table(records.read_results(tmp_path / "results.jsonl"))
    assert [g.label for g in groups] == ["base", "qk_norm=True"] and all(g.seeds == list(SEEDS) for g in groups)
    fig = lr_curves.plot_loss_vs_lr(groups, tmp_path / "p.png", "t")
    artists = {a.get_gid(): a for ax in fig.axes for a in [*ax.lines, *ax.collections]}
    for name, losses in (("base", BASE), ("qk_norm=True", QK)):
        y_SxL = capped_reference(losses)
        np.testing.assert_allclose(artists[f"{name}/mean"].get_xydata(), np.c_[LRS, y_SxL.mean(0)])
        band = artists[f"{name}/band"].get_paths()[0].vertices  # the polygon: lower edge, then upper edge
        for j, lr in enumerate(LRS):
            at = band[np.isclose(band[:, 0], lr), 1]
            assert at.min() == pytest.approx(y_SxL[:, j].min()) and at.max() == pytest.approx(y_SxL[:, j].max())
        points = artists[f"{name}/seeds"].get_xydata()
        expected = [(lr, y_SxL[s, j]) for s in range(len(SEEDS)) for j, lr in enumerate(LRS)]
        assert sorted(map(tuple, points.round(12))) == sorted((a, round(b, 12)) for a, b in expected)
    np.testing.assert_allclose(artists["base/diverged"].get_xydata(), [[LRS[2], L0_SEED[0]]])  # seed 0's ℓ0
    assert artists["qk_norm=True/diverged"].get_xydata().size == 0


def test_seed_spread_of_sensitivity_equals_numpy(tmp_path):
    write_sweep(tmp_path, seed_rows(BASE) + seed_rows(QK, {"model.qk_norm": True}))
    out = report.write_report(tmp_path, seeds=True)
    _, csv_rows = read_csv(out)
    got = {r["group"]: r for r in csv_rows}
    md = summary_rows((out / "summary.md").read_text(), "LR sensitivity per group")
    for name, losses in (("base", BASE), ("qk_norm=True", QK)):
        per_seed = np.array([np_sensitivity(losses[s], L0_SEED[s]) for s in SEEDS])
        row = got[name]
        assert row["n_seeds"] == "3" and row["n_finished"] == str(9 - sum(x is None for s in SEEDS for x in losses[s]))
        assert float(row["lr_sensitivity"]) == pytest.approx(per_seed.mean(), abs=1e-12)
        assert float(row["lr_sensitivity_min"]) == pytest.approx(per_seed.min(), abs=1e-12)
        assert float(row["lr_sensitivity_max"]) == pytest.approx(per_seed.max(), abs=1e-12)
        assert float(row["lr_sensitivity_std"]) == pytest.approx(per_seed.std(ddof=1), abs=1e-12)
        assert float(row["l0"]) == pytest.approx(np.mean(list(L0_SEED.values())))
        mean_L = capped_reference(losses).mean(0)
        assert float(row["best_loss"]) == pytest.approx(mean_L.min())
        assert md[name][5] == f"{per_seed.mean():.4f} [{per_seed.min():.4f}, {per_seed.max():.4f}] ± {per_seed.std(ddof=1):.4f}"
    # --seeds: per LR, the spread over seeds of the capped loss
    seeds_md = (out / "seeds.md").read_text()
    groups = report.sensitivity_table(records.read_results(tmp_path / "results.jsonl"))
    fig = seeds_lib.plot_seed_spread(groups, tmp_path / "s.png", "t")
    lines = {a.get_gid(): a for ax in fig.axes for a in ax.lines}
    for name, losses in (("base", BASE), ("qk_norm=True", QK)):
        y_SxL = capped_reference(losses)
        spread = y_SxL.max(0) - y_SxL.min(0)
        np.testing.assert_allclose(lines[f"{name}/spread"].get_xydata(), np.c_[LRS, spread])
        table = summary_rows(seeds_md, name)
        for j, lr in enumerate(LRS):
            assert table[f"{lr:g}"][-3:] == [f"{y_SxL[:, j].mean():.4f}", f"{spread[j]:.4f}",
                                             f"{y_SxL[:, j].std(ddof=1):.4f}"]
    assert "| 0.1 | 6.9000 x |" not in seeds_md and "| 0.1 | 7.0000 x |" in seeds_md  # seed 0 diverged at 0.1


def test_seed_verdict_only_when_difference_is_within_seed_spread(tmp_path):
    def verdicts(name: str, base: dict, qk: dict) -> tuple[str, dict]:
        d = tmp_path / name
        d.mkdir()
        rows = [r for size in (32, 64) for r in seed_rows(base, {"model.d_model": size})
                + seed_rows(qk, {"model.d_model": size, "model.qk_norm": True})]
        write_sweep(d, rows)
        summary = (report.write_report(d) / "summary.md").read_text()
        groups = {g.label: g.sensitivity() for g in report.sensitivity_table(rows)}
        return summary.split("## Differences against seed noise")[1].split("\n## ")[0], groups

    def diff_and_spread(s):
        a, b = s["d_model=32"], s["d_model=32, qk_norm=True"]
        return abs(a["mean"] - b["mean"]), max(a["max"] - a["min"], b["max"] - b["min"])

    near, s = verdicts("near", BASE, QK)  # BASE's seeds disagree (one diverges at LR 0.1): a wide spread
    diff, spread = diff_and_spread(s)
    assert diff < spread  # the premise of this case, from the per-seed sensitivities
    sentence = (f"base vs qk_norm=True: the difference in LR sensitivity ({diff:.4f}) is smaller than the seed "
                f"spread ({spread:.4f})")
    assert f"d_model=32: {sentence}" in near and f"d_model=64: {sentence}" in near  # a sentence per size
    assert "d_model=32 vs" not in near and near.count("- ") == 2  # never across sizes
    paired = [np_sensitivity(QK[k], L0_SEED[k]) - np_sensitivity(BASE[k], L0_SEED[k]) for k in SEEDS]  # same seeds
    assert ("Paired by seed (qk_norm=True − base): " + ", ".join(f"{x:+.4f}" for x in paired)) in near

    steep = {s: tuple(x + 3.0 * j for j, x in enumerate(QK[s])) for s in SEEDS}  # loss rises steeply with the LR
    far, s = verdicts("far", QK, steep)
    diff, spread = diff_and_spread(s)
    assert diff > spread
    assert "smaller than the seed spread" not in far
    assert f"({diff:.4f}) exceeds the seed spread ({spread:.4f}); base is the less LR-sensitive" in far


def test_one_lr_groups_compare_final_losses_against_the_seed_spread(tmp_path):
    """A study of arms at one LR (e.g. FP8 vs BF16): no LR sensitivity (it is 0 by definition), the final eval
    losses' seed means compared with the seed spread instead."""
    def one_lr(name: str, a: dict, b: dict) -> tuple[str, dict]:
        d = tmp_path / name
        d.mkdir()
        rows = [make_row({**extra, "optim.lr": 3e-3, "train.seed": s}, losses[s], L0_SEED[s])
                for losses, extra in ((a, {}), (b, {"model.mlp": "swiglu"})) for s in SEEDS]
        write_sweep(d, rows)
        return (report.write_report(d) / "summary.md").read_text()

    a = {0: 2.90, 1: 2.80, 2: 2.75}  # spread 0.15
    near = one_lr("near", a, {0: 2.92, 1: 2.84, 2: 2.80})  # mean difference 0.0367 < 0.15
    diff = abs(np.mean([2.90, 2.80, 2.75]) - np.mean([2.92, 2.84, 2.80]))
    assert summary_rows(near, "LR sensitivity per group")["base"][5] == "– (one LR)"
    assert (f"base vs mlp=swiglu: one LR (0.003), no LR sensitivity; the difference in final eval loss ({diff:.4f}) "
            "is smaller than the seed spread (0.1500); these seeds do not tell the two apart.") in near
    far = one_lr("far", a, {0: 3.20, 1: 3.15, 2: 3.10})  # mean difference 0.3333 > 0.15
    diff = abs(np.mean([2.90, 2.80, 2.75]) - np.mean([3.20, 3.15, 3.10]))
    assert f"({diff:.4f}) exceeds the seed spread (0.1500); base has the lower loss." in far
    # the same seeds in both (same init and data order): the per-seed differences
    assert "Paired by seed (mlp=swiglu − base): +0.0200, +0.0400, +0.0500; mean +0.0367, the same sign" in near
    assert "Paired by seed (mlp=swiglu − base): +0.3000, +0.3500, +0.3500; mean +0.3333, the same sign" in far


# ---- missing trials and the paper's divergence rule -------------------------------------------------------------------


def test_group_with_a_missing_trial_is_flagged_and_gets_no_sensitivity(tmp_path):
    rows = seed_rows(BASE) + seed_rows(QK, {"model.qk_norm": True})
    definition = [{"id": r["id"], "overrides": r["overrides"]} for r in rows]
    lost = rows.pop(7)  # qk_norm=False, seed 2, LR 1e-2: in sweep.json, never finished
    write_sweep(tmp_path, rows, definition)
    out = report.write_report(tmp_path)
    _, csv_rows = read_csv(out)
    got = {r["group"]: r for r in csv_rows}
    assert "in sweep.json, not in results.jsonl" in (out / "lr_sensitivity.csv").read_text()
    assert (got["base"]["n_missing"], got["base"]["lr_sensitivity"], got["base"]["lr_sensitivity_std"]) == ("1", "", "")
    assert got["base"]["note"] == "1 of 9 trials missing: not computed over fewer points"
    assert (got["base"]["n_finished"], got["base"]["n_diverged"]) == ("7", "1")
    assert got["qk_norm=True"]["n_missing"] == "0" and got["qk_norm=True"]["note"] == ""  # the other group: computed
    assert float(got["qk_norm=True"]["lr_sensitivity"]) == pytest.approx(
        np.mean([np_sensitivity(QK[s], L0_SEED[s]) for s in SEEDS]), abs=1e-12)
    summary = (out / "summary.md").read_text()
    md = summary_rows(summary, "LR sensitivity per group")
    assert md["base"][5].startswith("⚠ –") and md["base"][6] == "7 / 1 / 1 ⚠"
    assert f"- base: `{lost['id']}`" in summary.split("## Missing trials")[1]
    assert "1 missing" in summary.splitlines()[2]
    assert "base vs qk_norm=True: not compared" in summary


def test_holes_in_the_seed_grid_are_missing_without_sweep_json(tmp_path):
    rows = seed_rows(QK)
    rows.pop(4)  # seed 1, LR 1e-2
    write_sweep(tmp_path, rows)
    (g,) = report.sensitivity_table(records.read_results(tmp_path / "results.jsonl"))
    assert g.missing == ["lr=0.01, seed=1"] and g.sensitivity()["mean"] is None


def test_spike_and_recover_trial_counts_with_its_real_final_loss(tmp_path):
    """A trial whose loss spiked above ℓ0 + margin mid-run and recovered is not diverged (the paper's rule): its
    final eval loss enters the sensitivity, not ℓ0."""
    rows = [make_row({"optim.lr": lr}, loss, 7.0) for lr, loss in zip(LRS, (4.0, 3.5, 3.8))]
    run = tmp_path / "trials" / rows[2]["id"]
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 9.5 if s == 5 else 5.0 - s / 10}) + "\n"
                                               for s in range(1, 21)))
    write_sweep(tmp_path, rows)
    _, (got,) = read_csv(report.write_report(tmp_path))
    assert float(got["lr_sensitivity"]) == pytest.approx(np_sensitivity([4.0, 3.5, 3.8], 7.0), abs=1e-12)
    assert float(got["lr_sensitivity"]) != pytest.approx(np_sensitivity([4.0, 3.5, None], 7.0))
    assert got["n_diverged"] == "0"


# ---- options, run directories, the CLI ------------------------------------------------------------------------------


def test_metric_option_log_y_and_missing_metric(tmp_path, capsys):
    make_sweep_dir(tmp_path)
    report.write_report(tmp_path, "attn_max_logit/layer_0", log_y=True)
    assert (tmp_path / "report" / "attn_max_logit_layer_0_over_steps.png").exists()
    assert "attn_max_logit_layer_0_over_steps.png" in (tmp_path / "report" / "summary.md").read_text()
    # the numbers behind the plot: first logged, max and final value per group and LR (10 * step, steps 1..20;
    # the diverged LR 0.1 trial of each qk_norm=False group stops at step 7)
    got = {(group, cells[0]): cells[1:] for line in
           (tmp_path / "report" / "attn_max_logit_layer_0_over_steps.md").read_text().splitlines()
           if line.startswith("| d_model") for group, *cells in [[c.strip() for c in line.strip("|").split("|")]]}
    assert got[("d_model=32, qk_norm=False", "0.1")] == ["1", "10", "70", "70"]
    assert got[("d_model=64, qk_norm=True", "0.001")] == ["1", "10", "200", "200"]
    assert len(got) == 12
    report.write_report(tmp_path, "no_such_metric")
    assert not (tmp_path / "report" / "no_such_metric_over_steps.png").exists()
    assert "no_such_metric" in capsys.readouterr().err


def test_single_run_directory(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 / s}) + "\n" for s in range(1, 11)))
    (tmp_path / "summary.json").write_text(json.dumps({"finished": True, "diverged": False, "eval_loss": 0.6}))
    out = report.write_report(tmp_path)
    assert (out / "loss_over_steps.png").exists() and not (out / "loss_vs_lr.png").exists()
    assert "| eval_loss | 0.6 |" in (out / "summary.md").read_text()


def test_torn_last_line_of_results_is_ignored(tmp_path):
    rows = make_sweep_dir(tmp_path)
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"id": "half a ro')
    assert [r["id"] for r in records.read_results(tmp_path / "results.jsonl")] == [r["id"] for r in rows]
    records.drop_torn_tail(tmp_path / "results.jsonl")  # what a rerun does before appending
    assert (tmp_path / "results.jsonl").read_text().endswith("}\n")


def test_cli_seeds_flag_and_one_line_error(tmp_path):
    write_sweep(tmp_path, seed_rows(QK))
    r = helpers.run_module("launch.report", str(tmp_path), "--seeds")
    assert r.returncode == 0, r.stderr
    assert "| 0.01 | 3.4000 | 3.5000 | 3.3000 |" in (tmp_path / "report" / "seeds.md").read_text()
    r = helpers.run_module("launch.report", str(tmp_path / "nothing"))
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "neither" in err[0]
