"""`python -m launch.train --config=experiments/base.py:tiny --workdir=runs/a [--config.x.y=v ...]`: one run.

A run is the training loop (launch/loop.py) over a group of one member. Re-running the same command resumes
from the newest checkpoint and ends bitwise equal to an uninterrupted run (on CPU); a finished run does nothing.
A diverged run (non-finite loss; with train.divergence_margin > 0 also training CE above ℓ0 + margin) stops,
writes `diverged: true` and `diverged_at_step` to summary.json, and exits 0: a diverged run is a data point.
"""

from __future__ import annotations

from absl import flags

from launch import cli, distributed, loop


def main(argv) -> None:
    del argv
    loop.train(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    distributed.define_flags()
    cli.run(main, config="file", workdir=True)
