"""The `gpu_slice` presets of the five variant studies: what one H200 session runs of each paper reproduction.

Each slice validates as a sweep (launch.sweep's own `make_trials`, the check `--dry_run` makes, with the corpus
flags of its command), stays within the corpus rule (<= 1.5 epochs of code11's training split per trial), runs
>= 3 seeds on every point, keeps the `gpu` preset's recipe (`RECIPE`; the warmup scaled with the steps, 10 %
as at gpu) and differs from the `gpu` preset's config only in shape, length, steps and cadence, and logs the
diagnostics its page plots at >= 10 points a run.

The `gpu_<label>` slices of the studies whose `gpu` preset fits code11 but not one device call (spam, wsd_s,
weight_decay_fairness, class_imbalance; proxy_ablations' arms; small_scale_proxies' size x qk-layernorm arms): the
slices partition the `gpu` sweep (same trials and ids, none lost or twice), share its base config (so their rows go
into one workdir) and stay within the corpus rule; the first four's slices each fit one benchmarks/h200_queue.sh call by the estimate
their docstrings show (small_scale_proxies': one call at 2.4m, two at 9.4m and 19m). Config values and abstract
shapes only: nothing is trained.

mlra's and spike_no_more's `gpu_slice_low` (lower LRs of the gpu grid) share gpu_slice's config, resume its
committed directory (experiments/results/sweeps/<study>_code11), add trial ids of their own, train gpu_slice's
programs and fit one queue call by their docstrings' estimate; ls_attention's `gpu_slice_fill` (the gpu grid's LRs
on either side of gpu_slice's best) likewise, in programs of its own size."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from experiments import base as base_lib
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
    "model.norm_impl",  # the norm kernels (same math): mlra's and spike_no_more's slices keep their rows' xla
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


# ---- gpu_<label> slices of a gpu sweep (experiments/sweeps.py slice_presets / slice_trials) --------------------------

SLICED = ("spam", "wsd_s", "weight_decay_fairness", "class_imbalance", "proxy_ablations", "small_scale_proxies")
MAX_EPOCHS = {"spam": 1.08, "wsd_s": 1.43, "weight_decay_fairness": 1.43, "class_imbalance": 1.08,
              "proxy_ablations": 0.72,
              "small_scale_proxies": 0.72}  # their pages
# slices cut between programs: the very programs gpu trains
UNFRAGMENTED = ("spam", "wsd_s", "class_imbalance", "proxy_ablations", "small_scale_proxies")
# the docstrings' estimates (H200, bf16, session 12): the 9.4m step at 64 x 512 is 16.5 ms for one member, a member-
# step in a batched group 1.05x (scaled by the tokens of a member-step), ~55 s a program for compilation, evals and
# checkpoints, +15 % (spike_no_more's gpu_slice took 474 s against 402 s); minutes with the margin, per slice
STEP_S, MEMBER, PROGRAM_S, OVERRUN = 16.5e-3, 1.05, 55.0, 1.15
QUEUE_BUDGET_S = 560  # BUDGET of one benchmarks/h200_queue.sh call (a device call is at most 10 minutes)
MINUTES = {
    "spam": {"gpu_adam": 8.1, "gpu_adam_clip": 8.1, "gpu_spam": 8.1},
    "wsd_s": {"gpu_wsd_s": 3.0, "gpu_cyclic_cosine": 3.0, "gpu_wsd": 6.6, "gpu_cosine": 6.6},
    "weight_decay_fairness": {"gpu_seed0": 3.7, "gpu_seed1": 3.7, "gpu_seed2": 3.7},
    "class_imbalance": {"gpu_adamw": 5.5, "gpu_sgd": 5.5},
}


def programs(module, preset):
    trials = sweep.make_trials(configs.apply_overrides(module.get_config(preset), COMMAND), module.get_sweep(preset))
    return sweep.group_trials(trials)


def estimate_s(groups) -> float:
    total = 0.0
    for group in groups:
        cfg = group[0].cfg
        assert (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == base_lib.LADDER["9.4m"]
        step = STEP_S * MEMBER * cfg.data.batch_size * cfg.data.seq_len / (64 * 512)
        total += len(group) * cfg.train.steps * step + PROGRAM_S
    return OVERRUN * total


@pytest.mark.parametrize("name", SLICED)
def test_gpu_slices_partition_the_gpu_sweep(name):
    module = importlib.import_module(f"experiments.{name}")
    assert len(module.SLICES) >= 2 and set(module.SLICES) <= set(module.PRESETS)
    whole = {sweep.trial_id(o): o for o in module.get_sweep("gpu")}
    parts = [(sweep.trial_id(o), o) for s in module.SLICES for o in module.get_sweep(s)]
    assert len(whole) == len(module.get_sweep("gpu"))  # ids unique in the gpu sweep
    assert sorted(i for i, _ in parts) == sorted(whole)  # no trial lost or duplicated, the same ids
    assert all(whole[i] == o for i, o in parts)  # and the same overrides


@pytest.mark.parametrize("name", SLICED)
def test_gpu_slices_share_the_gpu_config_and_one_workdir(name, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    gpu = configs.flatten(module.get_config("gpu"))
    for s in module.SLICES:
        assert configs.flatten(module.get_config(s)) == gpu, s
        configs.claim_workdir(configs.apply_overrides(module.get_config(s), COMMAND), tmp_path)  # launch.sweep's check


@pytest.mark.parametrize("name", SLICED)
def test_gpu_slices_see_at_most_one_and_a_half_epochs_of_code11(name):
    module = importlib.import_module(f"experiments.{name}")
    epochs = []
    for s in module.SLICES:
        for group in programs(module, s):
            for t in group:
                f = configs.flatten(t.cfg)
                assert f["data.source"] == "prepared"
                epochs.append(f["train.steps"] * f["data.batch_size"] * f["data.seq_len"] / CODE11_TRAIN_TOKENS)
    assert max(epochs) <= 1.5 and round(max(epochs), 2) == MAX_EPOCHS[name]


@pytest.mark.parametrize("name", SLICED)
def test_gpu_slices_train_the_gpu_programs_or_parts_of_them(name):
    module = importlib.import_module(f"experiments.{name}")
    gpu = {frozenset(t.id for t in g) for g in programs(module, "gpu")}
    cut = [frozenset(t.id for t in g) for s in module.SLICES for g in programs(module, s)]
    assert all(any(c <= g for g in gpu) for c in cut)
    if name in UNFRAGMENTED:
        assert set(cut) == gpu and len(cut) == len(gpu)


@pytest.mark.parametrize("name", sorted(MINUTES))
def test_each_gpu_slice_fits_one_queue_call_by_its_docstrings_estimate(name):
    module = importlib.import_module(f"experiments.{name}")
    assert set(MINUTES[name]) == set(module.SLICES)
    for s in module.SLICES:
        seconds = estimate_s(programs(module, s))
        assert seconds <= QUEUE_BUDGET_S and abs(seconds / 60 - MINUTES[name][s]) < 0.06, (s, seconds)
    assert estimate_s(programs(module, "gpu")) > 9 * 60  # why the slices exist: over 9 minutes of a 10-minute call


@pytest.mark.parametrize("name", sorted(MINUTES))
def test_gpu_slice_programs_fit_one_h200(name):
    from launch import memory

    module = importlib.import_module(f"experiments.{name}")
    for s in module.SLICES:
        for group in programs(module, s):
            _, total = memory.estimate(group[0].cfg, members=len(group), backend="gpu")
            assert total < 120 * memory.GIB, f"{name}:{s}: {total / memory.GIB:.1f} GiB"


# ---- gpu_slice_low: mlra's and spike_no_more's lower-LR slice, into gpu_slice's (committed) directory ----------------

LOW = ("mlra", "spike_no_more")
# the docstrings' seconds, the +15 % included: the programs of gpu_slice (session 12 measured mlra's ~486 s,
# spike_no_more's 474 s); mlra's depth-3 step is the measured 2.4m step, depth 12 its FLOPs estimate, MLRA +4 %;
# a diagnostic step ~3 member-steps
LOW_S = {"mlra": 491, "spike_no_more": 462}
MLRA_STEP_S, MLRA_PROGRAM_S, MLRA_COST, DIAG_STEPS = {3: 10.1e-3, 12: 28e-3}, {3: 55.0, 12: 90.0}, 1.04, 3


def low_estimate_s(groups) -> float:
    total = 0.0
    for group in groups:
        cfg = group[0].cfg
        assert (cfg.data.batch_size, cfg.data.seq_len) == (64, 512)
        if (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads) == base_lib.LADDER["9.4m"]:
            step, program = STEP_S, PROGRAM_S
        else:
            assert (cfg.model.d_model, cfg.model.n_heads) == base_lib.LADDER["2.4m"][::2]
            step = MLRA_STEP_S[cfg.model.n_layers] * (MLRA_COST if cfg.model.attention == "mlra" else 1.0)
            program = MLRA_PROGRAM_S[cfg.model.n_layers]
        member_steps = cfg.train.steps + DIAG_STEPS * (cfg.train.steps // cfg.train.diag_every)
        total += len(group) * member_steps * step * MEMBER + program
    return OVERRUN * total


@pytest.mark.parametrize("name", LOW)
def test_low_slice_shares_gpu_slices_config_and_its_committed_workdir(name, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    assert configs.flatten(module.get_config("gpu_slice_low")) == configs.flatten(module.get_config("gpu_slice"))
    committed = Path(__file__).resolve().parents[2] / f"experiments/results/sweeps/{name}_code11/config.json"
    (tmp_path / "config.json").write_text(committed.read_text())  # what the queue's @DIR starts from
    configs.claim_workdir(configs.apply_overrides(module.get_config("gpu_slice_low"), COMMAND), tmp_path, write=False)


@pytest.mark.parametrize("name", LOW)
def test_low_slice_is_gpu_slice_at_lower_lrs_of_the_gpu_grid(name):
    module = importlib.import_module(f"experiments.{name}")
    high, low = module.get_sweep("gpu_slice"), module.get_sweep("gpu_slice_low")
    assert not {sweep.trial_id(o) for o in high} & {sweep.trial_id(o) for o in low}
    assert len({sweep.trial_id(o) for o in low}) == len(low) == len(high)

    def points(trials):
        return {repr(sorted((k, repr(v)) for k, v in o.items() if k != "optim.lr")) for o in trials}

    assert points(low) == points(high)  # the same arms, depths and seeds
    lrs = {o["optim.lr"] for o in low}
    assert lrs <= set(module.LRS["gpu"]) and max(lrs) < min(o["optim.lr"] for o in high)


@pytest.mark.parametrize("name", LOW)
def test_low_slice_sees_at_most_one_and_a_half_epochs_and_fits_one_queue_call(name):
    module = importlib.import_module(f"experiments.{name}")
    groups = programs(module, "gpu_slice_low")
    for group in groups:
        for t in group:
            f = configs.flatten(t.cfg)
            assert f["data.source"] == "prepared"
            assert f["train.steps"] * f["data.batch_size"] * f["data.seq_len"] <= 1.5 * CODE11_TRAIN_TOKENS
    # gpu_slice's very programs (the LR is a traced scalar), so its measured time carries over
    assert [len(g) for g in groups] == [len(g) for g in programs(module, "gpu_slice")]
    seconds = low_estimate_s(groups)
    assert seconds <= QUEUE_BUDGET_S and abs(seconds - LOW_S[name]) < 3, seconds


# ---- small_scale_proxies: gpu_<size>_<arm> slices, gpu_<size> = its two arm slices -----------------------------------

# its docstring's seconds per slice, the +15 % included: 2.4m measured (session 9: 795 s for 6 programs of 7), 9.4m
# from the member-step above, 19m the 9.4m program's steps scaled by launch/flops.py's FLOPs per token
PROXIES_S = {"2.4m": 457, "9.4m": 608, "19m": 769}


def proxies_estimate_s(groups) -> float:
    from launch.plan import config_flops_per_token
    from experiments import small_scale_proxies as proxies

    nine = configs.apply_overrides(proxies.get_config("gpu"), dict(zip(
        ("model.d_model", "model.n_layers", "model.n_heads"), base_lib.LADDER["9.4m"])))
    total = 0.0
    for group in groups:
        cfg = group[0].cfg
        shape = (cfg.model.d_model, cfg.model.n_layers, cfg.model.n_heads)
        if shape == base_lib.LADDER["2.4m"]:
            total += 795 / 6 * len(group) / 7
            continue
        flops = config_flops_per_token(cfg) / config_flops_per_token(nine)
        total += len(group) * cfg.train.steps * STEP_S * MEMBER * flops + PROGRAM_S
    return OVERRUN * total


def test_proxies_size_slices_are_their_two_arm_slices():
    from experiments import small_scale_proxies as proxies

    assert len(proxies.SLICES) == 6 and set(proxies.SIZE_PRESETS) <= set(proxies.PRESETS)
    for size in proxies.SIZE_PRESETS:
        arms = [f"{size}_baseline", f"{size}_qk_norm"]
        assert proxies.get_sweep(size) == [t for a in arms for t in proxies.get_sweep(a)]
        assert configs.flatten(proxies.get_config(size)) == configs.flatten(proxies.get_config("gpu"))
    for s in proxies.SLICES:
        trials = proxies.get_sweep(s)
        assert len(trials) == 21 and {t["model.qk_norm"] for t in trials} == {s.endswith("_qk_norm")}
        assert [len(g) for g in programs(proxies, s)] == [7, 7, 7]


def test_proxies_slices_take_the_calls_their_docstring_says():
    from experiments import small_scale_proxies as proxies
    from launch import memory

    for s in proxies.SLICES:
        seconds = proxies_estimate_s(programs(proxies, s))
        size = next(n for n in proxies.GPU_SIZES if s.startswith(f"gpu_{n}_"))
        assert abs(seconds - PROXIES_S[size]) < 3, (s, seconds)
        # 2.4m fits one queue call; 9.4m and 19m need two in one session (a cut-off sweep resumes on the warm
        # machine)
        assert (seconds <= QUEUE_BUDGET_S) == (size == "2.4m") and seconds <= 2 * QUEUE_BUDGET_S
        for group in programs(proxies, s):
            _, total = memory.estimate(group[0].cfg, members=len(group), backend="gpu")
            assert total < 120 * memory.GIB, f"{s}: {total / memory.GIB:.1f} GiB"


def test_ls_attention_fill_slice_brackets_the_best_lr_into_the_committed_workdir(tmp_path):
    from experiments import ls_attention as ls

    assert configs.flatten(ls.get_config("gpu_slice_fill")) == configs.flatten(ls.get_config("gpu_slice"))
    committed = Path(__file__).resolve().parents[2] / "experiments/results/sweeps/ls_attention_code11/config.json"
    (tmp_path / "config.json").write_text(committed.read_text())
    configs.claim_workdir(configs.apply_overrides(ls.get_config("gpu_slice_fill"), COMMAND), tmp_path, write=False)
    high, fill = ls.get_sweep("gpu_slice"), ls.get_sweep("gpu_slice_fill")
    assert not {sweep.trial_id(o) for o in high} & {sweep.trial_id(o) for o in fill}
    lrs = sorted({o["optim.lr"] for o in fill})
    best, next_up = sorted(ls.LRS["gpu_slice"])[:2]  # 1e-3: both arms' best on gpu_slice's grid
    assert set(lrs) <= set(ls.LRS["gpu"]) and lrs[0] < best < lrs[1] < next_up
    groups = programs(ls, "gpu_slice_fill")
    assert sorted(len(g) for g in groups) == [6, 6]
    # the docstring's arithmetic: 19.7 ms a member-step at 8 x 4096, 20 diagnostic steps of ~3 member-steps, 55 s
    seconds = OVERRUN * sum(len(g) * (g[0].cfg.train.steps + 3 * g[0].cfg.train.steps // g[0].cfg.train.diag_every)
                            * 19.7e-3 + PROGRAM_S for g in groups)
    assert seconds <= QUEUE_BUDGET_S and abs(seconds - 1.15 * 313) < 5, seconds
