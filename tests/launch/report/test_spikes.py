"""launch/report/spikes.py on hand-made sweep directories: counts and ratios against an independent float64 reference
(the EMA in closed form, not as a recursion), irregular logging gaps, a flat series, a diverged trial, no rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from experiments import base
from launch import configs, report, sweep
from launch.report import spikes

WARMUP = 40


def reference(steps, xs, factor, after=-math.inf):
    """(count, max x / EMA) of the finite rows, the EMA in closed form: with P(a, b) = 0.99 ** (s_b − s_a),
    ema_n = P(0, n) x_0 + sum_{j=1..n} (1 − P(j−1, j)) P(j, n) x_j; row n compared with ema_{n−1}."""
    s, x = np.asarray(steps, dtype=np.float64), np.asarray(xs, dtype=np.float64)
    keep = np.isfinite(x)
    s, x = s[keep], x[keep]
    d = 0.99
    n = np.arange(len(x))
    weight = np.where(n[None, :] <= n[:, None], d ** (s[:, None] - s[None, :]), 0.0)  # [n, j]: P(j, n), j <= n
    gain = np.concatenate([[1.0], 1.0 - d ** np.diff(s)])  # x_0 enters whole, x_j by 1 − P(j−1, j)
    ema = weight @ (gain * x)  # ema[n] for every row n; ema[0] = x_0
    ratio = x[1:] / ema[:-1]
    counted = s[1:] > after
    return int(np.sum(ratio[counted] > factor)), float(np.max(ratio[counted]))


def irregular_steps(n: int, rng) -> np.ndarray:
    """Logged steps with gaps of 1 to 15 (an eval row, a resumed run, a changed log_every); the first eight rows,
    steps 2 to 40, in the warmup (its last step included)."""
    return np.cumsum(np.concatenate([[2, 3, 1, 5, 4, 2, 8, 15], rng.integers(1, 13, size=n - 8)]))


def write_trial(root: Path, overrides: dict, steps, loss, grad, diverged_at=None, config=True) -> dict:
    tid = sweep.trial_id(overrides)
    run = root / "trials" / tid
    run.mkdir(parents=True)
    lines = [json.dumps({"step": 0, "eval_loss": 9.0})]  # an eval row: no loss, no grad_norm
    for i, s in enumerate(steps):
        row = {"step": int(s)}
        for key, values in (("loss", loss), ("grad_norm", grad)):
            if values is not None:  # non-finite values as metrics.jsonl writes them: null
                row[key] = float(values[i]) if math.isfinite(values[i]) else None
        lines.append(json.dumps(row))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if config:
        cfg = configs.apply_overrides(base.get_config("tiny"), {"optim.warmup_steps": WARMUP, "optim.clip": 1.0,
                                                                "train.steps": int(steps[-1])})
        (run / "config.json").write_text(json.dumps(configs.flatten(cfg), default=list))
    return dict(id=tid, overrides=overrides, lr=overrides["optim.lr"], initial_loss=9.0,
                diverged=diverged_at is not None, diverged_at_step=diverged_at, eval_loss=None if diverged_at else 3.0,
                final_loss=3.1, steps=int(steps[-1]), wall_seconds=1.0, n_params=1000)


def write_results(root: Path, rows: list[dict]) -> None:
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def spiky_series(rng, n=60):
    """A slowly falling, noisy loss with one injected spike after the warmup, and a grad norm with two spikes in the
    warmup (one at its last step) and two after it; returns (steps, loss, grad, the injected rows)."""
    steps = irregular_steps(n, rng)
    loss = 4.0 - 1.0 * np.arange(n) / n + rng.normal(0, 0.02, n)
    grad = 0.5 + rng.normal(0, 0.03, n)
    early, late = 3, int(np.argmax(steps > WARMUP)) + 10
    loss[late] *= 1.6
    grad[early] = 6.0  # step 11, in the warmup
    grad[7] = 4.0  # step 40 = WARMUP: still the warmup
    grad[late] = 5.0
    grad[late + 15] = 3.0
    return steps, loss, grad, (early, late)


def test_ema_spikes_equals_the_closed_form_reference_with_irregular_gaps():
    rng = np.random.default_rng(3)
    steps, loss, grad, (early, late) = spiky_series(rng)
    assert len(set(np.diff(steps))) > 5  # really irregular
    got = spikes.ema_spikes(steps, loss, spikes.LOSS_FACTOR)
    assert (got.count, got.max_step) == (1, int(steps[late]))  # the injected spike, and only it
    assert got.count == reference(steps, loss, 1.2)[0]
    assert math.isclose(got.max_ratio, reference(steps, loss, 1.2)[1], rel_tol=1e-12)
    for after in (-math.inf, WARMUP):
        got = spikes.ema_spikes(steps, grad, spikes.GRAD_FACTOR, after=after)
        count, top = reference(steps, grad, 3.0, after)
        assert got.count == count and math.isclose(got.max_ratio, top, rel_tol=1e-12)
    assert spikes.ema_spikes(steps, grad, 3.0).count == spikes.ema_spikes(steps, grad, 3.0, after=WARMUP).count + 2
    assert spikes.ema_spikes(steps, grad, 3.0).max_step == int(steps[early])  # 4 / 0.5 beats 5 / ~0.5 + ...
    # a fixed per-row decay (0.99 ** mean gap) would give another EMA: the step gap matters
    fixed = spikes.ema_spikes(np.arange(len(loss)), loss, 1.2, decay=0.99 ** float(np.mean(np.diff(steps))))
    assert not math.isclose(fixed.max_ratio, got.max_ratio if False else spikes.ema_spikes(
        steps, loss, 1.2).max_ratio, rel_tol=1e-9)


def test_flat_series_has_no_spike():
    steps = np.arange(5, 505, 5)
    got = spikes.ema_spikes(steps, np.full(len(steps), 2.5), 1.2)
    assert (got.count, got.compared, got.skipped) == (0, len(steps) - 1, 0)
    assert math.isclose(got.max_ratio, 1.0, rel_tol=1e-12)


def make_sweep(root: Path, rng) -> dict:
    """2 arms x 2 LRs x 3 seeds: `spiky` has the injected spikes, `flat` constant rows; one spiky seed diverges
    (a lone null row, later a huge finite loss, then null rows); returns {trial id: (steps, loss, grad)} as written."""
    written, rows = {}, []
    for arm in ("spiky", "flat"):
        for lr in (1e-3, 1e-2):
            for seed in (0, 1, 2):
                ov = {"model.arm": arm, "optim.lr": lr, "train.seed": seed}
                steps, loss, grad, _ = spiky_series(rng)
                diverged = None
                if arm == "flat":
                    loss, grad = np.full(len(steps), 3.0), np.full(len(steps), 0.4)
                elif lr == 1e-2 and seed == 2:  # diverges: the loss blows up, then NaN; the grad norm inf
                    loss[40], loss[41:] = 50.0, math.nan
                    grad[41:] = math.inf
                    loss[26] = grad[25] = math.nan  # a lone null row before: the EMA carries over it
                    diverged = int(steps[41])
                rows.append(write_trial(root, ov, steps, loss, grad, diverged))
                written[rows[-1]["id"]] = (steps, loss, grad)
    write_results(root, rows)
    return written


def trial_cells(text: str) -> dict[str, list[str]]:
    part = text[text.index("## Per trial"):]
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in part.splitlines() if line.startswith("| model.arm=")}


def group_cells(text: str) -> dict[tuple[str, str], list[str]]:
    part = text[:text.index("## Per trial")] if "## Per trial" in text else text
    return {(line.split("|")[1].strip(), line.split("|")[2].strip()): [c.strip() for c in line.split("|")[3:-1]]
            for line in part.splitlines() if line.startswith("| arm=")}


def test_report_tables_equal_the_reference_and_handle_a_diverged_trial(tmp_path):
    written = make_sweep(tmp_path, np.random.default_rng(11))
    out = report.write_report(tmp_path)
    text = (out / spikes.FILE).read_text()
    summary = (out / "summary.md").read_text()
    assert "## Loss and gradient-norm spikes" in summary and f"]({spikes.FILE})" in summary
    assert "Loss and gradient-norm spikes" in (out / "index.html").read_text()
    per_trial = trial_cells(text)
    assert set(per_trial) == set(written)
    expected_group: dict[tuple[str, str], list[list[float]]] = {}
    for tid, (steps, loss, grad) in written.items():
        cells = per_trial[tid]
        _, lr, seed, warmup, loss_cell, after_cell, all_cell, gmax, share, nonfinite, diverged_at = cells
        assert warmup == str(WARMUP)
        lc, lt = reference(steps, loss, 1.2)
        ac, at = reference(steps, grad, 3.0, WARMUP)
        gc, gt = reference(steps, grad, 3.0)
        assert loss_cell.startswith(f"{lc} ({lt:.3f} at ")
        assert after_cell.startswith(f"{ac} ({at:.2f} at ") and all_cell.startswith(f"{gc} ({gt:.2f} at ")
        post = (steps > WARMUP) & np.isfinite(grad)
        assert gmax.startswith(f"{np.max(grad[post]):.4g} at ")
        assert share == f"{np.mean(grad[post] > 1.0):.2f}"
        n_bad = int((~np.isfinite(loss)).sum() + (~np.isfinite(grad)).sum())
        assert nonfinite == str(n_bad)
        assert diverged_at == (str(int(steps[41])) if n_bad else "–")
        if "arm=flat" in tid:
            assert (lc, ac, gc) == (0, 0, 0) and math.isclose(lt, 1.0) and math.isclose(gt, 1.0)
            assert loss_cell.startswith("0 (1.000 at ") and all_cell.startswith("0 (1.00 at ")
        elif n_bad:
            assert lc == 2 and lt > 10  # the injected spike and the blow-up (50 against ~3.5); the NaN rows skipped
        else:
            assert (lc, ac, gc) == (1, 2, 4)  # the injected spikes: the warmup's two count only over all rows
        key = ("arm=" + tid.split(",")[0].split("=")[-1], lr)
        expected_group.setdefault(key, []).append([lc, lt, ac, at, gc, gt])
    groups = group_cells(text)
    assert groups == group_cells(summary[summary.index("## Loss and"):])  # the same table in both
    assert set(groups) == set(expected_group)
    for key, v in expected_group.items():
        v = np.array(v)
        trials, *cells = groups[key]
        assert trials == "3"
        for j, (cell, spec) in enumerate(zip(cells, ("d", ".3f", "d", ".2f", "d", ".2f"))):
            col = v[:, j]
            if spec == "d":
                mean = f"{np.mean(col):.2f}".rstrip("0").rstrip(".")  # 2.33, 8
                want = f"{mean} [{int(col.min())}, {int(col.max())}]"
            else:
                want = f"{np.mean(col):{spec}} [{col.min():{spec}}, {col.max():{spec}}]"
            assert cell == want, (key, j)


def test_no_loss_or_grad_rows_writes_nothing_and_no_config_gives_no_warmup_count(tmp_path):
    steps = np.arange(10, 110, 10)
    rows = [write_trial(tmp_path, {"optim.lr": 1e-3, "train.seed": 0}, steps, None, None)]
    write_results(tmp_path, rows)
    out = report.write_report(tmp_path)
    assert not (out / spikes.FILE).exists()
    assert "spikes" not in (out / "summary.md").read_text().lower()

    other = tmp_path / "no_config"
    rows = [write_trial(other, {"optim.lr": 1e-3, "train.seed": 0}, steps, np.full(10, 2.0), np.full(10, 0.3),
                        config=False)]
    write_results(other, rows)
    text = (report.write_report(other) / spikes.FILE).read_text()
    cells = text[text.index("## Per trial"):].splitlines()[4]  # the title, a blank line, the header, |---|
    _, _, _, _, warmup, loss_cell, after_cell, all_cell, *_ = [c.strip() for c in cells.split("|")[1:-1]]
    assert (warmup, after_cell) == ("–", "–")
    assert loss_cell.startswith("0 (1.000") and all_cell.startswith("0 (1.00")
