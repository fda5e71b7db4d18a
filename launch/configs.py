"""Config validation, overrides and run-directory claims shared by every command.

Every mistake a user can make in a config or an override is a `ConfigError` naming the field; launch/cli.py turns
it into ONE line on stderr and exit status 2, before anything is compiled or written:

    error: model.d_model=100 is not divisible by model.n_heads=3 (set model.head_dim explicitly)
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import ml_collections
from absl import logging

import optim
from launch import corpus, mesh as mesh_lib, provenance, validate as validate_lib
from launch.validate import ConfigError, flatten  # noqa: F401 (the ones every command uses)

# config.json's record of the code a run was started under (launch/provenance.py), beside the flat config fields.
PROVENANCE = "provenance"
# Fields that do not change what a run computes; a rerun may change them without invalidating the run directory.
COSMETIC_FIELDS = frozenset(
    {"train.progress", "train.compilation_cache", "train.wandb.project", "train.wandb.entity", "train.wandb.mode"}
)
# Fields in which the members of one compiled group (launch/loop.py) may differ: traced optimizer scalars, the
# seed (an argument of init and of the data order), and cosmetic fields.
MEMBER_FIELDS = frozenset({f"optim.{k}" for k in optim.HPARAM_KEYS} | {"train.seed"} | COSMETIC_FIELDS)


USER_ERRORS = (ConfigError, corpus.DataError, mesh_lib.MeshError)


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of `cfg` with dotted-key overrides applied; unknown keys and wrong types are ConfigErrors."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    known = flatten(cfg)
    for key, value in overrides.items():
        if key not in known:
            raise ConfigError(f"unknown field {key}{validate_lib.did_you_mean(key, known)}")
        parent, _, leaf = key.rpartition(".")
        node = cfg
        for part in parent.split(".") if parent else []:
            node = node[part]
        try:
            node[leaf] = value
        except TypeError:
            raise ConfigError(f"{key}={value!r} must be a {type(known[key]).__name__}, like its default "
                              f"{known[key]!r}") from None
    return cfg


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg, n_devices: int, n_processes: int = 1) -> None:
    """The schema of every field and the cross-field rules (launch/validate.py), then what needs the devices and
    the registries' own checks; raises ConfigError naming the field. Cheap: builds nothing big."""
    from flax import nnx

    from models import transformer

    validate_lib.check(cfg)
    d = cfg.data
    t = cfg.train
    if t.wandb.project:
        _check(importlib.util.find_spec("wandb") is not None,
               f"train.wandb.project={t.wandb.project!r} needs wandb: pip install -e '.[wandb]' (or set it to \"\")")

    shape = mesh_lib.mesh_shape(cfg.mesh, n_devices)
    ways = shape["members"] * shape["data"] * shape["fsdp"]
    _check(
        d.batch_size % ways == 0,
        f"data.batch_size={d.batch_size} is not divisible by the batch mesh axes members*data*fsdp={ways}",
    )
    _check(d.batch_size % n_processes == 0, f"data.batch_size={d.batch_size} is not divisible by {n_processes} processes")
    try:  # variant combinations, checked by building the abstract model and the optimizer
        nnx.eval_shape(lambda: transformer.Transformer(cfg.model, rngs=nnx.Rngs(0)))
        optim.make_optimizer(cfg.optim, int(cfg.train.steps))
    except ValueError as e:
        raise ConfigError(str(e).splitlines()[0]) from None


def claim_workdir(cfg, workdir: Path, write: bool = True) -> None:
    """Creates `workdir` and writes config.json; refuses a workdir that holds a run of a different config, and
    warns when it was started under other code (config.json's `PROVENANCE`, kept from the first attempt)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    new = json.loads(json.dumps(flatten(cfg)))
    current = provenance.current()
    recorded = current
    if path.exists():
        old = json.loads(path.read_text())
        recorded = old.pop(PROVENANCE, None) or current
        changed = sorted(k for k in set(old) | set(new) if k not in COSMETIC_FIELDS and old.get(k) != new.get(k))
        if changed:
            raise ConfigError(
                f"{workdir} holds a run with a different config (changed: {', '.join(changed[:5])}); "
                "use a new --workdir or delete it"
            )
        change = provenance.change(recorded, current)
        if change:
            logging.warning("%s was started under other code (%s); resuming it under this code", workdir, change)
    new[PROVENANCE] = recorded
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
    flat = json.loads(path.read_text())
    flat.pop(PROVENANCE, None)
    return unflatten(flat)
