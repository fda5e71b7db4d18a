"""Orbax checkpoints of the train state: save every `train.ckpt_every` steps, resume from the newest good one.

Orbax finalises a step directory atomically (it writes to a temporary name and renames), so a kill -9 during a
save leaves at most an unfinished temporary directory that the manager ignores. If the newest finalised
checkpoint still fails to restore (e.g. a truncated file), we warn and fall back to the previous one.

Saves are synchronous: a run that was killed right after `save` returned has that step on disk, which the
exact-resume guarantee relies on. Checkpoint cost is small next to `ckpt_every` steps of training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int | None):
        """Checkpoints in `directory`, the newest `keep` of them kept on disk (None: all of them)."""
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(_flatten(state)), force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state):
        """The state saved at `step`, placed like `abstract_state` (see `restore_latest`)."""
        restored = self.manager.restore(step, args=ocp.args.StandardRestore(_flatten(abstract_state)))
        return _unflatten(abstract_state, restored)

    def restore_latest(self, abstract_state):
        """(step, state) from the newest checkpoint that restores, or (None, None) when there is none.

        `abstract_state` is a tree of jax.ShapeDtypeStruct with shardings (from jax.eval_shape), so arrays come
        back already placed on the mesh.
        """
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return step, self.restore(step, abstract_state)
            except Exception as e:  # noqa: BLE001 - any failure means "this checkpoint is unusable"
                logging.warning("checkpoint at step %d is unreadable (%s); falling back to an older one", step, e)
        return None, None

    def close(self) -> None:
        self.manager.close()


def _key(path) -> str:
    """"params.blocks.0.attn.q.kernel"-style name of a pytree path."""
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return ".".join(str(p) for p in parts)


def _flatten(tree) -> dict:
    """{"path.to.leaf": leaf}: orbax sees one flat dict whatever the state holds (int keys, NamedTuples)."""
    return {_key(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflatten(like, flat: dict):
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree_util.tree_unflatten(treedef, [flat[_key(p)] for p, _ in paths])

