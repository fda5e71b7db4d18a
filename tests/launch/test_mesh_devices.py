"""The mesh on 8 fake CPU devices: every mesh shape trains like one device, every state leaf is sharded by the
rules, and a batched group whose member axis spans the 8 devices equals the unsharded group.

XLA_FLAGS must be set before jax starts, so each configuration runs in a subprocess (`SCRIPT`): once with one
device (the reference) and once with 8. Both write their loss curves and final parameters to an .npz.

Tolerance: float32 with rtol 2e-4 / atol 2e-5 on losses and parameters after 10 steps. Sharding changes only the
order of the float32 reductions (the batch mean and the gradient all-reduce over data/fsdp, the contractions split
over tensor), a relative error of ~1e-7 per reduction; Adam normalises the update by sqrt(v), which carries that
error into the parameters at lr scale, so after 10 steps differences of ~1e-5 are expected. A sharding bug (a
missing all-reduce, a wrong member or row) changes the loss at the 1e-2 level or more.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

SCRIPT = r"""
import os, sys
n_devices, out = int(sys.argv[1]), sys.argv[2]
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
import jax, numpy as np
from flax import nnx
from experiments import base
from launch import configs, loop, mesh as mesh_lib
from models import fp8

MESHES = {"8x1x1": (8, 1, 1), "1x8x1": (1, 8, 1), "1x1x8": (1, 1, 8), "2x4x1": (2, 4, 1), "2x2x2": (2, 2, 2)}
LRS = [1e-3 * 1.5 ** i for i in range(8)]


def config(data, fsdp, tensor, **overrides):
    return configs.apply_overrides(base.get_config("tiny"), {
        "data.source": "synthetic", "data.batch_size": 16, "data.seq_len": 16, "model.d_model": 32,
        "model.n_heads": 4, "model.vocab_size": 128, "model.dtype": "float32", "train.steps": 10,
        "optim.warmup_steps": 2, "mesh.members": 1, "mesh.data": data, "mesh.fsdp": fsdp, "mesh.tensor": tensor,
        **overrides,
    })


def run(cfg, m):
    # m members: lr sweep over one seed (shared batch), trained by the loop's own group step
    rt = loop.Runtime(cfg)
    cfgs = [configs.apply_overrides(cfg, {"optim.lr": lr}) for lr in LRS[:m]]
    gdata = loop.GroupData(rt, [c.train.seed for c in cfgs])
    group = rt.group(m, gdata.shared)
    states = group.init(jax.device_put(np.zeros([m], np.int32), group.member_sharding))
    hp = loop.step_lib.stacked_hparams(group, cfgs)
    losses = []
    for step in range(10):
        states, metrics = group.step(states, gdata.train_batch(step), hp)
        losses.append(np.asarray(metrics["loss"]))
    return group, states, np.stack(losses)


def expected_spec(axes, shape, mesh):
    # the rules, restated: dimension by dimension, the rule's mesh axes of size > 1, unused, while they divide
    out, used = [], set()
    for name, size in zip(axes, shape):
        rule = mesh_lib.RULES.get(name) if name else None
        rule = (rule,) if isinstance(rule, str) else (rule or ())
        take = []
        for a in rule:
            if mesh.shape[a] > 1 and a not in used and size % (int(np.prod([mesh.shape[b] for b in take])) * mesh.shape[a]) == 0:
                take.append(a)
        used |= set(take)
        out.append(None if not take else take[0] if len(take) == 1 else tuple(take))
    return jax.sharding.PartitionSpec(*out)


class Axes:  # a leaf holding a Variable's logical axes (a bare tuple would be flattened as a pytree)
    def __init__(self, axes):
        self.axes = axes


