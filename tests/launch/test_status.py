"""launch.sweep's live progress: DIR/status.json while the sweep runs (read from inside it) and at its end, with a
diverging trial (LR 30, the early-stopping rule on); the Recorder's counts and ETA; a failing trial; the progress
display of one run (a bar on a terminal, plain lines otherwise)."""

from __future__ import annotations

import json

import pytest

from experiments import base
from launch import configs, loop, progress, sweep

STUDY = {
    "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.vocab_size": 128, "model.dtype": "float32",
    "data.source": "synthetic", "data.synthetic_tokens": 20_000, "data.seq_len": 32, "data.batch_size": 4,
    "optim.warmup_steps": 2, "train.steps": 10, "train.log_every": 2, "train.eval_every": 10, "train.eval_batches": 1,
    "train.ckpt_every": 0, "train.progress": False, "train.divergence_margin": 1.0,
}
HUGE_LR = 30.0
SWEEP = [{"optim.lr": HUGE_LR}, {"optim.lr": 1e-3}, {"optim.lr": 3e-3}]


def read_status(workdir):
    return json.loads((workdir / "status.json").read_text())


def test_local_sweep_reports_a_diverged_trial_while_running_and_at_the_end(tmp_path, monkeypatch):
    seen = []
    train = loop.train

    def spy(cfg, workdir, **kw):  # what status.json says as each trial starts
        seen.append(read_status(tmp_path))
        return train(cfg, workdir, **kw)

    monkeypatch.setattr(sweep.loop, "train", spy)
    sweep.run_sweep(configs.apply_overrides(base.get_config("tiny"), STUDY), SWEEP, tmp_path, "local")
    first, second, third = seen
    assert (first["done"], first["running"], first["remaining"], first["eta_seconds"]) == (0, ["lr=30.0"], 3, None)
    assert second["state"] == "running" and second["diverged"] == 1 and second["done"] == 1
    assert second["running"] == ["lr=0.001"] and second["remaining"] == 2 and second["eta_seconds"] > 0
    assert third["done"] == 2 and third["diverged"] == 1 and third["remaining"] == 1
    end = read_status(tmp_path)
    assert (end["state"], end["done"], end["diverged"], end["running"], end["failed"], end["remaining"]) == (
        "finished", 3, 1, [], [], 0)
    assert end["eta_seconds"] == 0
    # a rerun finds everything finished: the counts come from results.jsonl
    sweep.run_sweep(configs.apply_overrides(base.get_config("tiny"), STUDY), SWEEP, tmp_path, "local")
    again = read_status(tmp_path)
    assert (again["state"], again["done"], again["diverged"], again["remaining"]) == ("finished", 3, 1, 0)


def test_batched_group_reports_the_diverged_member_as_soon_as_it_is_frozen(tmp_path, monkeypatch):
    seen = []
    train_group = loop.train_group

    def spy(members, rt, *, on_done, **kw):
        def done(i, summary):
            on_done(i, summary)
            seen.append((summary["diverged"], read_status(tmp_path)))
        return train_group(members, rt, on_done=done, **kw)

    monkeypatch.setattr(sweep.loop, "train_group", spy)
    sweep.run_sweep(configs.apply_overrides(base.get_config("tiny"), STUDY), SWEEP, tmp_path, "batched")
    diverged, status = seen[0]  # the huge LR diverges first, while its group-mates still train
    assert diverged and status["diverged"] == 1 and status["done"] == 1
    assert sorted(status["running"]) == ["lr=0.001", "lr=0.003"] and status["remaining"] == 2
    end = read_status(tmp_path)
    assert (end["state"], end["done"], end["diverged"], end["running"], end["remaining"]) == ("finished", 3, 1, [], 0)


def test_a_failing_trial_is_reported_failed(tmp_path, monkeypatch):
    def boom(cfg, workdir, **kw):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(sweep.loop, "train", boom)
    with pytest.raises(RuntimeError, match="injected fault"):
        sweep.run_sweep(configs.apply_overrides(base.get_config("tiny"), STUDY), SWEEP[:1], tmp_path, "local")
    status = read_status(tmp_path)
    assert (status["state"], status["failed"], status["running"], status["done"]) == ("failed", ["lr=30.0"], [], 0)


def test_recorder_eta_is_time_per_finished_trial_times_trials_left(tmp_path, monkeypatch):
    clock = iter([100.0, 130.0, 130.0])
    monkeypatch.setattr(sweep.time, "time", lambda: next(clock))
    rec = sweep.Recorder(tmp_path / "results.jsonl", 4, 0, None)  # t0 = 100
    rec.n_done = rec.n_done_here = 1  # one trial finished in 30 s, three left
    assert rec.status("running")["eta_seconds"] == pytest.approx(90.0)


def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one(capsys, caplog):
    import io
    import logging

    with caplog.at_level(logging.INFO):
        p = progress.Progress(total=20, start=0, tty=False)
        p.update(10, loss=3.25, tokens_per_second=12_345.0, mfu=None, eta=5.0)
        p.close()
    assert "step      10/20 | loss   3.2500" in caplog.text and "mfu –" in caplog.text
    stream = io.StringIO()
    p = progress.Progress(total=20, start=0, tty=True, file=stream)
    p.update(10, loss=3.25, tokens_per_second=12_345.0, mfu=0.125, eta=5.0)
    p.close()
    text = stream.getvalue()
    assert "10/20" in text and "loss=3.2500" in text and "mfu=12.5%" in text and "\r" in text


def test_mfu_uses_the_flops_count_of_the_benchmarks_and_the_device_peak():
    assert progress.mfu(1000.0, flops_per_token=6e6, n_devices=2, peak_flops=1e12) == pytest.approx(6e9 / 2e12)
    assert progress.mfu(1000.0, flops_per_token=6e6, n_devices=1, peak_flops=None) is None
    # the count is launch/flops.py's (matmul parameters, not the embedding table, plus attention), from the shapes
    from experiments import base
    from launch import plan
    cfg = base.get_config("tiny")
    d, L, V, T, f = cfg.model.d_model, cfg.model.n_layers, cfg.model.vocab_size, cfg.data.seq_len, cfg.model.d_ff or 4 * cfg.model.d_model
    n_matmul = L * (4 * d * d + 2 * d * f) + d * V  # q, k, v, o; fc1, fc2; the untied head
    attention = L * cfg.model.n_heads * 12 * (d // cfg.model.n_heads) * (T + 1) / 2  # causal: (T + 1) / 2 keys
    assert plan.config_flops_per_token(cfg) == pytest.approx(6 * n_matmul + attention)


def test_failed_trials_are_neither_done_nor_remaining_and_the_sweep_goes_on(tmp_path):
    from types import SimpleNamespace

    rec = sweep.Recorder(tmp_path / "results.jsonl", 4, 1, tmp_path / "status.json", 0, ["a"])  # a: a failed row
    rec.start([SimpleNamespace(id="b"), SimpleNamespace(id="c")])
    rec.fail(["b"])  # an executor gave up on b (e.g. after its retries); c still runs
    s = read_status(tmp_path)
    assert (s["state"], s["failed"], s["running"], s["done"], s["remaining"]) == ("running", ["a", "b"], ["c"], 1, 1)


def test_one_duration_format():
    from launch.progress import duration
    assert [duration(s) for s in (0.4, 45, 200, 3599.6, 3720, 2.5 * 86400)] == ["0s", "45s", "3m20s", "1h00m", "1h02m",
                                                                                 "2.5d"]
