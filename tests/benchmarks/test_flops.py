"""launch/flops.py: the FLOP count and MFU against hand computations, and the local-window attention rule."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import throughput
from launch import flops
from experiments import base
from launch import mesh as mesh_lib, step as step_lib


def test_mfu_of_the_151m_ladder_config_matches_a_hand_computation_with_both_peaks():
    d, L, H, Dh, T, V = 1024, 12, 16, 64, 512, 32101
    n_matmul = L * (4 * d * H * Dh + 2 * d * 4 * d) + V * d  # Wq Wk Wv Wo, W1 W2, untied head
    # hand: attention pairs per causal head = sum_{i=1..T} i = T(T+1)/2, i.e. T_eff = 256.5 keys per query
    by_hand = 6 * n_matmul + 12 * Dh * 256.5 * H * L
    got = flops.model_flops_per_token(n_matmul, n_layers=L, head_dim=Dh, seq_len=T, windows=[None] * H)
    assert got == pytest.approx(by_hand, rel=1e-12)
    tokens_per_s = 400e3
    assert flops.mfu(tokens_per_s, got, flops.DATASHEET_PEAK_TFLOPS) == pytest.approx(
        tokens_per_s * by_hand / 989e12, rel=1e-12
    )
    assert flops.mfu(tokens_per_s, got, flops.MEASURED_PEAK_TFLOPS) == pytest.approx(
        tokens_per_s * by_hand / 790e12, rel=1e-12
    )
    assert flops.mfu(tokens_per_s, got, 989.0, n_devices=2) == pytest.approx(tokens_per_s * by_hand / 1978e12)


def test_mean_attended_keys_counts_each_query_row_of_the_mask():
    T = 9
    for w in (None, 1, 3, 9, 50):
        rows = [min(i + 1, T if w is None else w) for i in range(T)]  # keys query i attends to
        assert flops.mean_attended_keys(T, w) == pytest.approx(sum(rows) / T)


def test_local_heads_cost_attention_flops_in_proportion_to_their_window():
    cfg = base.get_config("tiny").model
    cfg.n_heads, T, Dh, L = 4, 512, 32, 2
    full = flops.attention_flops_per_token(n_layers=L, head_dim=Dh, seq_len=T, windows=flops.head_windows(cfg))
    cfg.attention, cfg.ls.n_global, cfg.ls.window = "ls", 1, 64
    windows = flops.head_windows(cfg)
    assert windows == [None, 64, 64, 64]
    ls = flops.attention_flops_per_token(n_layers=L, head_dim=Dh, seq_len=T, windows=windows)
    per_head_full = full / (4 * L)
    t_eff_local = (64 * 65 / 2 + (T - 64) * 64) / T  # 60.06 keys, vs 256.5 for a full causal head
    assert ls == pytest.approx(L * per_head_full * (1 + 3 * t_eff_local / 256.5))
    cfg.ls.window = 10_000  # a window longer than T is a full causal head
    assert flops.attention_flops_per_token(n_layers=L, head_dim=Dh, seq_len=T, windows=flops.head_windows(cfg)) == (
        pytest.approx(full)
    )


def test_throughput_counts_kernels_and_the_head_but_not_the_embedding_or_norm_scales():
    cfg = base.get_config("tiny")  # d 64, L 2, V 512, untied head, qk-norm off
    prog = step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh))
    params = jax.eval_shape(prog.init, jnp.int32(0))["params"]
    d, L, V = cfg.model.d_model, cfg.model.n_layers, cfg.model.vocab_size
    assert throughput.matmul_params(cfg, params) == L * 12 * d * d + V * d
    head_dim = d // cfg.model.n_heads
    expected = 6 * (L * 12 * d * d + V * d) + 12 * L * cfg.model.n_heads * head_dim * (cfg.data.seq_len + 1) / 2
    assert throughput.model_flops_per_token(cfg, L * 12 * d * d + V * d) == pytest.approx(expected)