def names(path):
    return tuple(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def check_rules(cfg):
    # every leaf of the placed state of a run (FP8 on, so its scales and amax histories are there): params, and the
    # optimizer moments that mirror them, by their logical axes; FP8 scales and amax histories, sigma-reparam
    # estimates and every scalar replicated; the member axis (one member) whole
    prog = loop.step_lib.build_program(cfg, mesh_lib.make_mesh(cfg.mesh))
    states = loop.step_lib.compile_group(prog, 1).abstract_state()
    model = nnx.eval_shape(lambda: loop.transformer.Transformer(prog.cfg.model, rngs=nnx.Rngs(0)))
    _, abs_params, abs_rest = nnx.split(model, nnx.Param, ...)
    as_axes = lambda t: nnx.to_pure_dict(jax.tree.map(lambda v: Axes(v.get_metadata().get("axes")), t, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    params = {names(p): a.axes for p, a in jax.tree_util.tree_flatten_with_path(as_axes(abs_params))[0]}
    assert all(a is not None for a in params.values()), "a parameter without logical axes"
    rest = {names(p): a.axes for p, a in jax.tree_util.tree_flatten_with_path(as_axes(abs_rest))[0]}
    assert all(a is None for a in rest.values()), "a non-parameter leaf with logical axes: extend the check"
    n_checked = n_fp8 = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(states)[0]:
        keys = names(path)
        spec = tuple(leaf.sharding.spec) + (None,) * (leaf.ndim - len(leaf.sharding.spec))
        assert spec[0] is None, (keys, spec)
        shape = leaf.shape[1:]
        axes = next((params[keys[i:]] for i in range(1, len(keys)) if keys[0] in ("params", "opt_state") and keys[i:] in params), None)
        want = expected_spec(axes, shape, prog.mesh) if axes is not None else jax.sharding.PartitionSpec()
        want = tuple(want) + (None,) * (len(shape) - len(want))
        assert spec[1:] == want, (keys, spec, want)
        n_fp8 += keys[0] == "rest" and "amax_history" in keys[-1]
        n_checked += 1
    assert n_fp8 > 0, "no FP8 leaf was checked"
    return n_checked


result = {}
if n_devices == 1:
    _, states, losses = run(config(1, 1, 1), 1)
    result["single_loss"] = losses[:, 0]
    result["single_params"] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(states["params"]))])
    _, states, losses = run(config(1, 1, 1), 8)
    result["group_loss"] = losses
    result["group_params"] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(states["params"]))])
else:
    for name, shape in MESHES.items():
        group, states, losses = run(config(*shape), 1)
        fp8_cfg = configs.apply_overrides(config(*shape), {"model.fp8.enabled": True, "model.fp8.targets": "mlp,attn"})
        print(name, "leaves checked", check_rules(fp8_cfg), flush=True)
        result[f"{name}_loss"] = losses[:, 0]
        result[f"{name}_params"] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(states["params"]))])
    # a group of 8 members over 8 devices (mesh.members = 8): one member per device
    group, states, losses = run(config(1, 1, 1, **{"mesh.members": 8}), 8)
    print("group member spec", group.member_sharding.spec, "batch", group.batch_sharding.spec, flush=True)
    assert group.member_sharding.spec == jax.sharding.PartitionSpec("members")
    kernel = states["params"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert len({s.index for s in kernel.addressable_shards}) == 8, "the members are not one per device"
    result["group_loss"] = losses
    result["group_params"] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(states["params"]))])
np.savez(out, **result)
print("DONE")
"""


def run_script(n_devices: int, out) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(n_devices), str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "DONE" in r.stdout, r.stdout + r.stderr[-5000:]
    return dict(np.load(out)), r.stdout


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mesh")
    single, _ = run_script(1, tmp / "one.npz")
    sharded, log = run_script(8, tmp / "eight.npz")
    return single, sharded, log


@pytest.mark.parametrize("mesh", ["8x1x1", "1x8x1", "1x1x8", "2x4x1", "2x2x2"])
def test_mesh_gives_the_single_device_loss_curve(curves, mesh):
    """data x fsdp x tensor: 10 steps give the one-device losses and parameters (tolerance: module docstring)."""
    single, sharded, _ = curves
    np.testing.assert_allclose(sharded[f"{mesh}_loss"], single["single_loss"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(sharded[f"{mesh}_params"], single["single_params"], rtol=2e-4, atol=2e-5)
    assert not np.allclose(single["single_loss"][0], single["single_loss"][-1])  # it trained


def test_every_state_leaf_is_sharded_by_the_rules(curves):
    """The state walk in SCRIPT ran on every mesh (an assertion there fails the fixture): each mesh checked leaves."""
    _, _, log = curves
    checked = [line for line in log.splitlines() if "leaves checked" in line]
    assert len(checked) == 5 and all(int(line.split()[-1]) > 20 for line in checked), log


def test_member_axis_over_eight_devices_equals_the_unsharded_group(curves):
    single, sharded, log = curves
    assert "group member spec P('members',)" in log
    np.testing.assert_allclose(sharded["group_loss"], single["group_loss"], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(sharded["group_params"], single["group_params"], rtol=2e-4, atol=2e-5)
