"""Device mesh and logical-axis sharding rules.

The mesh has four axes, ("members", "data", "fsdp", "tensor"), sized by `config.mesh` (-1 fills the remaining
devices). Arrays carry logical axis names (parameters and FP8 scales: models/layers.py, models/fp8.py; optimizer
state: the names of the parameter it belongs to; batches and activations: `batch`); `RULES` maps each name to
mesh axes:

    members  -> (members, data)        the member axis of a batched group's stacked state (launch/step.py)
    batch    -> (members, data, fsdp)  a batch is split over every data-like axis its group's members leave free
    embed    -> fsdp                   parameters and optimizer state are sharded over fsdp (ZeRO-3 style)
    heads, mlp, vocab -> tensor        Megatron-style tensor parallelism
    head_dim, layers -> replicated

Leaves without logical axes (FP8 scales and amax histories, sigma-reparam estimates, step counters and other
scalars) are replicated; optimizer moments take the specs of their parameters (launch/step.py). Activations carry
no constraints: they follow the batch's `batch` sharding and the parameters' through XLA's sharding propagation.

A logical axis whose size does not divide its mesh axes is replicated instead (tiny models on many devices), and a
mesh axis of size 1 is left out of the specs. The member axis of a group of M members takes the `members` rule's
axes greedily while their product divides M, so by default (mesh.data = -1) the members of a small proxy sweep go
over the devices first, one or more whole members per device, each with its batch unsplit; a run (M = 1) splits
its batch over every data-like axis instead. For a model too big for a device, set mesh.fsdp / mesh.tensor (within
a member) and mesh.members (how many groups of devices hold members): e.g. members=4, fsdp=2 on 8 devices. The
mesh spans every device of every process (`jax.devices()`), so a member axis may too.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("members", "data", "fsdp", "tensor")

RULES: dict[str, str | tuple[str, ...] | None] = {
    "members": ("members", "data"),
    "batch": ("members", "data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "head_dim": None,
    "layers": None,
}


# XLA flags proxylab sets unless the user's XLA_FLAGS already names them. Measured on the H200 (RESULTS.md):
# XLA's autotuner picks Triton GEMMs that are ~2x slower than cuBLAS for our shapes (9.4M proxy: 105 ms -> 59 ms
# per step). The flags are GPU-only and ignored elsewhere.
DEFAULT_XLA_FLAGS = {"--xla_gpu_enable_triton_gemm": "false"}


def configure_xla_flags() -> None:
    """Adds DEFAULT_XLA_FLAGS to $XLA_FLAGS; must run before the first jax computation initialises a backend."""
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f"{k}={v}" for k, v in DEFAULT_XLA_FLAGS.items() if k not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


class MeshError(ValueError):
    """A mesh that cannot be built from the config and the visible devices."""


def mesh_shape(mesh_cfg, n_devices: int) -> dict[str, int]:
    """{axis: size} of `AXES`, with the one -1 entry resolved so that the product is `n_devices`."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    if sizes.count(-1) > 1:
        raise MeshError(f"mesh: at most one of {'/'.join(AXES)} may be -1, got {dict(zip(AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"mesh: sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise MeshError(f"mesh: {n_devices} devices are not divisible by the fixed axes {dict(zip(AXES, sizes))}")
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise MeshError(f"mesh: {'*'.join(AXES)} = {math.prod(sizes)} but {n_devices} devices are visible")
    return dict(zip(AXES, sizes))


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """The mesh of `config.mesh` over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    return Mesh(np.asarray(devices).reshape([shape[a] for a in AXES]), AXES)


def _mesh_axes_size(mesh: Mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def _fit(target, size: int, mesh: Mesh, used: set) -> tuple[str, ...]:
    """The mesh axes of `target` (a RULES value) of size > 1 not in `used`, taken in order while their product
    divides `size`."""
    flat = (target,) if isinstance(target, str) else (target or ())
    out: list[str] = []
    for a in flat:
        if mesh.shape[a] > 1 and a not in used and size % (math.prod(mesh.shape[b] for b in out) * mesh.shape[a]) == 0:
            out.append(a)
    return tuple(out)


def _entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def logical_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec of an array with logical `axes`: each dimension takes its rule's mesh axes that divide it and
    that no earlier dimension took; the rest stays replicated."""
    out, taken = [], set()
    for name, size in zip(axes, shape):
        fit = _fit(RULES.get(name) if name else None, size, mesh, taken)
        taken |= set(fit)
        out.append(_entry(fit))
    return P(*out)


def member_axes(mesh: Mesh, m: int) -> tuple[str, ...]:
    """The mesh axes the member axis of a group of `m` members is split over (RULES["members"])."""
    return _fit(RULES["members"], m, mesh, set()) if m > 1 else ()


def group_specs(mesh: Mesh, m: int, shared_batch: bool) -> tuple[P, P]:
    """(spec of a [m, ...] member array, spec of the group's batch): [B, S] when the members share their data,
    else [m, B, S]. The batch takes the `batch` axes the members leave free (every member needs its whole batch);
    the batch size is a multiple of all of them (configs.validate), so no divisibility test is needed."""
    members = member_axes(mesh, m)
    rows = _entry(tuple(a for a in RULES["batch"] if a not in members and mesh.shape[a] > 1))
    return P(_entry(members)), P(rows) if shared_batch else P(_entry(members), rows)


def state_specs(state: nnx.State, mesh: Mesh):
    """Pure-dict tree of PartitionSpecs for an `nnx.State` whose Variables carry `axes` metadata."""

    def spec(v):
        axes = v.get_metadata().get("axes")
        return P() if axes is None else logical_spec(axes, v.shape, mesh)

    return nnx.to_pure_dict(jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def named(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec() -> P:
    """Spec of a run's batch [B, S] (a group of one, or a single model outside a group)."""
    return P(RULES["batch"])


def global_batch(mesh: Mesh, local_rows: np.ndarray) -> jax.Array:
    """A run's [B, S] batch, sharded over the batch axes, from this process's contiguous rows of it
    (`data.TokenSource.batch`)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, batch_spec()), local_rows)


def assemble(sharding: NamedSharding, shape: tuple[int, ...], fetch) -> jax.Array:
    """The global array of `shape` placed as `sharding`, each process computing only its own devices' blocks:
    `fetch(index)` returns the numpy block of the tuple of slices `index`. A group's batch is built this way, since
    its rows and members may be split over processes in any pattern (`group_specs`)."""
    return jax.make_array_from_callback(shape, sharding, lambda index: fetch(tuple(index)))


def to_host(tree):
    """numpy copies of a tree of arrays, gathered from every process where a leaf is split over several."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
