#!/usr/bin/env bash
# The H200 work queue (from session 10 on), run from the repo root on the GPU machine; writes into $OUT:
#   BUDGET=540 bash benchmarks/h200_queue.sh JOB...   runs the JOBs in order inside BUDGET seconds; a sweep cut off
#                                                      resumes in the next call (same warm machine: /tmp/runs stays)
# JOBs:
#   STUDY:PRESET  `launch.sweep --config=experiments/STUDY.py:PRESET --executor=batched` on the code10 corpus into
#                 /tmp/runs/STUDY_PRESET, its directory back as STUDY_PRESET.tgz (checkpoints left out); e.g.
#                 fp8_smooth_swiglu:gpu, output_logit_divergence:gpu, small_scale_proxies:gpu_9.4m
#   perf          issue 15 at 151m: step time of the float32 / bfloat16 / token-chunked / fused-CE loss head (and the
#                 fused CE in a 9.4m group of 7), the side by side
#                 at 42m and 151m with bfloat16 logits (the PyTorch reference's own numerics), a profile of the step
#   executors     benchmarks/sweep_executors.sh at 9.4m (7 LRs, local then batched)
#   profiles      issue 15: profiles (with the time by source) of the 151m and 42m steps and of the 9.4m LSSAR step
#                 (key_chunk 128, T 512), and 302m / 1.2b trained at batch 256 (remat, token-chunked loss)
# At most 8 files come back per call: keep a call's sweep jobs to ~6.
# The corpus travels compressed in gpu_data/code10 (ignored by git; carry [".whl", "gpu_data"]): the Python sources
# of the CPU machine's project venv site-packages and the pyenv Python 3.12 standard library, deduplicated by
# content (12080 files, 176 MB), byte-level BPE 32101, 47.2M tokens; docs/reproductions/README.md says how it was
# built, gpu_data/code10/SHA256SUMS pins it.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # the GPU image lacks ml-collections and tensorboardX, and its flax 0.12.10 predates sow(capture_noop)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
CORPUS=/tmp/code10
if [ ! -f $CORPUS/tokens.npy ]; then
  mkdir -p $CORPUS && cp gpu_data/code10/doc_ends.npy gpu_data/code10/tokenizer.json $CORPUS/
  python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('gpu_data/code10/tokens.npy.xz'), open('$CORPUS/tokens.npy', 'wb'))"
  (cd $CORPUS && sha256sum -c "$OLDPWD/gpu_data/code10/SHA256SUMS") || exit 1
fi
DATA="--config.data.source=prepared --config.data.prepared_dir=$CORPUS"
budget=${BUDGET:-540}; t0=$(date +%s)
left() { echo $(( budget - ($(date +%s) - t0) )); }

sweep() {  # sweep NAME STUDY: the batched sweep into /tmp/runs/NAME (resumes), its dir back as NAME.tgz
  local dir=/tmp/runs/$1 l; l=$(left); [ "$l" -gt 60 ] || { echo "$1: no time left"; return; }
  timeout "$l" python3 -m launch.sweep --config="$2" --workdir=$dir --executor=batched $DATA 2>&1 \
    | grep -v '^step ' | grep -E "sweep|trial|rror|report|\] \[" | cut -c1-220
  echo "$1: $(wc -l < $dir/results.jsonl) rows after $(( $(date +%s) - t0 )) s"
  tar czf "$OUT/$1.tgz" --exclude=checkpoints -C /tmp/runs "$1"
}

