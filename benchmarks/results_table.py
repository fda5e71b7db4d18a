"""Renders benchmark JSON lines (benchmarks/throughput.py --out) as a markdown table beside the peer numbers.

    python -m benchmarks.results_table benchmarks/results/h200_call4_final.jsonl [more.jsonl ...]
    python -m benchmarks.results_table --relative_to=9.4m/baseline benchmarks/results/h200_call5_variants.jsonl
    python -m benchmarks.results_table benchmarks/results/h200_call5_executors_9.4m.jsonl   # sweep executors
    python -m benchmarks.results_table --members benchmarks/results/h200_session8_batched.jsonl  # batched step

Rows keep the order of the files; a later row with the same label replaces an earlier one. The ratio column
divides our tokens/s by the plain-PyTorch GPT of DESIGN §7 (torch.compile, flash SDPA, fused AdamW) measured on
the same H200 at the same shapes; with --relative_to it is the step time over that row's instead. Rows of
benchmarks/sweep_executors.sh (they have an "executor" key) make the executor table: wall time of the same sweep
with each executor, and batched / local. Rows of benchmarks/side_by_side.py make the side-by-side table; rows of
benchmarks/compile_cache.py (a "cache" key) the compilation-cache table; rows of benchmarks/sweep_cost.py (a "sweep"
key) the sweep-cost table.

MFU in PEERS and in rows written before launch/flops.py is over the measured 790 TFLOP/s with PaLM's
6 N + 12 L H Dh T count (the old rule, RESULTS.md "How MFU is computed"); newer rows' `mfu` is over 989.
"""

from __future__ import annotations

import json

# DESIGN §7, measured on the same H200 (bf16, batch 256 x 512, vocab 32101, random tokens, full train step).
# Their MFU is the old rule's (790 TFLOP/s, 6 N + 12 L H Dh T).
PEERS = {  # size -> (nanodo tok/s, nanodo MFU, PyTorch tok/s, PyTorch MFU)
    "9.4m": (304e3, 0.063, 2.03e6, 0.42),
    "42m": (192e3, 0.105, 986e3, 0.54),
    "151m": (73.6e3, 0.11, 409e3, 0.61),
}


OLD_RULE = "†"  # MFU of the old rule: over 790 TFLOP/s with 6 N + 12 L H Dh T (rows without mfu_measured_peak)
MFU_HEADER = "MFU (989 / 790 peak; † old rule)"


def mfu_cell(r: dict) -> str:
    """A row's MFU: datasheet / measured peak (launch/flops.py), or the old-rule figure marked †."""
    if "mfu_measured_peak" in r:
        return f"{r['mfu']:.1%} / {r['mfu_measured_peak']:.1%}"
    return f"{r['mfu']:.1%}{OLD_RULE}"


