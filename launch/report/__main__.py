"""`python -m launch.report DIR [DIR ...] [--out=OUT] [--label=a,b] [--metric=loss] [--log_y] [--seeds]
[--format=png|svg|pdf]` (launch/report/__init__.py says what it writes; several DIRs: a comparison, compare.py)."""

from __future__ import annotations

from absl import flags

from launch import cli, report
from launch.report import common

flags.DEFINE_string("metric", "loss", "metrics.jsonl key to plot over steps, e.g. attn_max_logit/layer_0")
flags.DEFINE_bool("log_y", False, "log scale for the metric plot")
flags.DEFINE_bool("seeds", False, "also seeds.md and seeds.png: how far apart the seeds of each group are")
flags.DEFINE_string("out", "", "output directory; default DIR/report, or <parent of DIR1>/compare-A-vs-B for several")
flags.DEFINE_multi_string("label", [], "a comparison's sweep labels, in DIR order: repeat the flag or give a comma "
                                       "list; default: what differs between the sweeps' configs")
flags.DEFINE_enum("format", "png", list(common.FORMATS), "format of loss_vs_lr and the metric plot")


def main(argv) -> None:
    dirs, f = argv[1:], flags.FLAGS  # absl passes the positional arguments after the program name
    if not dirs:
        raise FileNotFoundError("give a sweep directory (results.jsonl) or run directory (metrics.jsonl), or "
                                "several sweep directories to compare")
    labels = [x.strip() for flag in f.label for x in flag.split(",")]
    if len(dirs) == 1:
        if labels:
            cli.fail("--label names the sweeps of a comparison: give several DIRs, or drop --label")
        out = report.write_report(dirs[0], f.metric, f.log_y, f.seeds, f.format, f.out or None)
    else:
        if len(labels) > len(dirs):
            cli.fail(f"--label: {len(labels)} labels for {len(dirs)} sweep directories; give at most one per DIR")
        if f.seeds:
            cli.fail("--seeds reports one sweep's seeds: run it on each DIR alone")
        out = report.write_comparison(dirs, f.out or None, labels, f.metric, f.log_y, f.format)
    print(f"report: {out}/summary.md, {out}/index.html")


if __name__ == "__main__":
    cli.run(main)
