"""Config validation, overrides and run-directory claims shared by every command.

Every mistake a user can make in a config or an override is a `ConfigError` naming the field; launch/cli.py turns
it into ONE line on stderr and exit status 2, before anything is compiled or written:

    error: model.d_model=100 is not divisible by model.n_heads=3 (set model.head_dim explicitly)
"""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

import optim
from launch import corpus, data, mesh as mesh_lib

# Fields that do not change what a run computes; a rerun may change them without invalidating the run directory.
COSMETIC_FIELDS = frozenset({"train.progress"})
# Fields in which the members of one compiled group (launch/loop.py) may differ: traced optimizer scalars, the
# seed (an argument of init and of the data order), and cosmetic fields.
MEMBER_FIELDS = frozenset({f"optim.{k}" for k in optim.HPARAM_KEYS} | {"train.seed"} | COSMETIC_FIELDS)
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config that cannot run, with a one-line message naming the field."""


USER_ERRORS = (ConfigError, corpus.DataError, mesh_lib.MeshError)


def flatten(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """{"model.d_model": 64, ...} of a (nested) config."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of `cfg` with dotted-key overrides applied; unknown keys and wrong types are ConfigErrors."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    known = flatten(cfg)
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown config field {key!r}")
        parent, _, leaf = key.rpartition(".")
        node = cfg
        for part in parent.split(".") if parent else []:
            node = node[part]
        try:
            node[leaf] = value
        except TypeError as e:
            raise ConfigError(f"{key}={value!r}: {e}") from None
    return cfg


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg, n_devices: int, n_processes: int = 1) -> None:
    """Checks types, ranges and combinations; raises ConfigError naming the field. Cheap: builds nothing big."""
    from flax import nnx

    from models import transformer

    m, d, t = cfg.model, cfg.data, cfg.train
    for field in ("vocab_size", "d_model", "n_layers", "n_heads"):
        _check(m[field] > 0, f"model.{field}={m[field]} must be positive")
    if not m.head_dim:
        _check(
            m.d_model % m.n_heads == 0,
            f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads} (set model.head_dim explicitly)",
        )
    head_dim, _ = transformer.dims(m)
    _check(head_dim % 2 == 0, f"model.head_dim={head_dim} must be even (RoPE rotates channel pairs)")
    for field in ("dtype", "param_dtype", "logits_dtype"):
        _check(m[field] in DTYPES, f"model.{field}={m[field]!r} must be one of {DTYPES}")
    _check(d.seq_len > 0 and d.batch_size > 0, f"data.seq_len={d.seq_len} and data.batch_size={d.batch_size} must be positive")
    _check(t.steps > 0, f"train.steps={t.steps} must be positive")
    _check(t.log_every > 0, f"train.log_every={t.log_every} must be positive")
    _check(t.eval_batches > 0, f"train.eval_batches={t.eval_batches} must be positive")
    _check(t.keep_ckpts > 0, f"train.keep_ckpts={t.keep_ckpts} must be positive")
    _check(t.divergence_margin >= 0, f"train.divergence_margin={t.divergence_margin} must be >= 0 (0 = off)")
    for field in ("diag_rows", "max_members"):
        _check(t[field] >= 0, f"train.{field}={t[field]} must be >= 0 (0: all rows / the whole group)")
    _check(d.source in data.SOURCES, f"data.source={d.source!r} is unknown; choose one of {sorted(data.SOURCES)}")
    if t.rewind.enabled:
        _validate_rewind(t)

    shape = mesh_lib.mesh_shape(cfg.mesh, n_devices)
    ways = shape["members"] * shape["data"] * shape["fsdp"]
    _check(
        d.batch_size % ways == 0,
        f"data.batch_size={d.batch_size} is not divisible by the batch mesh axes members*data*fsdp={ways}",
    )
    _check(d.batch_size % n_processes == 0, f"data.batch_size={d.batch_size} is not divisible by {n_processes} processes")
    try:  # registry names and variant combinations, checked by building the abstract model and the optimizer
        nnx.eval_shape(lambda: transformer.Transformer(m, rngs=nnx.Rngs(0)))
        optim.make_optimizer(cfg.optim, int(t.steps))
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def _validate_rewind(t) -> None:
    """train.rewind (launch/train.py): the spike test's parameters, and checkpoints that make every rewind possible.

    A spike is seen at the log step that closes its window, so a checkpoint (ckpt_every a multiple of log_every)
    never holds an undetected spike, and the spike lies after the newest checkpoint. The newest checkpoint at or
    before (spike − steps_back) is then among the kept ones when (keep_ckpts − 1)·ckpt_every >= steps_back.
    """
    r = t.rewind
    _check(r.window >= 2, f"train.rewind.window={r.window} must be >= 2 (the std needs two values)")
    _check(r.sigma > 0, f"train.rewind.sigma={r.sigma} must be positive")
    _check(r.steps_back >= 0, f"train.rewind.steps_back={r.steps_back} must be >= 0")
    _check(r.skip_batches > 0, f"train.rewind.skip_batches={r.skip_batches} must be positive (same data, same spike)")
    _check(r.max_rewinds > 0, f"train.rewind.max_rewinds={r.max_rewinds} must be positive")
    _check(
        t.ckpt_every > 0 and t.ckpt_every % t.log_every == 0,
        f"train.rewind needs train.ckpt_every={t.ckpt_every} to be a positive multiple of "
        f"train.log_every={t.log_every} (spikes are detected at log steps, before a checkpoint is saved)",
    )
    need = 1 + -(-r.steps_back // t.ckpt_every)
    _check(
        t.keep_ckpts >= need,
        f"train.rewind.steps_back={r.steps_back} needs train.keep_ckpts >= {need} with train.ckpt_every={t.ckpt_every} "
        f"(keep_ckpts={t.keep_ckpts} keeps {(t.keep_ckpts - 1) * t.ckpt_every} steps behind the newest checkpoint)",
    )


def claim_workdir(cfg, workdir: Path, write: bool = True) -> None:
    """Creates `workdir` and writes config.json; refuses a workdir that holds a run of a different config."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    new = json.loads(json.dumps(flatten(cfg)))
    if path.exists():
        old = json.loads(path.read_text())
        changed = sorted(k for k in set(old) | set(new) if k not in COSMETIC_FIELDS and old.get(k) != new.get(k))
        if changed:
            raise ConfigError(
                f"{workdir} holds a run with a different config (changed: {', '.join(changed[:5])}); "
                "use a new --workdir or delete it"
            )
    if write:
        from launch.metrics import write_json_atomic

        write_json_atomic(path, new)


def unflatten(flat: dict) -> ml_collections.ConfigDict:
    """The nested config of a flat {"model.d_model": 64, ...} dict (the inverse of `flatten`)."""
    nested: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return ml_collections.ConfigDict(nested)


def load_run_config(workdir: Path) -> ml_collections.ConfigDict:
    """The resolved config of the run in `workdir`, rebuilt from its own config.json (no experiment file needed)."""
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{workdir} holds no run (no config.json)")
    return unflatten(json.loads(path.read_text()))
