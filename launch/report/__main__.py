"""`python -m launch.report DIR [--metric=loss] [--log_y] [--seeds]` (launch/report/__init__.py says what it writes)."""

from __future__ import annotations

from absl import flags

from launch import cli, report

flags.DEFINE_string("metric", "loss", "metrics.jsonl key to plot over steps, e.g. attn_max_logit/layer_0")
flags.DEFINE_bool("log_y", False, "log scale for the metric plot")
flags.DEFINE_bool("seeds", False, "also seeds.md and seeds.png: how far apart the seeds of each group are")


def main(argv) -> None:
    dirs = argv[1:]  # absl passes the positional arguments after the program name
    if len(dirs) != 1:
        raise FileNotFoundError("give one sweep directory (results.jsonl) or run directory (metrics.jsonl)")
    out = report.write_report(dirs[0], flags.FLAGS.metric, flags.FLAGS.log_y, flags.FLAGS.seeds)
    print(f"report: {out}/summary.md")


if __name__ == "__main__":
    cli.run(main)
