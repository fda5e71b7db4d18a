"""PaLM-style rewind on a loss spike (`train.rewind`; spec optimizers §10(a)), for a run of one member.

The spike test (`step.spike_detector`) runs inside the train step; the loop looks at its flag at each log step.
On a spike it restores the newest checkpoint at or before (spike − steps_back), advances the data offset by
`skip_batches` (so the run skips the batches around the spike, as PaLM skips data), and goes on. After
`max_rewinds` rewinds, spikes are ignored and the divergence rule decides. A batched group (M > 1) cannot rewind:
its members share one checkpoint and one data position (launch.sweep runs such trials one at a time).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from launch import step as step_lib


def first_spike(rows: list[tuple[int, dict]], threshold: float) -> int | None:
    """The step of the first CE spike (the `spike` metric of train.rewind) among a log window's rows, or None; also
    None when the divergence rule fires at an earlier step (that run diverged before it spiked)."""
    spikes = [s for s, r in rows if r["spike"]]
    bad = [s for s, r in rows if step_lib.diverged(r["loss"], r["ce"], threshold)]
    return spikes[0] if spikes and (not bad or spikes[0] <= bad[0]) else None


def rewind_step(steps, spike_step: int, steps_back: int) -> int:
    """The checkpoint a rewind restores: the newest of `steps` at or before max(0, spike_step − steps_back), or the
    oldest one when all are newer (after a rewind deleted the newer ones, retention may have dropped the older)."""
    target = max(0, spike_step - steps_back)
    return max((s for s in steps if s <= target), default=min(steps))


def rewind_state(prog: step_lib.Program, ckpt, decayed, spike_step: int, steps_back: int, data_offset: int):
    """(step, state) of a rewind: the checkpoint of `rewind_step` with its data offset set to `data_offset`. The
    checkpoints after it (and WSD-S decayed ones) belong to the abandoned steps and are deleted, so a resume cannot
    pick them up; a kill before the next checkpoint replays the same spike and rewind."""
    restored = rewind_step(ckpt.manager.all_steps(), spike_step, steps_back)
    for c in (ckpt, decayed):
        for s in [s for s in (c.manager.all_steps() if c else []) if s > restored]:
            c.manager.delete(s)
    state = ckpt.restore(restored, prog.abstract_state())
    state["data_offset"] = jax.device_put(jnp.asarray(data_offset, jnp.int32), prog.state_shardings["data_offset"])
    return restored, state
