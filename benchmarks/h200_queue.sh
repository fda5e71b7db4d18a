#!/usr/bin/env bash
# The H200 work queue (from session 10 on), run from the repo root on the GPU machine; writes into $OUT:
#   BUDGET=540 bash benchmarks/h200_queue.sh JOB...   runs the JOBs in order inside BUDGET seconds; a sweep cut off
#                                                      resumes in the next call (same warm machine: /tmp/runs stays)
# JOBs:
#   STUDY:PRESET  `launch.sweep --config=experiments/STUDY.py:PRESET --executor=batched` on the code11 corpus into
#                 /tmp/runs/STUDY_PRESET, its directory back as STUDY_PRESET.tgz (checkpoints left out); e.g.
#                 fp8_smooth_swiglu:gpu, output_logit_divergence:gpu, small_scale_proxies:gpu_9.4m
#   STUDY:PRESET@DIR  the same into /tmp/runs/DIR, back as DIR.tgz; a study's slices (spam:gpu_adam@spam_code11,
#                 spam:gpu_spam@spam_code11) share one directory, which starts as the committed
#                 experiments/results/sweeps/DIR where there is one: its finished trials are skipped, so slices run in
#                 different sessions add up in one directory (launch.sweep's sweep.json lists every slice's trials)
#   eval_length:NAME  `launch.eval_length --lengths=$EVAL_LENGTHS --batch_size=16 --batches=16` on each finished
#                 trial of /tmp/runs/NAME (a sweep job's, this call's or an earlier one's on the same warm machine)
#                 without a length_eval.json yet, which it writes into the trial's run directory; NAME.tgz re-tarred
#                 with them. EVAL_LENGTHS defaults to 512,1024,2048,4096 (1x-8x of softplus_attention:gpu_slice's
#                 training length): softplus_attention:gpu_slice eval_length:softplus_attention_gpu_slice
#   perf          issue 15: step time of the fused-CE loss head beside the bfloat16-logits head at 151m, and in a 9.4m
#                 group of 7 (the float32 / token-chunked heads, the side by side and the 151m profile: session 10)
#   lssar         issue 15: step time of the fused Pallas LSSAR kernel beside softmax and the XLA key blocks, T 512 and 4096
#   norm          issue 15: step time with the fused Pallas norms (model.norm_impl=pallas) beside XLA's, 42m and 151m
#                 (session 12), then in a 9.4m group of 7 members (the batched executor's vmapped step)
#   side_by_side  issue 15: benchmarks.side_by_side (the PyTorch reference, then ours, per size) at 9.4m, 42m and 151m
#                 with bf16 logits and the default model.norm_impl=auto (the Pallas norms on one GPU)
#   executors     benchmarks/sweep_executors.sh at 9.4m (7 LRs, local then batched); executors_2.4m: the same at 2.4m
#   gputests      the GPU-only tests (compiled Pallas kernels against the XLA paths, cuDNN attention); where pytest is
#                 missing on the GPU image, put its wheels in .whl (pip download -d .whl pytest pluggy iniconfig packaging)
#   profiles      issue 15: profiles (with the time by source) of the 42m step with the Pallas norms and of the
#                 9.4m step with the Pallas LSSAR kernel (T 512), and 302m at batch 256 without remat (token-chunked
#                 loss only); session 11 profiled 42m with XLA's norms, LSSAR's key blocks, 302m / 1.2b with remat
# At most 8 files come back per call: keep a call's sweep jobs to ~6.
# The working tree that travels is limited to 64 MiB; the committed sweep directories alone pass it, so hold back
# those a call does not resume from: `bash benchmarks/device_tree.sh out [DIR...]` before it, `... back` after.
# The corpus (CORPUS_NAME, default code11) travels compressed in gpu_data/code11 (ignored by git; carry
# [".whl", "gpu_data"]): the Python sources of a venv installed from benchmarks/code11.lock and of the pyenv Python
# 3.12 standard library, deduplicated by content (12378 files, 180 MB), byte-level BPE 32101, 48.11M tokens;
# benchmarks/code_corpus.py says how to build it, the committed benchmarks/code11.sha256 pins it.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # the GPU image lacks ml-collections and tensorboardX, and its flax 0.12.10 predates sow(capture_noop)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
NAME=${CORPUS_NAME:-code11}; CORPUS=/tmp/$NAME
if [ ! -f $CORPUS/tokens.npy ]; then
  mkdir -p $CORPUS && cp gpu_data/$NAME/doc_ends.npy gpu_data/$NAME/tokenizer.json $CORPUS/
  python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('gpu_data/$NAME/tokens.npy.xz'), open('$CORPUS/tokens.npy', 'wb'))"
  sums=benchmarks/$NAME.sha256; [ -f $sums ] || sums=gpu_data/$NAME/SHA256SUMS  # the committed pin where there is one
  (cd $CORPUS && sha256sum -c "$OLDPWD/$sums") || exit 1
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

