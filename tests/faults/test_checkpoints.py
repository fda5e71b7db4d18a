"""A truncated, partly deleted or bit-flipped newest checkpoint (launch/checkpoint.py): detected by its checksum
manifest, moved aside (not deleted), the previous complete one restored with one warning, and the run ends
bitwise equal to an uninterrupted one, on the first rerun and every later one; an intact older checkpoint stays
readable whatever happened to a newer one; no complete checkpoint is one clear error that changes nothing. The
same for a batched group's stacked checkpoints in its group directory."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import faultkit
import helpers
from launch import checkpoint, configs, faults, loop


def data_files(step_dir: Path) -> list[Path]:
    """The array data files orbax wrote for a step, largest first."""
    return sorted((p for p in step_dir.rglob("*") if p.is_file() and "/d/" in str(p)), key=lambda p: -p.stat().st_size)


def truncate(step_dir: Path) -> None:
    f = data_files(step_dir)[0]
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def bitflip(step_dir: Path) -> None:
    f = data_files(step_dir)[0]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))


def delete_file(step_dir: Path) -> None:
    data_files(step_dir)[-1].unlink()


def delete_item(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "default")


CORRUPTIONS = {f.__name__: f for f in (truncate, bitflip, delete_file, delete_item)}


def unfinished_copy(reference: Path, tmp_path: Path) -> Path:
    """The reference run as a run killed between its final checkpoint and summary.json."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "summary.json").unlink()
    return run


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_is_moved_aside_and_the_run_ends_bitwise(kind, reference_run, runtime, tmp_path,
                                                                          caplog):
    ref_dir, ref = reference_run
    cfg = faultkit.config()
    run = unfinished_copy(ref_dir, tmp_path)
    CORRUPTIONS[kind](run / "checkpoints" / "20")
    faultkit.INJECTED[f"checkpoint: {kind} (newest)"] += 1

    # the intact older checkpoint restores, even after orbax itself was asked for the broken one first
    prog = runtime(cfg).prog
    ckpt = checkpoint.Checkpointer(run / "checkpoints", keep=None)
    with pytest.raises(checkpoint.CheckpointError, match="checkpoints/20 is corrupt"):
        ckpt.restore(20, prog.abstract_state())
    try:  # orbax reads the broken step first (a bit flip it restores without a word: hence the manifest)
        ckpt.manager.restore(20, args=ocp.args.StandardRestore(checkpoint._flatten(prog.abstract_state())))
    except Exception:  # noqa: BLE001 - whatever orbax makes of it, the older step must restore below
        pass
    older = jax.tree.map(np.asarray, ckpt.restore(15, prog.abstract_state()))
    ckpt.close()
    jax.tree.map(np.testing.assert_array_equal, older, helpers.restore(ref_dir / "checkpoints", 15, cfg))

    with caplog.at_level(logging.WARNING):
        loop.train(cfg, run, rt=runtime(cfg), verbose=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "checkpoints in" in r.getMessage()]
    assert len(warnings) == 1 and "step 20 is corrupt" in warnings[0] and "using step 15" in warnings[0], warnings
    aside = list((run / "checkpoints.corrupt").iterdir())
    assert [p.name.split("-")[0] for p in aside] == ["20"] and any(aside[0].rglob("*"))  # moved, not deleted
    faultkit.assert_same_run(faultkit.outputs(run, cfg), ref)

    # a later rerun (killed again before its summary): resumes from the new step 20, ends the same, moves nothing
    (run / "summary.json").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        loop.train(cfg, run, rt=runtime(cfg), verbose=False)
    assert not [r for r in caplog.records if "checkpoints in" in r.getMessage()]
    assert len(list((run / "checkpoints.corrupt").iterdir())) == 1
    faultkit.assert_same_run(faultkit.outputs(run, cfg), ref)


