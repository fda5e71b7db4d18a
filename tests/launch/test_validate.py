"""launch/validate.py: every field of experiments/base.py has a rule and a description, the rules accept every
preset and every trial of every study, reject what they should with one line naming the field, and
docs/configuration.md is what the schema renders."""

from __future__ import annotations

import importlib
import math
import textwrap

import pytest

from experiments import base
from launch import configs, validate

STUDIES = ("attention_logit_growth", "class_imbalance", "ls_attention", "mlra", "sigma_reparam", "small_scale_proxies",
           "softplus_attention", "spam", "spike_no_more", "weight_decay_fairness", "wsd_s")


def test_every_field_has_a_rule_and_a_description():
    rules = validate.rules()
    fields = configs.flatten(base.get_config("tiny"))
    assert set(fields) == set(rules), set(fields) ^ set(rules)
    assert all(r.description and r.type in validate.TYPES for r in rules.values())
    for key, value in fields.items():  # each default satisfies its own rule
        assert validate.check_value(rules[key], value) is None, key


@pytest.mark.parametrize("study", STUDIES)
def test_every_preset_and_trial_of_every_study_is_valid(study):
    module = importlib.import_module(f"experiments.{study}")
    for preset in getattr(module, "PRESETS", ("tiny",)):
        cfg = module.get_config(preset)
        validate.check(cfg)
        for overrides in module.get_sweep(preset) if hasattr(module, "get_sweep") else []:
            validate.check(configs.apply_overrides(cfg, overrides))


@pytest.mark.parametrize("preset", base.PRESETS)
def test_every_base_preset_is_valid(preset):
    validate.check(base.get_config(preset))


BAD = [  # (override, the words the one-line error must hold)
    ({"model.head_dim": -2}, "model.head_dim=-2 must be >= 0"),
    ({"model.d_ff": -1}, "model.d_ff=-1 must be >= 0"),
    ({"train.seed": -1}, "train.seed=-1 must be >= 0"),
    ({"train.freq_buckets": -3}, "train.freq_buckets=-3 must be >= 0"),
    ({"optim.lr": math.nan}, "optim.lr=nan must be a finite number"),
    ({"optim.lr": math.inf}, "optim.lr=inf must be a finite number"),
    ({"optim.lr": -1e-3}, "optim.lr=-0.001 must be > 0"),
    ({"optim.clip": -1.0}, "optim.clip=-1.0 must be >= 0"),
    ({"optim.weight_decay": -1e-4}, "optim.weight_decay"),
    ({"optim.b2": -0.5}, "optim.b2=-0.5 must be >= 0"),
    ({"optim.b2": 1.0}, "optim.b2=1.0 must be < 1"),
    ({"optim.warmup_steps": -5}, "optim.warmup_steps=-5"),
    ({"train.eval_every": -1}, "train.eval_every=-1"),
    ({"train.ckpt_every": -10}, "train.ckpt_every=-10"),
    ({"train.divergence_margin": math.nan}, "train.divergence_margin=nan"),
    ({"mesh.data": 0}, "mesh.data=0 must be != 0"),
    ({"model.attention": "flash"}, "model.attention='flash' is not one of softmax | ls | softplus | mlra"),
    ({"model.fp8.targets": "mlp,ffn"}, "model.fp8.targets='ffn' is not one of mlp | attn | head"),
    ({"data.source": "web"}, "data.source='web' is not one of"),
    ({"optim.wsd.cycles": (300, 100)}, "optim.wsd.cycles=(300, 100) must increase"),
    ({"model.n_heads": 3}, "model.d_model=64 is not divisible by model.n_heads=3"),
    ({"model.head_dim": 31}, "model.head_dim=31 must be even"),
    ({"optim.stacked_params": "blocks/("}, "optim.stacked_params='blocks/(' is not a regex"),
    ({"model.vocab_size": 200}, "model.vocab_size=200 is too small for data.tokenizer=bpe"),
    ({"optim.name": "spam", "optim.spam.reset_warmup": 600}, "optim.spam.reset_warmup=600 must be < "),
    ({"train.rewind.enabled": True, "train.ckpt_every": 15}, "train.rewind needs train.ckpt_every=15"),
]


