"""The `gpu_slice` presets of the five variant studies: what one H200 session runs of each paper reproduction.

Each slice validates as a sweep (launch.sweep's own `make_trials`, the check `--dry_run` makes, with the corpus
flags of its command), stays within the corpus rule (<= 1.5 epochs of code11's training split per trial), runs
>= 3 seeds on every point, keeps the `gpu` preset's recipe (`RECIPE`; the warmup scaled with the steps, 10 %
as at gpu) and differs from the `gpu` preset's config only in shape, length, steps and cadence, and logs the
diagnostics its page plots at >= 10 points a run. Config values and abstract shapes only: nothing is trained."""

from __future__ import annotations

import importlib

import pytest

from experiments import sweeps
from launch import configs, sweep
from models import probes

CODE11_TRAIN_TOKENS = 45_709_465  # docs/reproductions/README.md: ~95 % of code11's 48.11M tokens, by document
STUDIES = ("sigma_reparam", "ls_attention", "mlra", "softplus_attention", "spike_no_more")
COMMAND = {"data.source": "prepared", "data.prepared_dir": "/tmp/code11"}  # the pages' gpu_slice command
# what a slice may change against the gpu preset: the shape, the length and batch, the steps and the cadence
SCALED = {
    "model.d_model", "model.n_layers", "model.n_heads", "model.remat", "model.softplus.query_chunk",
    "model.softplus.key_chunk", "data.seq_len", "data.batch_size", "optim.warmup_steps", "train.steps",
    "train.log_every", "train.eval_every", "train.eval_batches", "train.diag_every", "train.diag_rows",
    "train.ckpt_every", "train.max_members",
}
# diagnostics each page's figures need, for the arms that have them
NEEDED = {
    "sigma_reparam": ("attn_entropy/layer_0", "attn_max_logit/layer_0"),
    "ls_attention": ("attn_max_logit/layer_0",),
    "mlra": ("tev_mu", "tev_sigma"),
    "softplus_attention": ("attn_max_logit/layer_0",),
    "spike_no_more": ("tev_mu",),
}


def rows(module, preset="gpu_slice"):
    cfg0 = module.get_config(preset)
    return [(o, configs.flatten(configs.apply_overrides(cfg0, o))) for o in module.get_sweep(preset)]


@pytest.mark.parametrize("name", STUDIES)
def test_slice_validates_as_its_command_runs_it(name):
    module = importlib.import_module(f"experiments.{name}")
    assert "gpu_slice" in module.PRESETS
    base = configs.apply_overrides(module.get_config("gpu_slice"), COMMAND)
    trials = sweep.make_trials(base, module.get_sweep("gpu_slice"))
    groups = sweep.group_trials(trials)
    assert len(trials) == len(module.get_sweep("gpu_slice")) and len(groups) <= 4


@pytest.mark.parametrize("name", STUDIES)
def test_slice_sees_at_most_one_and_a_half_epochs_of_code11(name):
    module = importlib.import_module(f"experiments.{name}")
    for _, f in rows(module):
        assert f["train.steps"] * f["data.batch_size"] * f["data.seq_len"] <= 1.5 * CODE11_TRAIN_TOKENS


@pytest.mark.parametrize("name", STUDIES)
def test_slice_runs_three_seeds_on_every_point(name):
    module = importlib.import_module(f"experiments.{name}")
    points: dict[str, list[int]] = {}
    for overrides in module.get_sweep("gpu_slice"):
        point = repr(sorted((k, repr(v)) for k, v in overrides.items() if k != "train.seed"))
        points.setdefault(point, []).append(overrides["train.seed"])
    assert points and all(sorted(s) == list(range(sweeps.GPU_SEEDS)) for s in points.values())
    assert sweeps.GPU_SEEDS >= 3


