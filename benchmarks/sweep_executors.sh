#!/usr/bin/env bash
# Issue 3: wall time of the same 7-point LR sweep (experiments/small_scale_proxies.py:gpu_timing, the 9.4m model,
# 300 steps of 64 x 512) with the local and the batched executor, one after the other on this process's GPU.
# Appends one JSON line per executor to $1 (default executors.jsonl); sweep directories go under $2 (default runs);
# further arguments are config overrides of both sweeps (e.g. another model size), recorded in the JSON line.
# Each line has what a launch/sweep.py EXECUTOR_TIMINGS row needs (`--executor=auto`'s measurements): platform,
# device, n_params, members (trials per program group); batched / local is the ratio of the two lines' wall_seconds.
set -uo pipefail
out=$(realpath -m "${1:-executors.jsonl}")
root=${2:-runs}
shift 2 2>/dev/null || shift $#
for executor in local batched; do
  dir="$root/executor_$executor"
  rm -rf "$dir"
  t0=$(date +%s.%N)
  python3 -m launch.sweep --config=experiments/small_scale_proxies.py:gpu_timing --workdir="$dir" \
    --executor=$executor "$@" 2>&1 | grep -v '^[WI][0-9]\{4\} ' | grep -v '^step '
  t1=$(date +%s.%N)
  python3 - "$executor" "$t0" "$t1" "$dir" "$out" "$*" <<'PY'
import json, sys
executor, t0, t1, d, out, extra = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
rows = [json.loads(l) for l in open(f"{d}/results.jsonl")]
import jax
from launch import configs, memory, sweep
cfg = configs.load_run_config(f"{d}/trials/{rows[0]['id']}")
groups = sweep.group_trials(sweep.make_trials(configs.load_run_config(d), [r["overrides"] for r in rows]))
row = dict(label=f"sweep_{executor}", executor=executor, overrides=extra, wall_seconds=t1 - t0, trials=len(rows),
           platform=jax.devices()[0].platform, device=jax.devices()[0].device_kind,
           n_params=memory.n_params(cfg.model), members=max(len(g) for g in groups),
           eval_loss={r["overrides"]["optim.lr"]: r["eval_loss"] for r in rows})
open(out, "a").write(json.dumps(row) + "\n")
print(json.dumps(row))
PY
done
