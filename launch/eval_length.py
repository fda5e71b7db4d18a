"""`python -m launch.eval_length --workdir=RUN --lengths=64,128,256`: eval loss of a finished run at other lengths.

For the length-extrapolation claims (LSSAR, spec model-variants §4(d)): restores the newest checkpoint of RUN,
evaluates the mean next-token CE on `--batches` held-out windows of each length from the run's own data source
(its eval split), writes RUN/length_eval.json and prints a table. Nothing in the model depends on the sequence
length (RoPE positions are computed per call; LSSAR's log N scale adapts), so the same parameters run at any length;
the run's `model.softplus.query_chunk` bounds LSSAR's attention memory.

    {"step": 300, "train_seq_len": 64, "batch_size": 16, "batches": 4, "eval_loss": {"64": 4.12, "128": 4.30}}
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from launch import cli, configs, data, loop, mesh as mesh_lib, metrics as metrics_lib, records, step as step_lib


def evaluate_lengths(workdir: str | Path, lengths: list[int], batches: int = 0, batch_size: int = 0) -> dict:
    """Eval CE of the newest checkpoint in `workdir` at each of `lengths`; writes and returns length_eval.json's dict.

    `batches` / `batch_size` default (0) to the run's train.eval_batches / data.batch_size.
    """
    workdir = Path(workdir)
    if batches < 0 or batch_size < 0:
        raise configs.ConfigError(f"--batches={batches} and --batch_size={batch_size} must be >= 0 (0 = the run's)")
    cfg = configs.load_run_config(workdir)
    if not (workdir / "checkpoints").is_dir():
        raise configs.ConfigError(f"{workdir} has no checkpoints/ to evaluate (a sweep directory? give one of its "
                                  "trials/<id> run directories)")
    batches = batches or cfg.train.eval_batches
    batch_size = batch_size or cfg.data.batch_size
    mesh = mesh_lib.make_mesh(cfg.mesh)
    prog = step_lib.build_program(cfg, mesh)
    step, state = loop.restore_newest(prog, workdir)
    if state is None:
        raise configs.ConfigError(f"{workdir} has no checkpoint to evaluate")
    if records.finished_summary(workdir) is None:
        print(f"warning: {workdir} has not finished: evaluating its newest checkpoint, step {step} of "
              f"{cfg.train.steps}", file=sys.stderr)
    batch_sharding = jax.sharding.NamedSharding(mesh, mesh_lib.batch_spec())
    evaluate = jax.jit(prog.eval_step, in_shardings=(prog.state_shardings, batch_sharding))
    losses = {}
    for length in lengths:
        data_cfg = configs.apply_overrides(cfg, {"data.seq_len": length, "data.batch_size": batch_size}).data
        source = data.make_source(
            data_cfg, vocab_size=cfg.model.vocab_size, seed=cfg.train.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
        ce = [evaluate(state, mesh_lib.global_batch(mesh, source.batch(i, split="eval"))) for i in range(batches)]
        losses[str(length)] = float(np.mean(jax.device_get(ce)))
    result = dict(step=step, train_seq_len=cfg.data.seq_len, batch_size=batch_size, batches=batches, eval_loss=losses)
    if jax.process_index() == 0:
        metrics_lib.write_json_atomic(workdir / "length_eval.json", result)
    return result


def format_table(result: dict) -> str:
    lines = [f"step {result['step']}, trained at length {result['train_seq_len']}", f"{'length':>8}  {'eval_loss':>9}"]
    lines += [f"{length:>8}  {loss:9.4f}" for length, loss in result["eval_loss"].items()]
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    from absl import flags

    f = flags.FLAGS
    try:
        lengths = [int(x) for x in f.lengths.split(",") if x.strip()]
    except ValueError:
        raise configs.ConfigError(f"--lengths={f.lengths!r} must be comma-separated integers") from None
    if not lengths or min(lengths) < 1:
        raise configs.ConfigError(f"--lengths={f.lengths!r} must name at least one positive length")
    print(format_table(evaluate_lengths(f.workdir, lengths, f.batches, f.batch_size)), flush=True)


if __name__ == "__main__":
    from absl import flags

    flags.DEFINE_string("workdir", None, "a run directory of launch.train (config.json + checkpoints/)", required=True)
    flags.DEFINE_string("lengths", None, "comma-separated evaluation lengths, e.g. 64,128,256", required=True)
    flags.DEFINE_integer("batches", 0, "held-out batches per length; 0 = the run's train.eval_batches")
    flags.DEFINE_integer("batch_size", 0, "sequences per batch; 0 = the run's data.batch_size")
    cli.run(main)