@pytest.mark.parametrize("name", STUDIES)
def test_slice_keeps_the_gpu_recipe(name):
    module = importlib.import_module(f"experiments.{name}")
    slice_rows = rows(module)
    recipe = {k: v for k, v in module.RECIPE.items() if k != "optim.warmup_steps"}
    baselines = [f for o, f in slice_rows if all(o.get(k, f[k]) == v for k, v in module.BASELINE.items())]
    assert baselines, f"{name}:gpu_slice has no trial of its BASELINE {module.BASELINE}"
    for overrides, f in slice_rows:
        kept = {k: v for k, v in recipe.items() if k not in overrides}  # what an arm changes, it names
        assert {k: f[k] for k in kept} == kept
        gpu = rows(module, "gpu")[0][1]  # the warmup keeps the gpu preset's fraction of the steps (1000 of 10k)
        assert f["optim.warmup_steps"] * gpu["train.steps"] == gpu["optim.warmup_steps"] * f["train.steps"]
    for f in baselines:
        assert {k: f[k] for k in recipe} == recipe


@pytest.mark.parametrize("name", STUDIES)
def test_slice_differs_from_gpu_only_in_scale(name):
    module = importlib.import_module(f"experiments.{name}")
    gpu = configs.flatten(module.get_config("gpu"))
    cut = configs.flatten(module.get_config("gpu_slice"))
    assert {k for k in gpu if gpu[k] != cut[k]} <= SCALED
    swept = ("optim.lr", "train.seed", "model.n_layers")  # mlra's depths are scaled with the width

    def arms(preset):
        return {repr(sorted((k, repr(v)) for k, v in o.items() if k not in swept)) for o in module.get_sweep(preset)}

    assert arms("gpu_slice") <= arms("gpu")  # fewer arms and LRs, never new ones
    assert {o["optim.lr"] for o in module.get_sweep("gpu_slice")} <= set(module.LRS["gpu"])


@pytest.mark.parametrize("name", STUDIES)
def test_slice_logs_its_pages_diagnostics_at_ten_points_or_more(name):
    module = importlib.import_module(f"experiments.{name}")
    cfg0 = module.get_config("gpu_slice")
    assert cfg0.train.diag_every > 0 and cfg0.train.steps // cfg0.train.diag_every >= 10
    assert cfg0.train.steps // cfg0.train.eval_every >= 4
    for overrides in module.get_sweep("gpu_slice"):
        cfg = configs.apply_overrides(cfg0, overrides)
        names = set(probes.diagnostic_names(cfg.model))
        assert set(NEEDED[name]) <= names, (overrides, set(NEEDED[name]) - names)
    if name == "ls_attention":
        ls = configs.apply_overrides(cfg0, {"model.attention": "ls"})
        groups = {"attn_max_logit_global/layer_0", "attn_max_logit_local/layer_0"}
        assert groups <= set(probes.diagnostic_names(ls.model))
    if name == "sigma_reparam":
        assert any(n.startswith("gamma_over_sigma/") for n in probes.diagnostic_names(cfg0.model))


def test_softplus_slice_trains_short_with_blocked_keys_and_evaluates_to_eight_times():
    from experiments import softplus_attention as sp

    cfg = sp.get_config("gpu_slice")
    assert cfg.model.softplus.key_chunk > 0 and cfg.data.seq_len == 512
    assert sp.SLICE_EVAL_LENGTHS == tuple(cfg.data.seq_len * k for k in (1, 2, 4, 8))
    assert {f["model.softplus.power"] for o, f in rows(sp) if f["model.attention"] == "softplus"} == {15}


def test_mlra_slice_spans_a_fourfold_depth():
    from experiments import mlra

    depths = {f["model.n_layers"] for _, f in rows(mlra)}
    assert max(depths) >= 4 * min(depths)


@pytest.mark.parametrize("name", STUDIES)
def test_slice_programs_fit_one_h200(name):
    """launch/memory.py's estimate of every program (members capped by train.max_members), cuDNN attention."""
    from launch import memory

    module = importlib.import_module(f"experiments.{name}")
    for group in sweep.group_trials(sweep.make_trials(module.get_config("gpu_slice"), module.get_sweep("gpu_slice"))):
        _, total = memory.estimate(group[0].cfg, members=len(group), backend="gpu")
        assert total < 120 * memory.GIB, f"{name}: {total / memory.GIB:.1f} GiB"
