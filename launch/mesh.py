"""Device mesh, logical-axis sharding rules and multi-host start-up.

The mesh has three axes, ("data", "fsdp", "tensor"), sized by `config.mesh` (-1 fills the remaining devices).
Parameters carry logical axis names (models/layers.py); `RULES` maps each name to a mesh axis:

    batch    -> (data, fsdp)   the batch is split over every data-like axis
    embed    -> fsdp           parameters and optimizer state are sharded over fsdp (ZeRO-3 style)
    heads, mlp, vocab -> tensor  Megatron-style tensor parallelism
    head_dim -> replicated

A logical axis whose size does not divide its mesh axis is replicated instead (tiny models on many devices).
Default `mesh.data=-1, fsdp=1, tensor=1`: plain data parallelism.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "vocab": "tensor",
    "head_dim": None,
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


def maybe_initialize_distributed() -> None:
    """Join a multi-process job when the launcher says so (JAX_COORDINATOR_ADDRESS or a TPU pod / SLURM env).

    Single-process runs (the default) start nothing and open no port.
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("PROXYLAB_DISTRIBUTED") == "1":
        jax.distributed.initialize()


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, int, int]:
    """Resolves -1 entries of (data, fsdp, tensor) so that the product is `n_devices`."""
    sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp), int(mesh_cfg.tensor)]
    if sizes.count(-1) > 1:
        raise MeshError(f"mesh: at most one of data/fsdp/tensor may be -1, got {dict(zip(AXES, sizes))}")
    if any(s == 0 or s < -1 for s in sizes):
        raise MeshError(f"mesh: sizes must be positive or -1, got {dict(zip(AXES, sizes))}")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise MeshError(f"mesh: {n_devices} devices are not divisible by the fixed axes {dict(zip(AXES, sizes))}")
        sizes[sizes.index(-1)] = n_devices // fixed
    if math.prod(sizes) != n_devices:
        raise MeshError(f"mesh: data*fsdp*tensor = {math.prod(sizes)} but {n_devices} devices are visible")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def _mesh_axes_size(mesh: Mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else axes
    return math.prod(mesh.shape[a] for a in axes)


def logical_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh: Mesh) -> P:
    """PartitionSpec of an array with logical `axes`; axes that do not divide evenly stay replicated."""
    out, used = [], set()
    for name, size in zip(axes, shape):
        target = RULES.get(name) if name else None
        flat = (target,) if isinstance(target, str) else (target or ())
        if target is None or used & set(flat) or size % _mesh_axes_size(mesh, target):
            out.append(None)
            continue
        used |= set(flat)
        out.append(target)
    return P(*out)


def state_specs(state: nnx.State, mesh: Mesh):
    """Pure-dict tree of PartitionSpecs for an `nnx.State` whose Variables carry `axes` metadata."""

    def spec(v):
        axes = v.get_metadata().get("axes")
        return P() if axes is None else logical_spec(axes, v.shape, mesh)

    return nnx.to_pure_dict(jax.tree.map(spec, state, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def named(mesh: Mesh, specs):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec() -> P:
    return P(RULES["batch"])


def global_batch(mesh: Mesh, local_rows: np.ndarray, member_axis: bool = False) -> jax.Array:
    """Assembles this process's rows of a batch into one global array sharded over the batch axes; with
    `member_axis`, rows are [M, B_local, S] (one batch per member of a seed group) and the member axis stays whole."""
    spec = P(None, *batch_spec()) if member_axis else batch_spec()
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), local_rows)
