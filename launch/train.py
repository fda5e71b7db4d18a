"""`python -m launch.train --config=experiments/base.py:tiny --workdir=runs/a [--config.x.y=v ...]`: one run.

A run is the training loop (launch/loop.py) over a group of one member. Re-running the same command resumes
from the newest checkpoint and ends bitwise equal to an uninterrupted run (on CPU); a finished run does nothing.
A diverged run (non-finite loss; with train.divergence_margin > 0 also training CE above ℓ0 + margin) stops,
writes `diverged: true` and `diverged_at_step` to summary.json, and exits 0: a diverged run is a data point.
`--dry_run` validates the config and prints the plan (launch/plan.py) without compiling or writing anything.
"""

from __future__ import annotations

import jax
from absl import flags

from launch import cli, configs, distributed, loop, plan


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    if f.dry_run:
        configs.validate(f.config, n_devices=jax.device_count(), n_processes=jax.process_count())
        print(plan.describe([[("run", f.config)]], batched=False, tokens_per_second=f.tokens_per_second))
        return
    loop.train(f.config, f.workdir)


if __name__ == "__main__":
    plan.define_flags()
    distributed.define_flags()
    cli.run(main, config="file", workdir=True)
