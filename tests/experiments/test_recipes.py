"""Every study's baseline follows its paper's recipe (`RECIPE` in the study module, rendered by hand into its
docstring and README's "Study recipes"), no arm leaks a stabiliser its own overrides do not set, and the `gpu`
presets run every point at 3 seeds while `tiny` stays single-seed (issue 10). Config values only: nothing is
built, so the test does not depend on the models."""

from __future__ import annotations

import importlib

import pytest

from experiments import base, sweeps
from launch import configs

STUDIES = ("small_scale_proxies", "sigma_reparam", "ls_attention", "mlra", "softplus_attention", "spike_no_more",
           "spam", "wsd_s", "weight_decay_fairness", "class_imbalance", "fp8_smooth_swiglu", "muon_lr",
           "output_logit_divergence", "proxy_ablations")
PRESETS = ("tiny", "gpu")


def trials(module, preset):
    cfg0 = module.get_config(preset)
    return [(o, configs.flatten(configs.apply_overrides(cfg0, o))) for o in module.get_sweep(preset)]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", STUDIES)
def test_baseline_follows_the_recipe_and_no_arm_leaks_a_stabiliser(name, preset):
    module = importlib.import_module(f"experiments.{name}")
    recipe = {k: v for k, v in module.RECIPE.items() if preset == "gpu" or k != "optim.warmup_steps"}
    rows = trials(module, preset)
    baselines = [flat for o, flat in rows if all(o.get(k, flat[k]) == v for k, v in module.BASELINE.items())]
    assert baselines, f"{name}:{preset} has no trial of its BASELINE {module.BASELINE}"
    for flat in baselines:
        assert {k: flat[k] for k in recipe} == recipe
    for overrides, flat in rows:  # what an arm changes, it changes in its own overrides
        assert {k: flat[k] for k in recipe if k not in overrides} == {k: v for k, v in recipe.items() if k not in overrides}


@pytest.mark.parametrize("name", STUDIES)
def test_gpu_presets_run_three_seeds_per_point_and_tiny_one(name):
    module = importlib.import_module(f"experiments.{name}")
    points: dict[str, list[int]] = {}
    for overrides in module.get_sweep("gpu"):
        point = repr(sorted((k, repr(v)) for k, v in overrides.items() if k != "train.seed"))
        points.setdefault(point, []).append(overrides["train.seed"])
    assert all(sorted(s) == [0, 1, 2] for s in points.values()) and sweeps.GPU_SEEDS == 3
    assert all("train.seed" not in o for o in module.get_sweep("tiny"))


def test_variant_study_base_has_none_of_the_proxy_stabilisers():
    for preset in PRESETS:
        c = base.variant_study(preset, gpu_size="19m")
        assert (c.loss.z_loss, c.optim.weight_decay, c.model.qk_norm) == (0.0, 0.0, False)
    ladder = base.get_config("19m")  # the Wortsman ladder itself keeps its paper's recipe
    assert (ladder.loss.z_loss, ladder.optim.weight_decay, ladder.model.qk_norm) == (1e-4, 1e-4, True)


@pytest.mark.parametrize("preset", PRESETS)
def test_spam_methods_use_their_papers_epsilon(preset):
    from experiments import spam

    eps = {(flat["optim.name"], flat["optim.clip"]): flat["optim.eps"] for _, flat in trials(spam, preset)}
    assert eps == {("adamw", 0.0): 1e-8, ("adamw", 1.0): 1e-8, ("spam", 0.0): 1e-6}


def test_seed_helpers():
    assert sweeps.seeds(3) == {"train.seed": [0, 1, 2]}
    assert sweeps.product(lr=[1e-3], **sweeps.seed_axis("gpu")) == [
        {"optim.lr": 1e-3, "train.seed": s} for s in range(3)]
    assert sweeps.seed_axis("tiny") == {}
