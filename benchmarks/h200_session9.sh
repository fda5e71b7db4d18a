#!/usr/bin/env bash
# Session 9's H200 calls, run from the repo root on the GPU machine; writes into $OUT.
#   bash benchmarks/h200_session9.sh proxies SHARDS   Figure 1 at 2.4m (experiments/small_scale_proxies.py:gpu_2.4m,
#                                                     3 seeds) on the code9 corpus; SHARDS: which of the 6 programs
#                                                     (--shard=i/6), e.g. "0 1 2 3 4"; the sweep dir comes back as a tgz
#   bash benchmarks/h200_session9.sh perf             issue 15: side by side at 151m, loss-head and LSSAR variants,
#                                                     the compilation cache's first-trial time
#   bash benchmarks/h200_session9.sh fp8              experiments/fp8_smooth_swiglu.py:gpu
# The corpus travels compressed in gpu_data/code9 (ignored by git, carried): the Python sources of the CPU
# machine's project venv site-packages (8832 files, 136 MB), byte-level BPE 32101, 31.9M tokens; see
# gpu_data/code9/SHA256SUMS and benchmarks/RESULTS.md.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # the GPU image lacks ml-collections and tensorboardX, and its flax 0.12.10 predates sow(capture_noop)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
CORPUS=/tmp/code9
if [ ! -f $CORPUS/tokens.npy ]; then
  mkdir -p $CORPUS && cp gpu_data/code9/doc_ends.npy gpu_data/code9/tokenizer.json $CORPUS/
  python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('gpu_data/code9/tokens.npy.xz'), open('$CORPUS/tokens.npy', 'wb'))"
  (cd $CORPUS && sha256sum tokens.npy)
fi
DATA="--config.data.source=prepared --config.data.prepared_dir=$CORPUS"
case "${1:-}" in
proxies)
  dir=/tmp/runs/proxies_2.4m
  budget=${BUDGET:-540}; t0=$(date +%s)
  for i in ${2:-0 1 2 3 4 5}; do
    left=$(( budget - ($(date +%s) - t0) )); [ $left -gt 60 ] || break
    timeout $left python3 -m launch.sweep --config=experiments/small_scale_proxies.py:gpu_2.4m --workdir=$dir \
      --executor=batched --shard=$i/6 $DATA 2>&1 | grep -v '^step ' | grep -E "sweep|trial|error|Error|report" | cut -c1-200
    echo "shard $i/6 ended after $(( $(date +%s) - t0 )) s"
  done
  wc -l $dir/results.jsonl
  tar czf "$OUT/proxies_2.4m_$(echo ${2:-all} | tr ' ' '_').tgz" --exclude=checkpoints -C /tmp/runs proxies_2.4m
  ;;
perf)  # issue 15: side by side with the padded-vocab head (the default now), head A/B, LSSAR blocked, compile cache
  python3 -m benchmarks.side_by_side --out="$OUT/side_by_side.jsonl" --sizes=151m --steps=10 --warmup=3 \
    --timeout=150 > "$OUT/side_by_side.log" 2>&1; tail -8 "$OUT/side_by_side.log"
  T="timeout 100 python3 -m benchmarks.throughput --steps=10 --warmup=3 --out=$OUT/variants.jsonl"
  $T --config=experiments/base.py:151m --config.model.pad_vocab_to=1 --label=151m/head_unpadded 2>&1 | tail -1 | cut -c1-200
  B="--config=experiments/base.py:9.4m --config.data.batch_size=64 --config.model.qk_norm=False"
  $T $B --label=9.4m/b64/softmax 2>&1 | tail -1 | cut -c1-200
  $T $B --config.model.attention=softplus --config.model.softplus.key_chunk=128 --label=9.4m/b64/softplus_k128 2>&1 | tail -1 | cut -c1-200
  L="--config=experiments/base.py:9.4m --config.data.batch_size=8 --config.data.seq_len=4096 --config.model.qk_norm=False"
  $T $L --label=9.4m/b8xT4096/softmax 2>&1 | tail -1 | cut -c1-200
  $T $L --config.model.attention=softplus --config.model.softplus.key_chunk=512 --label=9.4m/b8xT4096/softplus_k512 2>&1 | tail -1 | cut -c1-200
  timeout 150 python3 -m benchmarks.compile_cache --config=experiments/base.py:9.4m --label=h200/9.4m --out="$OUT/compile_cache.jsonl" \
    --train_args="--config.train.steps=20 --config.train.eval_every=20 --config.train.ckpt_every=20 $DATA" 2>&1 | tail -4 | cut -c1-200
  ;;
fp8)  # issue 11/17: experiments/fp8_smooth_swiglu.py:gpu (4 arms x 3 seeds), the sweep dir back as a tgz
  dir=/tmp/runs/fp8_gpu
  timeout ${BUDGET:-330} python3 -m launch.sweep --config=experiments/fp8_smooth_swiglu.py:gpu --workdir=$dir \
    --executor=batched $DATA 2>&1 | grep -v '^step ' | grep -E "sweep|trial|rror|report|\] \[" | cut -c1-220
  wc -l $dir/results.jsonl
  tar czf "$OUT/fp8_gpu.tgz" --exclude=checkpoints -C /tmp/runs fp8_gpu
  ;;
*) echo "usage: $0 proxies SHARDS | perf | fp8" >&2; exit 2 ;;
esac