def render(rows: list[dict]) -> str:
    lines = [
        f"| config | step ms | tokens/s | {MFU_HEADER} | peak GiB | PyTorch tokens/s (MFU{OLD_RULE}) | ours / PyTorch "
        "| nanodo tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = r["label"].split("/")[0]
        peer = PEERS.get(size)
        torch = f"{peer[2] / 1e3:,.0f}k ({peer[3]:.0%}{OLD_RULE})" if peer else "–"
        ratio = f"{r['tokens_per_second'] / peer[2]:.2f}x" if peer else "–"
        nanodo = f"{peer[0] / 1e3:,.1f}k" if peer else "–"
        lines.append(
            f"| `{r['label']}` | {r['step_ms']:.1f} | {r['tokens_per_second'] / 1e3:,.0f}k | {mfu_cell(r)} | "
            f"{r['peak_memory_gib']:.1f} | {torch} | {ratio} | {nanodo} |"
        )
    return "\n".join(lines)


def render_relative(rows: list[dict], reference: str) -> str:
    """Step times against the row labelled `reference` (e.g. every model variant against the baseline)."""
    ref = next(r for r in rows if r["label"] == reference)
    lines = [
        f"| config | params | step ms | tokens/s | {MFU_HEADER} | peak GiB | step time / `{reference}` |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['label']}` | {r['params'] / 1e6:.2f}M | {r['step_ms']:.2f} | {r['tokens_per_second'] / 1e3:,.0f}k | "
            f"{mfu_cell(r)} | {r['peak_memory_gib']:.1f} | {r['step_ms'] / ref['step_ms']:.3f} |"
        )
    return "\n".join(lines)


def render_executors(rows: list[dict]) -> str:
    """benchmarks/sweep_executors.sh rows: the same sweep's wall time per executor, and batched / local."""
    wall = {r["executor"]: r["wall_seconds"] for r in rows}
    lines = ["| executor | trials | wall s (incl. compilation) | / local |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['executor']} | {r['trials']} | {r['wall_seconds']:.1f} | {r['wall_seconds'] / wall['local']:.2f} |")
    return "\n".join(lines)


def render_compile_cache(rows: list[dict]) -> str:
    """benchmarks/compile_cache.py rows (they have a "cache" key): a first trial's process wall time with the
    compilation cache off, cold (empty) and warm, and each over the same run's `off` time."""
    off = {r["label"].rsplit("/", 1)[0]: r["wall_seconds"] for r in rows if r["cache"] == "off"}
    lines = ["| run | cache | wall s (whole process) | / off |", "|---|---|---|---|"]
    for r in rows:
        ref = off.get(r["label"].rsplit("/", 1)[0])
        ratio = f"{r['wall_seconds'] / ref:.2f}" if ref else "–"
        lines.append(f"| `{r['label']}` | {r['cache']} | {r['wall_seconds']:.1f} | {ratio} |")
    return "\n".join(lines)


def render_side_by_side(rows: list[dict]) -> str:
    """benchmarks/side_by_side.py rows (they have a "side" key, or are ratio rows): per size PyTorch and our
    tokens/s with MFU against the datasheet peak, and the ratio measured in the same call."""
    def cell(r):
        if r is None:
            return "–"
        if r.get("tokens_per_second"):
            mfu = r.get("mfu_datasheet", r.get("mfu"))
            gib = r.get("peak_memory_gib")
            return f"{r['tokens_per_second'] / 1e3:,.0f}k ({mfu:.1%}" + (f", {gib:.0f} GiB)" if gib else ")")
        return "OOM" if r.get("oom") else f"failed: {r.get('error', '?')}"

    by_label = {r["label"]: r for r in rows}
    lines = ["| size | PyTorch tokens/s (MFU, peak memory) | ours tokens/s (MFU, peak memory) | ours / PyTorch |",
             "|---|---|---|---|"]
    for r in rows:
        if r["label"].startswith("ratio/"):
            rest = r["label"][len("ratio/"):]
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "–"
            lines.append(f"| {r['size']} | {cell(by_label.get('torch/' + rest))} | {cell(by_label.get('ours/' + rest))} | {ratio} |")
    return "\n".join(lines)


def render_members(rows: list[dict]) -> str:
    """benchmarks/throughput.py --members rows: the batched step of M members against the single run of the same
    config (the row whose label ends in /m1 where this one's ends in /m<M>): step time per member-step and the ratio
    (issue 15's target: <= 1.1)."""
    single = {r["label"].rsplit("/m", 1)[0]: r for r in rows if r.get("members", 1) == 1}
    lines = ["| config | members | step ms | ms per member-step | / single run's step |", "|---|---|---|---|---|"]
    for r in rows:
        m = r.get("members", 1)
        ref = single.get(r["label"].rsplit("/m", 1)[0])
        ratio = f"{r['step_ms'] / m / ref['step_ms']:.3f}" if ref else "–"
        lines.append(f"| `{r['label']}` | {m} | {r['step_ms']:.1f} | {r['step_ms'] / m:.2f} | {ratio} |")
    return "\n".join(lines)


def render_sweep_cost(rows: list[dict]) -> str:
    """benchmarks/sweep_cost.py rows (they have a "sweep" key): what each sweep's trials cost on the device."""
    lines = ["| sweep | trials | programs | tokens | model PFLOPs | program s | sweep wall s | tokens/s | sweep MFU "
             "(989 / 790 peak) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = f"{r['status_wall_seconds']:.0f}" if r.get("status_wall_seconds") else "–"
        lines.append(f"| `{r['sweep']}` | {r['trials']} | {r['programs']} | {r['tokens'] / 1e6:,.1f}M | "
                     f"{r['model_pflops']:,.1f} | {r['program_seconds']:.0f} | {wall} | "
                     f"{r['tokens_per_second'] / 1e3:,.0f}k | {r['sweep_mfu']:.1%} / {r['sweep_mfu_measured_peak']:.1%} |")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    from absl import flags

    reference = flags.FLAGS.relative_to or None
    by_label: dict[str, dict] = {}
    for path in argv[1:]:
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                by_label[row["label"]] = row
    rows = list(by_label.values())
    if all("sweep" in r for r in rows):
        print(render_sweep_cost(rows))
    elif all("side" in r or r["label"].startswith("ratio/") for r in rows):
        print(render_side_by_side(rows))
    elif all("cache" in r for r in rows):
        print(render_compile_cache(rows))
    elif all("executor" in r for r in rows):
        print(render_executors(rows))
    elif flags.FLAGS.members:
        print(render_members([r for r in rows if "members" in r and "/m" in r["label"]]))
    else:
        print(render_relative(rows, reference) if reference else render(rows))


if __name__ == "__main__":
    from absl import flags

    from launch import cli

    flags.DEFINE_string("relative_to", "", "label of the row whose step time the others are divided by")
    flags.DEFINE_bool("members", False, "the batched-step table of benchmarks.throughput --members rows")
    cli.run(main)
