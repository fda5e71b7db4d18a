"""benchmarks/side_by_side.py: rows, ratios and failures (no torch needed), and our side end to end on CPU."""

import json
import sys

import pytest

from benchmarks import results_table, side_by_side
from benchmarks.peers import torch_gpt


def test_run_side_returns_the_json_row_or_an_error_row_with_the_tail():
    ok = side_by_side.run_side([sys.executable, "-c", "print('log'); print('{\"tokens_per_second\": 5.0}')"], "x", 60)
    assert ok["tokens_per_second"] == 5.0 and ok["wall_seconds"] > 0
    bad = side_by_side.run_side([sys.executable, "-c", "import sys; print('RESOURCE_EXHAUSTED: 9 GiB'); sys.exit(3)"],
                                "ours/302m", 60)
    assert bad["label"] == "ours/302m" and bad["error"] == "exit status 3" and bad["oom"] is True
    assert "RESOURCE_EXHAUSTED" in bad["tail"]
    slow = side_by_side.run_side([sys.executable, "-c", "import time; time.sleep(30)"], "torch/9.4m", 1)
    assert slow["error"].startswith("timed out") and slow["oom"] is False


def test_ratio_is_ours_over_torch_and_null_when_torch_ran_out_of_memory():
    r = side_by_side.ratio_row("42m", "", {"tokens_per_second": 800.0}, {"tokens_per_second": 1000.0})
    assert r["ratio"] == pytest.approx(1.25) and r["label"] == "ratio/42m"
    oom = side_by_side.ratio_row("302m", "", {"oom": True, "label": "torch/302m"}, {"tokens_per_second": 1000.0})
    assert oom["ratio"] is None and oom["torch_oom"] is True


def test_side_by_side_table_has_one_line_per_size_with_oom_and_ratio():
    rows = [
        dict(label="torch/42m", side="torch", tokens_per_second=8e5, mfu_datasheet=0.4, peak_memory_gib=40.0),
        dict(label="ours/42m", side="ours", tokens_per_second=1e6, mfu=0.5, peak_memory_gib=50.0),
        side_by_side.ratio_row("42m", "", {"tokens_per_second": 8e5}, {"tokens_per_second": 1e6}),
        dict(label="torch/302m", side="torch", oom=True),
        dict(label="ours/302m", side="ours", tokens_per_second=2e5, mfu=0.6),
        side_by_side.ratio_row("302m", "", {"oom": True}, {"tokens_per_second": 2e5}),
    ]
    lines = results_table.render_side_by_side(rows).splitlines()
    assert lines[2] == "| 42m | 800k (40.0%, 40 GiB) | 1,000k (50.0%, 50 GiB) | 1.25x |"
    assert lines[3] == "| 302m | OOM | 200k (60.0%) | – |"


def test_torch_peer_shapes_come_from_the_ladder_and_its_oom_row_has_no_timing():
    args = torch_gpt.parse_args(["--size=151m"])
    s = torch_gpt.shapes(args)
    assert (s["d_model"], s["n_layers"], s["n_heads"], s["head_dim"], s["batch"], s["seq"], s["vocab"]) == (
        1024, 12, 16, 64, 256, 512, 32101)
    n_params, matmul = torch_gpt.param_counts(s)
    assert matmul == 12 * 12 * 1024**2 + 32101 * 1024
    row = torch_gpt.result_row(args, s, device="cuda", n_params=n_params, matmul_params=matmul, step_s=None,
                               wall_s=None, peak_memory_gib=None, extra={})
    assert row["oom"] is True and "tokens_per_second" not in row and row["label"] == "torch/151m"
    timed = torch_gpt.result_row(args, s, device="cuda", n_params=n_params, matmul_params=matmul,
                                 step_s=[0.3, 0.5, 0.4], wall_s=1.2, peak_memory_gib=80.0, extra={})
    assert timed["step_ms"] == pytest.approx(400.0)
    assert timed["tokens_per_second"] == pytest.approx(3 * 256 * 512 / 1.2)
    assert timed["mfu_datasheet"] == pytest.approx(timed["tokens_per_second"] * timed["flops_per_token"] / 989e12)
    assert timed["mfu_measured"] == pytest.approx(timed["tokens_per_second"] * timed["flops_per_token"] / 790e12)
    tiny = torch_gpt.shapes(torch_gpt.parse_args(["--tiny"]))
    assert (tiny["d_model"], tiny["n_layers"], tiny["seq"], tiny["batch"], tiny["vocab"]) == (64, 2, 64, 4, 512)


def test_torch_peer_counts_the_same_matmul_parameters_and_flops_as_ours():
    import jax
    import jax.numpy as jnp

    from benchmarks import throughput
    from experiments import base
    from launch import mesh as mesh_lib, step as step_lib

    cfg = base.get_config("tiny")
    cfg.model.update(qk_norm=True, head_dim=32)
    params = jax.eval_shape(step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh)).init, jnp.int32(0))["params"]
    s = torch_gpt.shapes(torch_gpt.parse_args(["--tiny"]))
    assert (s["d_model"], s["n_heads"], s["head_dim"], s["vocab"]) == (64, 2, 32, cfg.model.vocab_size)
    n_params, matmul = torch_gpt.param_counts(s)
    from models import transformer

    assert n_params == transformer.count_params(params)
    assert matmul == throughput.matmul_params(cfg, params)
    assert torch_gpt.flops_per_token(s, matmul) == throughput.model_flops_per_token(cfg, matmul)


def test_torch_peer_runs_a_tiny_model_on_cpu():
    pytest.importorskip("torch")
    row = torch_gpt.main(["--tiny", "--device=cpu", "--no_compile", "--steps=2", "--warmup=1"])
    assert row["tokens_per_second"] > 0 and row["oom"] is False


def test_our_side_runs_end_to_end_on_cpu(tmp_path):
    out = tmp_path / "sbs.jsonl"
    side_by_side.main([f"--out={out}", "--sizes=tiny", "--batch=4", "--seq=32", "--vocab=512", "--steps=2",
                       "--warmup=1", "--skip_torch", "--timeout=300"])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["torch/tiny", "ours/tiny", "ratio/tiny"]
    ours = rows[1]
    assert "error" not in ours, ours.get("tail")
    assert ours["batch_size"] == 4 and ours["seq_len"] == 32 and ours["tokens_per_second"] > 0
    assert ours["mfu_measured_peak"] == pytest.approx(ours["mfu"] * 989 / 790)
    assert rows[2]["ratio"] is None
