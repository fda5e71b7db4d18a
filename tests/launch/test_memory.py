"""launch/memory.py: the parameter count equals the model's, the estimate is within a stated factor of XLA's own
number for tiny CPU steps, it moves the right way with remat / members / diag_rows, and every study's `gpu`
preset fits one H200 (issue 10)."""

from __future__ import annotations

import glob
import importlib
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from experiments import base
from launch import configs, memory, mesh as mesh_lib, step as step_lib, sweep
from models import transformer

H200_BYTES = 139 * memory.GIB
REPO = Path(__file__).resolve().parents[2]


def tiny(**overrides):
    return configs.apply_overrides(base.get_config("tiny"), {"model.dtype": "float32", "data.batch_size": 8, **overrides})


@pytest.mark.parametrize("overrides", [
    {}, {"model.qk_norm": True}, {"model.attention": "mlra"},
    {"model.attention": "mlra", "model.mlra.shared_latent": True, "model.mlra.rank": 5},
    {"model.sigma_reparam": True, "model.sigma_reparam_head": True}, {"model.embed_scale": "layernorm"},
    {"model.tie_embeddings": True, "model.d_ff": 96, "model.head_dim": 16},
], ids=str)
def test_n_params_equals_the_model(overrides):
    m = tiny(**overrides).model
    abstract = nnx.eval_shape(lambda: transformer.Transformer(m, rngs=nnx.Rngs(0)))
    assert memory.n_params(m) == transformer.count_params(nnx.state(abstract, nnx.Param))


def xla_bytes(cfg) -> dict[str, int]:
    """temp + argument bytes of XLA's compiled train step (state donated) and eval step, on CPU."""
    prog = step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh, jax.devices()[:1]))
    state = jax.eval_shape(prog.init, jnp.int32(0))
    batch = jax.ShapeDtypeStruct((cfg.data.batch_size, cfg.data.seq_len + 1), jnp.int32)
    out = {}
    for name, fn, args, donate in (
        ("train_step", prog.train_step, (state, batch, step_lib.hparams_array(cfg)), (0,)),
        ("eval_step", prog.eval_step, (state, batch), ()),
    ):
        ma = jax.jit(fn, donate_argnums=donate).lower(*args).compile().memory_analysis()
        out[name] = ma.temp_size_in_bytes + ma.argument_size_in_bytes
    return out


# measured on CPU (jax 0.11.2): estimate / XLA = 0.95 / 2.0, 1.02 / 1.5, 1.5 / 2.0 (train / eval)
CALIBRATION = {
    "softmax": {"data.seq_len": 256, "data.batch_size": 4, "model.n_layers": 4},
    "lssar": {"model.attention": "softplus", "data.seq_len": 256, "data.batch_size": 4, "model.n_layers": 4},
    "lssar_blocked": {"model.attention": "softplus", "model.softplus.key_chunk": 64, "data.seq_len": 256,
                      "data.batch_size": 4, "model.n_layers": 4},
    "ls_remat": {"model.attention": "ls", "model.remat": True, "data.seq_len": 256, "data.batch_size": 4,
                 "model.n_layers": 4},
}


@pytest.mark.parametrize("name", sorted(CALIBRATION))
def test_estimate_is_within_a_factor_of_xla(name):
    """The stated accuracy: train step within [0.6, 2.5]x and eval step within [0.5, 2.5]x of XLA's bytes (the
    estimate leans high: it ignores fusion, which frees much of a forward's intermediates on CPU)."""
    cfg = tiny(**CALIBRATION[name])
    est, _ = memory.estimate(cfg, backend="cpu")
    xla = xla_bytes(cfg)
    assert 0.6 < est["train_step"] / xla["train_step"] < 2.5, (est, xla)
    assert 0.5 < est["eval_step"] / xla["eval_step"] < 2.5, (est, xla)


