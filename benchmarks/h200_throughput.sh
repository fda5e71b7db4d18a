#!/usr/bin/env bash
# Throughput/MFU of the ladder sizes on one H200 (DESIGN §7 shapes: batch 256 x 512, vocab 32101, bf16,
# random tokens, one full train step incl. clipping and AdamW). Appends JSON lines to $1 (default tp.jsonl).
# Each line's "label" says which config it measured. SIZES overrides the ladder sizes measured.
set -uo pipefail
out=${1:-tp.jsonl}
bench() {  # label, then throughput flags
  local label=$1; shift
  echo "== $label $*"
  python3 -m benchmarks.throughput --steps=10 --warmup=3 --out="$out" --label="$label" "$@" 2>&1 \
    | grep -v '^[WI][0-9]\{4\} ' | tail -1
}
for size in ${SIZES:-9.4m 42m 151m}; do
  bench "$size" --config="experiments/base.py:$size"
  bench "$size/logits_bf16" --config="experiments/base.py:$size" --config.model.logits_dtype=bfloat16
done