def test_two_corrupt_steps_fall_back_two(reference_run, runtime, tmp_path):
    ref_dir, ref = reference_run
    cfg = faultkit.config()
    run = unfinished_copy(ref_dir, tmp_path)
    bitflip(run / "checkpoints" / "20")
    truncate(run / "checkpoints" / "15")
    faultkit.INJECTED["checkpoint: bitflip (newest)"] += 1
    faultkit.INJECTED["checkpoint: truncate (second newest)"] += 1
    loop.train(cfg, run, rt=runtime(cfg), verbose=False)
    assert sorted(p.name.split("-")[0] for p in (run / "checkpoints.corrupt").iterdir()) == ["15", "20"]
    faultkit.assert_same_run(faultkit.outputs(run, cfg), ref)


def test_no_complete_checkpoint_is_one_error_and_changes_nothing(reference_run, runtime, tmp_path):
    ref_dir, _ = reference_run
    cfg = faultkit.config()
    run = unfinished_copy(ref_dir, tmp_path)
    for step, corrupt in zip((10, 15, 20), (delete_item, truncate, bitflip)):
        corrupt(run / "checkpoints" / str(step))
        faultkit.INJECTED[f"checkpoint: {corrupt.__name__} (every step)"] += 1
    before = faultkit.tree_digest(run)
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        loop.train(cfg, run, rt=runtime(cfg), verbose=False)
    assert faultkit.tree_digest(run) == before
    r = faultkit.run("launch.train", *faultkit.train_args(run))
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(("I", "W"))]
    assert r.returncode == 2 and lines == [lines[0]] and lines[0].startswith("error: no complete checkpoint"), r.stderr
    assert "step 20 is corrupt" in lines[0] and "Traceback" not in r.stderr
    assert faultkit.tree_digest(run) == before


def test_kill_during_the_first_save_starts_from_step_0(reference_run, runtime, tmp_path):
    """A step without its manifest (a kill between orbax's finalisation and the manifest) is incomplete, not
    corrupt: with no other step the run starts from step 0 (and ends bitwise); the step is kept aside."""
    ref_dir, ref = reference_run
    cfg = faultkit.config()
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run, ignore=shutil.ignore_patterns("summary.json"))
    for step in (15, 20):
        shutil.rmtree(run / "checkpoints" / str(step))
    (run / "checkpoints" / "10" / checkpoint.MANIFEST).unlink()
    faultkit.INJECTED["checkpoint: no manifest (killed mid-save)"] += 1
    loop.train(cfg, run, rt=runtime(cfg), verbose=False)
    assert [p.name.split("-")[0] for p in (run / "checkpoints.corrupt").iterdir()] == ["10"]
    faultkit.assert_same_run(faultkit.outputs(run, cfg), ref)


class Interrupted(Exception):
    """An in-process stand-in for a kill at a fault point: the state on disk is what a kill leaves (saves are
    synchronous)."""


def test_corrupt_group_checkpoint(runtime, tmp_path, monkeypatch):
    """A batched group killed before its members' summaries, its newest stacked checkpoint bit-flipped: the rerun
    moves it aside, resumes from the previous one, and every member ends bitwise as in an uninterrupted group."""
    cfg = faultkit.config()
    cfgs = [configs.apply_overrides(cfg, {"optim.lr": lr}) for lr in faultkit.LRS]

    def train(name):
        members = [loop.Member(c, tmp_path / name / str(i)) for i, c in enumerate(cfgs)]
        loop.train_group(members, runtime(cfg), group_dir=tmp_path / name / "group")
        return [faultkit.outputs(m.workdir, m.cfg) for m in members]

    reference = train("full")

    def kill_at_summary(point):
        if point == "summary":
            raise Interrupted

    with monkeypatch.context() as m:
        m.setattr(faults, "maybe_fail", kill_at_summary)
        with pytest.raises(Interrupted):
            train("killed")
    group_ckpts = tmp_path / "killed" / "group" / "checkpoints"
    assert sorted(int(p.name) for p in group_ckpts.iterdir()) == [5, 10, 15]
    bitflip(group_ckpts / "15")
    faultkit.INJECTED["checkpoint: bitflip (group's newest)"] += 1
    resumed = train("killed")
    assert [p.name.split("-")[0] for p in (tmp_path / "killed" / "group" / "checkpoints.corrupt").iterdir()] == ["15"]
    for a, b in zip(reference, resumed):
        faultkit.assert_same_run(a, b)
