#!/usr/bin/env bash
# Issue 4: the step time of every model variant at one ladder size (SIZE, default 9.4m; DESIGN §7 shapes: batch
# 256 x 512, vocab 32101, bf16), each beside the baseline with every variant off (qk-layernorm off too). With
# OLD=<a checkout from before the variants existed> the baseline is also measured there, in the same call, to show
# that variants that are off cost nothing. Appends JSON lines to $1 (default variants.jsonl).
set -uo pipefail
out=$(realpath -m "${1:-variants.jsonl}")
size=${SIZE:-9.4m}
bench() {  # label, then throughput flags (runs in the current directory's checkout)
  local label=$1; shift
  echo "== $label $*"
  python3 -m benchmarks.throughput --steps=30 --warmup=3 --out="$out" --label="$label" \
    --config="experiments/base.py:$size" --config.model.qk_norm=False "$@" 2>&1 | grep -v '^[WI][0-9]\{4\} ' | tail -1
}
if [ -n "${OLD:-}" ]; then
  (cd "$OLD" && PYTHONPATH="$PWD:${PYTHONPATH:-}" bench "$size/baseline@pre-variants")
fi
bench "$size/baseline"
bench "$size/qk_norm" --config.model.qk_norm=True
bench "$size/ls" --config.model.attention=ls
bench "$size/mlra" --config.model.attention=mlra
bench "$size/softplus" --config.model.attention=softplus
bench "$size/sigma_reparam" --config.model.sigma_reparam=True
bench "$size/embed_scaled" --config.model.embed_scale=scaled
bench "$size/embed_layernorm" --config.model.embed_scale=layernorm
bench "$size/baseline_again"
