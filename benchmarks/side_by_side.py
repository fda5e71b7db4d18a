"""Our throughput against the PyTorch reference, per ladder size, in one invocation (issue 15).

    python -m benchmarks.side_by_side --out=$OUT/side_by_side.jsonl [--sizes=9.4m,42m,151m,302m] [--steps=10]
        [--timeout=240] [--ours_args="--config.model.logits_dtype=bfloat16"] [--ours_args_for=302m:--config.model.remat=True]

For each size, first `python -m benchmarks.peers.torch_gpt --size=SIZE` then `python -m benchmarks.throughput
--config=experiments/base.py:SIZE` run as subprocesses (each with the GPU to itself and a fresh allocator), with
the same batch, sequence length, vocab and step counts. Writes to --out, per size: the torch row, our row, and a
ratio row {"label": "ratio/SIZE", "ratio": ours tokens/s ÷ torch tokens/s} (null where the torch side ran out of
memory or a side failed). A subprocess that fails or times out becomes a row {"label", "error", "tail"} (the last
lines of its output; `oom: true` when they say the device ran out of memory) and the next size runs. Prints a
markdown table at the end (also rendered by `python -m benchmarks.results_table FILE`). No jax or torch is
imported here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import results_table

ROOT = Path(__file__).resolve().parents[1]  # both sides run from the repository root
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemoryError")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSONL file the rows are appended to")
    p.add_argument("--sizes", default="9.4m,42m,151m,302m", help="comma-separated ladder sizes")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32101)
    p.add_argument("--steps", type=int, default=10, help="timed steps on both sides")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps on both sides")
    p.add_argument("--timeout", type=float, default=300, help="seconds per subprocess before it counts as failed")
    p.add_argument("--python", default=sys.executable, help="interpreter for both sides")
    p.add_argument("--torch_args", default="", help="extra flags for benchmarks.peers.torch_gpt (space-separated)")
    p.add_argument("--ours_args", default="", help="extra flags for benchmarks.throughput, e.g. --config.x=y")
    p.add_argument("--ours_args_for", action="append", default=[], metavar="SIZE:FLAGS",
                   help="extra flags for our side at one size only (repeatable)")
    p.add_argument("--skip_torch", action="store_true", help="only our side (ratio rows are null)")
    p.add_argument("--tag", default="", help="suffix of every label, e.g. a commit id")
    return p.parse_args(argv)


def torch_command(args, size: str) -> list[str]:
    return [args.python, "-m", "benchmarks.peers.torch_gpt", f"--size={size}", f"--batch={args.batch}",
            f"--seq={args.seq}", f"--vocab={args.vocab}", f"--steps={args.steps}", f"--warmup={args.warmup}",
            f"--label={label('torch', size, args.tag)}", *args.torch_args.split()]


def ours_command(args, size: str) -> list[str]:
    per_size = [f.split(":", 1)[1] for f in args.ours_args_for if f.split(":", 1)[0] == size]
    return [args.python, "-m", "benchmarks.throughput", f"--config=experiments/base.py:{size}",
            f"--config.data.batch_size={args.batch}", f"--config.data.seq_len={args.seq}",
            f"--config.model.vocab_size={args.vocab}", f"--steps={args.steps}", f"--warmup={args.warmup}",
            f"--label={label('ours', size, args.tag)}", *args.ours_args.split(), *" ".join(per_size).split()]


def label(side: str, size: str, tag: str) -> str:
    return f"{side}/{size}" + (f"/{tag}" if tag else "")


def last_json_line(text: str) -> dict | None:
    """The last stdout line that parses as a JSON object (both benchmarks print exactly one)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def run_side(cmd: list[str], row_label: str, timeout: float) -> dict:
    """Runs one benchmark; its JSON row, or an error row with the output's tail."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return error_row(row_label, cmd, f"timed out after {timeout:.0f} s", out + err)
    row = last_json_line(proc.stdout) if proc.returncode == 0 else None
    if row is None:
        return error_row(row_label, cmd, f"exit status {proc.returncode}", proc.stdout + proc.stderr)
    return dict(row, wall_seconds=time.perf_counter() - t0)


def error_row(row_label: str, cmd: list[str], error: str, output: str) -> dict:
    tail = "\n".join(output.strip().splitlines()[-15:])[-3000:]
    return dict(label=row_label, error=error, oom=any(m in output for m in OOM_MARKERS), tail=tail,
                command=" ".join(cmd))


def ratio_row(size: str, tag: str, torch_row: dict, ours_row: dict) -> dict:
    """ours tokens/s ÷ torch tokens/s; null when either side has no tokens/s (OOM, error, skipped)."""
    t, o = torch_row.get("tokens_per_second"), ours_row.get("tokens_per_second")
    return dict(label=label("ratio", size, tag), size=size, ratio=o / t if t and o else None,
                ours_tokens_per_second=o, torch_tokens_per_second=t, torch_oom=bool(torch_row.get("oom")),
                ours_oom=bool(ours_row.get("oom")))


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    rows = []
    for size in [s for s in args.sizes.split(",") if s]:
        sides = []
        for side, cmd in (("torch", torch_command(args, size)), ("ours", ours_command(args, size))):
            if side == "torch" and args.skip_torch:
                row = dict(label=label("torch", size, args.tag), error="skipped", oom=False)
            else:
                print(f"== {side} {size}: {' '.join(cmd)}", flush=True)
                row = run_side(cmd, label(side, size, args.tag), args.timeout)
            row.setdefault("size", size)
            row["side"] = side
            sides.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "tail"}), flush=True)
            if "tail" in row:
                print(row["tail"], flush=True)
        sides.append(ratio_row(size, args.tag, *sides))
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in sides)
        rows.extend(sides)
    print(results_table.render_side_by_side(rows), flush=True)
    return rows


if __name__ == "__main__":
    main()
