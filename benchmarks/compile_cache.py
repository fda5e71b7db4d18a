"""First-trial time with and without the persistent compilation cache (`train.compilation_cache`; issue 15).

    python -m benchmarks.compile_cache --config=experiments/base.py:tiny --out=benchmarks/results/cpu_compile_cache.jsonl
        [--train_args="--config.train.steps=20 --config.data.source=synthetic"] [--label=cpu/tiny]

Runs the same `launch.train` three times, each in a new process on a fresh run directory, and times each process
from start to exit (imports, data, compilation, the steps, checkpoints): `off` (no cache: every program compiles),
`cold` (an empty cache directory: compiles and writes the cache) and `warm` (the directory `cold` filled: loads the
executables). Appends one JSON line per run to --out (label `<label>/<mode>`, `cache`, `wall_seconds`) and prints
them; `python -m benchmarks.results_table FILE` renders them with warm / off.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import flags

from launch import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "experiments/base.py:tiny", "experiment file and preset of the timed run")
flags.DEFINE_string("train_args", "--config.train.steps=20", "further launch.train arguments (config overrides)")
flags.DEFINE_string("out", None, "JSONL file the rows are appended to")
flags.DEFINE_string("label", "", "row label prefix (default: the --config argument)")

MODES = ("off", "cold", "warm")


def timed_run(config: str, extra: list[str], workdir: Path, cache: str) -> float:
    """Wall seconds of one `python -m launch.train` process with `train.compilation_cache=cache`."""
    cmd = [sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={workdir}", *extra,
           f"--config.train.compilation_cache={cache}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        cli.fail(f"launch.train failed ({' '.join(cmd)}): {proc.stderr.strip().splitlines()[-1:]}")
    return wall


def main(argv) -> None:
    del argv
    if not FLAGS.out:
        cli.fail("--out is required (the JSONL file the rows are appended to)")
    extra = shlex.split(FLAGS.train_args)
    label = FLAGS.label or FLAGS.config
    with tempfile.TemporaryDirectory(prefix="compile_cache_") as tmp:
        cache_dir = Path(tmp) / "xla"
        for mode in MODES:
            cache = "off" if mode == "off" else str(cache_dir)
            wall = timed_run(FLAGS.config, extra, Path(tmp) / f"run_{mode}", cache)
            row = dict(label=f"{label}/{mode}", cache=mode, wall_seconds=wall, train_args=FLAGS.train_args,
                       cache_entries=len(list(cache_dir.iterdir())) if cache_dir.exists() else 0)
            with open(FLAGS.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    cli.run(main)