perf() {
  local P=/tmp/perf; mkdir -p $P
  T="timeout 100 python3 -m benchmarks.throughput --steps=10 --warmup=3 --out=$P/head.jsonl --config=experiments/base.py:151m"
  [ -f $P/head.done ] || {
    $T --label=151m/logits_f32 2>&1 | tail -1 | cut -c1-200
    $T --config.model.logits_dtype=bfloat16 --label=151m/logits_bf16 2>&1 | tail -1 | cut -c1-200
    $T --config.model.loss_chunk=128 --label=151m/loss_chunk128 2>&1 | tail -1 | cut -c1-200
    $T --config.model.logits_dtype=bfloat16 --config.model.fused_ce=True --label=151m/logits_bf16_fused_ce 2>&1 | tail -1 | cut -c1-200
    B="timeout 100 python3 -m benchmarks.throughput --steps=10 --warmup=3 --out=$P/head.jsonl --config=experiments/base.py:9.4m --config.data.batch_size=64 --members=7"
    $B --label=9.4m/b64/m7 2>&1 | tail -1 | cut -c1-200
    $B --config.model.fused_ce=True --label=9.4m/b64/m7/fused_ce 2>&1 | tail -1 | cut -c1-200
    touch $P/head.done; }
  [ "$(left)" -gt 200 ] && [ ! -f $P/sbs.done ] && {
    python3 -m benchmarks.side_by_side --out=$P/side_by_side.jsonl --sizes=42m,151m --steps=10 --warmup=3 --timeout=150 \
      --ours_args="--config.model.logits_dtype=bfloat16" \
      > $P/side_by_side.log 2>&1; tail -6 $P/side_by_side.log; touch $P/sbs.done; }
  [ "$(left)" -gt 120 ] && [ ! -f $P/prof.done ] && {
    timeout 150 python3 -m benchmarks.profile_step --config=experiments/base.py:151m --config.model.logits_dtype=bfloat16 \
      --steps=3 --warmup=2 --label=151m/logits_bf16 --trace_dir=/tmp/prof151 --out_json=$P/profile_151m.json \
      --out_md=$P/profile_151m.md > $P/profile.log 2>&1; tail -2 $P/profile.log; head -24 $P/profile_151m.md; touch $P/prof.done; }
  tar czf "$OUT/perf.tgz" -C /tmp perf
}

profiles() {
  local P=/tmp/profiles; mkdir -p $P
  prof() {  # prof LABEL ARGS...: one profile_step run, skipped when done or out of time
    local label=$1; shift; local f=${label//\//_}
    [ -f $P/$f.md ] || [ "$(left)" -lt 150 ] && return
    timeout 150 python3 -m benchmarks.profile_step "$@" --steps=3 --warmup=2 --label=$label --trace_dir=/tmp/tr_$f \
      --out_json=$P/$f.json --out_md=$P/$f.md > $P/$f.log 2>&1; tail -1 $P/$f.log; head -12 $P/$f.md
  }
  prof 151m/logits_bf16 --config=experiments/base.py:151m --config.model.logits_dtype=bfloat16
  prof 42m/logits_bf16 --config=experiments/base.py:42m --config.model.logits_dtype=bfloat16
  prof 9.4m/b64/softplus_k128 --config=experiments/base.py:9.4m --config.data.batch_size=64 --config.model.qk_norm=False \
    --config.model.attention=softplus --config.model.softplus.key_chunk=128
  T="python3 -m benchmarks.throughput --steps=5 --warmup=2 --out=$P/sizes.jsonl --config.model.remat=True --config.model.loss_chunk=128"
  for size in 302m 1.2b; do
    grep -q "\"$size/remat_chunk\"" $P/sizes.jsonl 2>/dev/null || [ "$(left)" -lt 200 ] || \
      timeout 200 $T --config=experiments/base.py:$size --label=$size/remat_chunk 2>&1 | tail -1 | cut -c1-240
  done
  tar czf "$OUT/profiles.tgz" -C /tmp profiles
}

executors() {
  [ "$(left)" -gt 180 ] || { echo "executors: no time left"; return; }
  timeout "$(left)" bash benchmarks/sweep_executors.sh "$OUT/executors_9.4m.jsonl" /tmp/runs $DATA 2>&1 \
    | grep -E "wall_seconds|rror" | cut -c1-300
}

for job in "$@"; do
  case $job in
  perf) perf ;;
  executors) executors ;;
  profiles) profiles ;;
  *:*) [ -f "experiments/${job%%:*}.py" ] || { echo "no experiments/${job%%:*}.py" >&2; exit 2; }
       sweep "${job%%:*}_${job#*:}" "experiments/${job%%:*}.py:${job#*:}" ;;
  *) echo "unknown job $job; usage: BUDGET=S $0 STUDY:PRESET|perf|executors|profiles ..." >&2; exit 2 ;;
  esac
done
echo "queue ended after $(( $(date +%s) - t0 )) s"
