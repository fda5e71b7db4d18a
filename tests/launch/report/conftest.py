"""Two tiny CPU sweeps that differ in one base-config field (model.qk_norm off vs on), shared by the comparison
and browser tests: 2 LRs x 2 seeds each, one LR diverging in one of them is not needed (test_status covers it)."""

from __future__ import annotations

import pytest

# seconds per sweep on CPU: one batched program of 4 members, 10 steps
STUDY = {
    "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.vocab_size": 128, "model.dtype": "float32",
    "data.source": "synthetic", "data.synthetic_tokens": 20_000, "data.seq_len": 32, "data.batch_size": 4,
    "optim.warmup_steps": 2, "train.steps": 10, "train.log_every": 5, "train.eval_every": 10, "train.eval_batches": 1,
    "train.ckpt_every": 0, "train.progress": False,
}
GRID = [{"optim.lr": lr, "train.seed": s} for lr in (1e-3, 1e-2) for s in (0, 1)]


@pytest.fixture(scope="session")
def two_sweeps(tmp_path_factory):
    """(baseline dir, qk_norm=True dir): the same LR x seed grid over two base configs."""
    from experiments import base
    from launch import configs, sweep

    root = tmp_path_factory.mktemp("sweeps")
    dirs = []
    for name, qk in (("baseline", False), ("qknorm", True)):
        cfg = configs.apply_overrides(base.get_config("tiny"), {**STUDY, "model.qk_norm": qk})
        sweep.run_sweep(cfg, GRID, root / name, "batched")
        dirs.append(root / name)
    return tuple(dirs)
