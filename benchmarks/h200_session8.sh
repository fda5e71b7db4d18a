#!/usr/bin/env bash
# Session 8's H200 calls (issue 15), run from the repo root on the GPU machine; writes into $OUT.
#   bash benchmarks/h200_session8.sh side_by_side   the torch peer vs benchmarks.throughput at 9.4m..302m, the 151M
#                                                   XLA profile, and the FP8 lowering check
#   bash benchmarks/h200_session8.sh batched        the batched step (members=7 vs 1), FP8 vs BF16 step times, 302M
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # the GPU image lacks ml-collections and tensorboardX
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
case "${1:-}" in
side_by_side)
  python3 -m benchmarks.fp8_hlo --size=4096 --out="$OUT/fp8_linear.hlo.txt" > "$OUT/fp8_hlo.log" 2>&1; tail -3 "$OUT/fp8_hlo.log"
  python3 -m benchmarks.peers.torch_gpt --tiny --steps=2 --warmup=1 --out="$OUT/torch_tiny.jsonl" || exit 1
  timeout 150 python3 -m benchmarks.profile_step --config=experiments/base.py:151m --steps=3 --warmup=2 --label=151m \
    --trace_dir=/tmp/prof151 --out_json="$OUT/profile_151m.json" --out_md="$OUT/profile_151m.md" > "$OUT/profile.log" 2>&1
  tail -3 "$OUT/profile.log"
  python3 -m benchmarks.side_by_side --out="$OUT/side_by_side.jsonl" --sizes=9.4m,42m,151m,302m --steps=10 --warmup=3 \
    --timeout=150 --ours_args_for=302m:--config.model.remat=True > "$OUT/side_by_side.log" 2>&1
  tail -12 "$OUT/side_by_side.log"; head -40 "$OUT/profile_151m.md"
  ;;
batched)
  T="python3 -m benchmarks.throughput --steps=20 --warmup=3 --out=$OUT/batched.jsonl"
  for size in 2.4m 9.4m; do
    for m in 1 7; do $T --config=experiments/base.py:$size --config.data.batch_size=64 --members=$m --label=$size/b64/m$m 2>&1 | tail -1 | cut -c1-160; done
  done
  for size in 42m 151m; do
    for fp8 in False True; do $T --config=experiments/base.py:$size --config.model.mlp=swiglu --config.model.fp8.enabled=$fp8 --label=$size/swiglu/fp8=$fp8 2>&1 | tail -1 | cut -c1-160; done
  done
  timeout 150 python3 -m benchmarks.profile_step --config=experiments/base.py:9.4m --config.data.batch_size=64 --members=7 \
    --steps=3 --warmup=2 --label=9.4m/m7 --trace_dir=/tmp/prof_m7 --out_json="$OUT/profile_9.4m_m7.json" --out_md="$OUT/profile_9.4m_m7.md" > "$OUT/profile_m7.log" 2>&1
  tail -3 "$OUT/profile_m7.log"; head -30 "$OUT/profile_9.4m_m7.md"
  timeout 120 $T --config=experiments/base.py:302m --config.model.remat=True --steps=5 --label=302m/remat 2>&1 | tail -1 | cut -c1-160
  ;;
*) echo "usage: $0 side_by_side|batched" >&2; exit 2 ;;
esac