def test_estimate_moves_the_right_way():
    cfg = tiny(**{"data.seq_len": 256, "model.n_layers": 4})
    b, total = memory.estimate(cfg, backend="cpu")
    remat, _ = memory.estimate(configs.apply_overrides(cfg, {"model.remat": True}), backend="cpu")
    assert remat["train_activations"] < b["train_activations"] and remat["params"] == b["params"]
    b3, total3 = memory.estimate(cfg, members=3, backend="cpu")
    assert b3 == {k: 3 * v for k, v in b.items()} and total3 == 3 * total
    fused, _ = memory.estimate(configs.apply_overrides(cfg, {"model.dtype": "bfloat16"}), backend="gpu")
    explicit, _ = memory.estimate(configs.apply_overrides(cfg, {"model.dtype": "bfloat16"}), backend="cpu")
    assert fused["train_activations"] < explicit["train_activations"]  # cuDNN keeps no [B, H, T, T]
    long = configs.apply_overrides(cfg, {"model.remat": True, "model.dtype": "bfloat16", "data.seq_len": 1024})
    all_rows, _ = memory.estimate(long, backend="gpu")  # the explicit diagnostic forward dominates
    few_rows, _ = memory.estimate(configs.apply_overrides(long, {"train.diag_rows": 1}), backend="gpu")
    assert few_rows["diagnose"] < all_rows["diagnose"] and few_rows["train_step"] == all_rows["train_step"]
    sgd, _ = memory.estimate(configs.apply_overrides(cfg, {"optim.name": "sgd"}), backend="cpu")
    assert 2 * sgd["opt_state"] == b["opt_state"] == 2 * b["params"]
    line = memory.summary(cfg, members=3, backend="cpu")
    assert "3 member(s)" in line and "peak" in line and "\n" not in line


@pytest.mark.parametrize("field", ["diag_rows", "max_members"])
def test_negative_memory_fields_are_config_errors(field):
    configs.validate(tiny(**{f"train.{field}": 2}), n_devices=1)
    with pytest.raises(configs.ConfigError, match=f"train.{field}=-1"):
        configs.validate(tiny(**{f"train.{field}": -1}), n_devices=1)


def gpu_studies() -> list[str]:
    names = []
    for path in sorted(glob.glob(str(REPO / "experiments" / "*.py"))):
        module = importlib.import_module(f"experiments.{Path(path).stem}")
        if hasattr(module, "get_sweep"):
            try:
                module.get_config("gpu")
            except ValueError:  # no gpu preset
                continue
            names.append(Path(path).stem)
    return names


def test_every_study_with_a_gpu_preset_is_checked():
    assert set(gpu_studies()) >= {"ls_attention", "softplus_attention", "mlra", "sigma_reparam", "spike_no_more",
                                  "small_scale_proxies", "spam", "wsd_s", "weight_decay_fairness",
                                  "class_imbalance"}


@pytest.mark.parametrize("name", gpu_studies())
def test_gpu_preset_fits_one_h200(name):
    """Every trial of get_sweep("gpu"), times the members of its batched group (capped by train.max_members)."""
    module = importlib.import_module(f"experiments.{name}")
    cfg0 = module.get_config("gpu")
    groups: dict[str, list] = {}
    for overrides in module.get_sweep("gpu"):
        cfg = configs.apply_overrides(cfg0, overrides)
        groups.setdefault(sweep.program_key(cfg), []).append(cfg)  # a batched group's members
    worst = 0
    for group in groups.values():
        for cfg in group:
            members = min(len(group), cfg.train.max_members or len(group))
            _, total = memory.estimate(cfg, members=members, backend="gpu")
            worst = max(worst, total)
    assert worst < H200_BYTES, f"{name}: {worst / memory.GIB:.1f} GiB"


def test_fused_and_blocked_lssar_hold_no_txt_weights():
    """model.softplus.impl=pallas and key_chunk keep row statistics, not [B, H, T, T] float32 weights per layer."""
    cfg = tiny(**CALIBRATION["lssar"])
    plain, _ = memory.estimate(cfg, backend="gpu")
    B, T, H, L = cfg.data.batch_size, cfg.data.seq_len, cfg.model.n_heads, cfg.model.n_layers
    for override in ({"model.softplus.impl": "pallas"}, {"model.softplus.key_chunk": 64}):
        fused, _ = memory.estimate(configs.apply_overrides(cfg, override), backend="gpu")
        assert plain["train_activations"] - fused["train_activations"] >= L * B * H * T * T * 4, override
