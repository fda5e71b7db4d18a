"""How close the batched and the local executor are, and how long each takes: the same study sweep run by both
into WORKDIR/{local,batched}; one JSON line per trial (both executors' eval/final loss, their relative
difference, diverged) and one per executor (wall time, compilation included) appended to --out.

    python -m benchmarks.batched_vs_local --config=experiments/small_scale_proxies.py:tiny --workdir=/tmp/bvl \
        --config.data.source=synthetic --out=benchmarks/results/cpu_batched_vs_local.jsonl

Same reduction order gives bitwise equal numbers (a resumed batched group equals an uninterrupted one); a member of
a vmapped group and the same trial alone are not reduced in the same order (batched GEMMs), so they agree to float
tolerance per step and drift apart where training is unstable (high LRs), which is what the rows show.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from absl import flags

from launch import cli, records, sweep


def rel(a, b) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return None
    return abs(a - b) / max(abs(b), 1e-12)


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    trials = sweep.load_sweep(f["config"].config_filename)
    out, rows = [], {}
    for executor in ("local", "batched"):
        t0 = time.perf_counter()
        sweep.run_sweep(f.config, trials, Path(f.workdir) / executor, executor)
        out.append(dict(executor=executor, trials=len(trials), wall_seconds=time.perf_counter() - t0, label=f.label))
        rows[executor] = {r["id"]: r for r in records.read_results(Path(f.workdir) / executor / "results.jsonl")}
    for tid, local in rows["local"].items():
        batched = rows["batched"][tid]
        out.append(dict(
            id=tid, label=f.label, lr=local["lr"], diverged=[local["diverged"], batched["diverged"]],
            eval_loss=[local["eval_loss"], batched["eval_loss"]], eval_rel_diff=rel(batched["eval_loss"], local["eval_loss"]),
            final_rel_diff=rel(batched["final_loss"], local["final_loss"]),
        ))
    with open(f.out, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in out)
    for r in out:
        print(json.dumps(r))


if __name__ == "__main__":
    flags.DEFINE_string("out", "batched_vs_local.jsonl", "append the rows to this JSONL file")
    flags.DEFINE_string("label", "", "a name for this measurement, stored in every row")
    cli.run(main, config="file", workdir=True)
