#!/usr/bin/env bash
# Session 9's H200 calls, run from the repo root on the GPU machine; writes into $OUT.
#   bash benchmarks/h200_session9.sh proxies SHARDS   Figure 1 at 2.4m (experiments/small_scale_proxies.py:gpu_2.4m,
#                                                     3 seeds) on the code9 corpus; SHARDS: which of the 6 programs
#                                                     (--shard=i/6), e.g. "0 1 2 3 4"; the sweep dir comes back as a tgz
# The corpus travels compressed in gpu_data/code9 (ignored by git, carried): the Python sources of the CPU
# machine's project venv site-packages (8832 files, 136 MB), byte-level BPE 32101, 31.9M tokens; see
# gpu_data/code9/SHA256SUMS and benchmarks/RESULTS.md.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
if [ -d .whl ]; then  # the GPU image lacks ml-collections and tensorboardX
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
*) echo "usage: $0 proxies SHARDS" >&2; exit 2 ;;
esac