eval_length() {  # eval_length NAME: the length evaluation of /tmp/runs/NAME's finished trials, back in NAME.tgz
  local dir=/tmp/runs/$1 t
  [ -d $dir/trials ] || { echo "$1: no $dir/trials (run its sweep job first, on this warm machine)"; return; }
  for t in $dir/trials/*/; do
    [ -f $t/length_eval.json ] && continue
    grep -q '"finished": true' $t/summary.json 2>/dev/null || { echo "$1: $(basename $t) unfinished, skipped"; continue; }
    [ "$(left)" -gt 60 ] || { echo "$1: no time left for eval_length"; break; }
    timeout "$(left)" python3 -m launch.eval_length --workdir=$t --lengths=${EVAL_LENGTHS:-512,1024,2048,4096} \
      --batch_size=16 --batches=16 2>&1 | grep -vE "^[IW][0-9]{4} " | tail -6 | cut -c1-220
  done
  echo "$1: $(ls $dir/trials/*/length_eval.json 2>/dev/null | wc -l) of $(ls -d $dir/trials/*/ | wc -l) trials" \
    "length-evaluated after $(( $(date +%s) - t0 )) s"
  tar czf "$OUT/$1.tgz" --exclude=checkpoints -C /tmp/runs "$1"
}

perf() {  # the fused CE against its own baseline in one call (the f32 / chunked heads and the side by side: session 10)
  local P=/tmp/perf; mkdir -p $P
  T="timeout 100 python3 -m benchmarks.throughput --steps=10 --warmup=3 --out=$P/head.jsonl --config=experiments/base.py:151m"
  [ -f $P/head.done ] || {
    $T --config.model.logits_dtype=bfloat16 --label=151m/logits_bf16 2>&1 | tail -1 | cut -c1-200
    $T --config.model.logits_dtype=bfloat16 --config.model.fused_ce=True --label=151m/logits_bf16_fused_ce 2>&1 | tail -1 | cut -c1-200
    B="timeout 100 python3 -m benchmarks.throughput --steps=10 --warmup=3 --out=$P/head.jsonl --config=experiments/base.py:9.4m --config.data.batch_size=64 --members=7"
    $B --label=9.4m/b64/m7 2>&1 | tail -1 | cut -c1-200
    $B --config.model.fused_ce=True --label=9.4m/b64/m7/fused_ce 2>&1 | tail -1 | cut -c1-200
    touch $P/head.done; }
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
  prof 42m/logits_bf16/norm_pallas --config=experiments/base.py:42m --config.model.logits_dtype=bfloat16 \
    --config.model.norm_impl=pallas
  prof 9.4m/b64/softplus_pallas --config=experiments/base.py:9.4m --config.data.batch_size=64 --config.model.qk_norm=False \
    --config.model.attention=softplus --config.model.softplus.impl=pallas
  T="python3 -m benchmarks.throughput --steps=5 --warmup=2 --out=$P/sizes.jsonl"
  grep -q '"302m/chunk"' $P/sizes.jsonl 2>/dev/null || [ "$(left)" -lt 200 ] || \
    timeout 200 $T --config=experiments/base.py:302m --config.model.loss_chunk=128 --label=302m/chunk 2>&1 | tail -1 | cut -c1-240
  tar czf "$OUT/profiles.tgz" -C /tmp profiles
}

lssar() {  # issue 15: the fused Pallas LSSAR kernel (model.softplus.impl=pallas) against softmax and the XLA blocks
  local P=/tmp/lssar; mkdir -p $P
  T="timeout 120 python3 -m benchmarks.throughput --steps=10 --warmup=3 --out=$P/lssar.jsonl --config=experiments/base.py:9.4m --config.model.qk_norm=False"
  S="--config.model.attention=softplus"
  for T_len in 512 4096; do
    b=$(( 64 * 512 / T_len )); L="--config.data.batch_size=$b --config.data.seq_len=$T_len"; tag=9.4m/b${b}xT$T_len
    [ "$(left)" -gt 90 ] && $T $L --label=$tag/softmax 2>&1 | tail -1 | cut -c1-200
    [ "$(left)" -gt 90 ] && $T $L $S --config.model.softplus.impl=pallas --label=$tag/softplus_pallas 2>&1 | tail -3 | cut -c1-300
    kc=$(( T_len == 512 ? 128 : 512 ))  # session 9's key blocks
    [ "$(left)" -gt 90 ] && $T $L $S --config.model.softplus.key_chunk=$kc --label=$tag/softplus_k$kc 2>&1 | tail -1 | cut -c1-200
  done
  cp $P/lssar.jsonl "$OUT/lssar.jsonl" 2>/dev/null
}

norm() {  # issue 15: the fused Pallas norms (model.norm_impl=pallas) against XLA's (16 % of the 42m step: session 11)
  local P=/tmp/norm; mkdir -p $P
  T="timeout 120 python3 -m benchmarks.throughput --steps=10 --warmup=3 --out=$P/norm.jsonl"
  for size in 42m 151m; do
    for impl in xla pallas; do
      grep -q "\"$size/logits_bf16/norm_$impl\"" $P/norm.jsonl 2>/dev/null || [ "$(left)" -lt 130 ] || \
        $T --config=experiments/base.py:$size --config.model.logits_dtype=bfloat16 \
        --config.model.norm_impl=$impl --label=$size/logits_bf16/norm_$impl 2>&1 | tail -1 | cut -c1-200
    done
  done
  for impl in xla pallas; do
    grep -q "\"9.4m/b64/m7/norm_$impl\"" $P/norm.jsonl 2>/dev/null || [ "$(left)" -lt 130 ] || \
      $T --config=experiments/base.py:9.4m --config.data.batch_size=64 --members=7 \
      --config.model.norm_impl=$impl --label=9.4m/b64/m7/norm_$impl 2>&1 | tail -1 | cut -c1-200
  done
  cp $P/norm.jsonl "$OUT/norm.jsonl" 2>/dev/null
}

side_by_side() {  # issue 15: the PyTorch reference and ours per size in this one call (ratios from one call only)
  [ "$(left)" -gt 200 ] || { echo "side_by_side: no time left"; return; }
  timeout "$(left)" python3 -m benchmarks.side_by_side --out="$OUT/side_by_side.jsonl" --sizes=9.4m,42m,151m \
    --steps=10 --warmup=3 --timeout=150 --ours_args="--config.model.logits_dtype=bfloat16" 2>&1 | tail -8 | cut -c1-300
}

executors() {  # executors SIZE: benchmarks/sweep_executors.sh with the ladder size SIZE (9.4m: the preset's own)
  [ "$(left)" -gt 180 ] || { echo "executors: no time left"; return; }
  local size=(); [ "$1" = 2.4m ] && size=(--config.model.d_model=256 --config.model.n_layers=3 --config.model.n_heads=4)
  timeout "$(left)" bash benchmarks/sweep_executors.sh "$OUT/executors_$1.jsonl" /tmp/runs $DATA "${size[@]}" 2>&1 \
    | grep -E "wall_seconds|rror" | cut -c1-300
}

gputests() {
  python3 -c "import pytest" 2>/dev/null || { echo "gputests: no pytest (carry its wheels in .whl)"; return; }
  timeout "$(left)" python3 -m pytest -q -p no:cacheprovider tests/models/test_lssar_pallas.py \
    tests/models/test_norm_pallas.py tests/models/test_variants.py -k "gpu or cudnn" 2>&1 | tail -15
}

for job in "$@"; do
  case $job in
  perf) perf ;;
  executors) executors 9.4m ;;
  executors_2.4m) executors 2.4m ;;
  profiles) profiles ;;
  lssar) lssar ;;
  norm) norm ;;
  gputests) gputests ;;
  side_by_side) side_by_side ;;
  eval_length:*) eval_length "${job#*:}" ;;
  *:*) study=${job%%:*} preset=${job#*:} dir=${job#*:}; preset=${preset%@*}
       [ "$dir" != "$preset" ] && dir=${dir#*@} || dir=${study}_$preset
       [ -f "experiments/$study.py" ] || { echo "no experiments/$study.py" >&2; exit 2; }
       [ -d /tmp/runs/$dir ] || [ ! -d experiments/results/sweeps/$dir ] || \
         { mkdir -p /tmp/runs && cp -r experiments/results/sweeps/$dir /tmp/runs/$dir; }
       sweep "$dir" "experiments/$study.py:$preset" ;;
  *) echo "unknown job $job; usage: BUDGET=S $0 STUDY:PRESET[@DIR]|eval_length:NAME|perf|profiles|lssar|norm|side_by_side|gputests|executors|executors_2.4m ..." >&2; exit 2 ;;
  esac
done
echo "queue ended after $(( $(date +%s) - t0 )) s"