@pytest.mark.parametrize("overrides,words", BAD, ids=[next(iter(o)) for o, _ in BAD])
def test_bad_values_are_one_line_naming_the_field(overrides, words):
    cfg = configs.apply_overrides(base.get_config("tiny"), overrides)
    with pytest.raises(configs.ConfigError) as e:
        validate.check(cfg)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_types_are_checked_beyond_what_ml_collections_casts():
    rules = validate.rules()
    assert validate.check_value(rules["model.d_model"], True) == "model.d_model=True must be an integer"
    assert validate.check_value(rules["model.qk_norm"], 1) == "model.qk_norm=1 must be True or False"
    assert validate.check_value(rules["optim.wsd.cycles"], (100, -1)).endswith("must be >= 1")
    assert validate.check_value(rules["optim.lr"], 3) is None  # an int is a fine float


def test_unknown_field_suggests_the_closest():
    with pytest.raises(configs.ConfigError, match=r"unknown field model\.dmodel; did you mean model\.d_model\?"):
        configs.apply_overrides(base.get_config("tiny"), {"model.dmodel": 32})
    with pytest.raises(configs.ConfigError, match=r"did you mean optim\.lr\?"):
        configs.apply_overrides(base.get_config("tiny"), {"train.lr": 0.1})


def test_spec_grammar():
    spec = validate.parse_spec("float >= 0, < 1; a note", "x")
    assert spec == dict(type="float", choices=None, registry=None, bounds=((">=", 0.0), ("<", 1.0)), note="a note")
    assert validate.parse_spec("str: a|b", "x")["choices"] == ("a", "b")
    for bad in ("integer >= 1", "bool >= 1", "int ~ 3", "float: a|b"):
        with pytest.raises(validate.SchemaError):
            validate.parse_spec(bad, "x")


def test_docs_are_current():
    assert validate.DOCS_FILE.read_text() == validate.render_docs(), (
        "docs/configuration.md is stale: run `python -m launch.validate --write_docs`"
    )


def _module(tmp_path, body: str):
    path = tmp_path / "cfg.py"
    path.write_text(textwrap.dedent('''
        import ml_collections


        def get_config(arg=None):
            c = ml_collections.ConfigDict()
            c.model = m = ml_collections.ConfigDict()
    ''') + textwrap.indent(textwrap.dedent(body), "    ") + "    return c\n")
    return path


def test_docs_render_a_config_module_and_refuse_a_field_without_description(tmp_path):
    good = _module(tmp_path, '''\
        m.width = 8  # (int >= 1) the width
        m.kind = "a"  # (str: a|b) which kind; b is
        #               the other one
    ''')
    docs = validate.render_docs(good)
    assert "| `model.width` | int >= 1 | `8` | the width |" in docs
    assert "| `model.kind` | str: a\\|b | `\"a\"` | which kind; b is the other one |" in docs
    validate.parse_schema.cache_clear()
    for body in ('m.width = 8  # (int >= 1)\n', 'm.width = 8  # the width\n', 'm.width = 8\n'):
        with pytest.raises(validate.SchemaError, match="model.width"):
            validate.render_docs(_module(tmp_path, body))
        validate.parse_schema.cache_clear()


def test_dry_run_plan_counts():
    """launch/plan.py's figures of the tiny model: parameters, FLOPs per step (6·N_matmul + attention, by hand)
    and the wall time at a stated throughput."""
    from launch import plan

    cfg = configs.apply_overrides(base.get_config("tiny"), {"data.source": "synthetic"})
    d, L, V, T, B = 64, 2, 512, 64, 16
    n_matmul = L * (4 * d * d + 2 * d * 4 * d) + V * d  # q, k, v, o; the gelu MLP; the untied head
    per_token = 6 * n_matmul + L * 2 * 12 * 32 * (T + 1) / 2  # 2 heads of Dh 32 over (T+1)/2 keys on average
    assert plan.matmul_params(cfg, plan.abstract_params(cfg)) == n_matmul
    text = plan.describe([[("run", cfg)], [("a", cfg), ("b", cfg)]], batched=True, tokens_per_second=B * T * 3.0,
                         n_devices=1, backend="cpu")
    assert f"{per_token * B * T / 1e9:.3g} GFLOP per step per trial" in text
    assert "group 2/2: 2 trial(s) as one program of 2 members" in text and "2 member(s)" in text
    assert "wall time ~1m40s" in text and "wall time ~3m20s" in text  # 300 steps / 3 steps/s, then x2 members
    assert "params 0.16M" in text  # launch/memory.py n_params: 164160
    assert "total:" in text and "wall time ~5m00s" in text
