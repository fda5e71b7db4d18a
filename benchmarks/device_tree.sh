#!/usr/bin/env bash
# Keeps the working tree sent to the GPU machine under its 64 MiB limit: the committed sweep directories
# (experiments/results/sweeps, ~50 MB of metrics.jsonl) travel with every call, yet a call needs only those its
# `STUDY:PRESET@DIR` jobs resume from. Run here, not on the GPU machine:
#   bash benchmarks/device_tree.sh out [DIR...]   moves every experiments/results/sweeps/* except the DIRs named
#                                                 to $HELD (default /tmp/proxylab_held_sweeps) and prints the size
#                                                 that will travel
#   bash benchmarks/device_tree.sh back           moves them back (run it before any commit: until then git sees the
#                                                 held directories as deleted, and runs record git_dirty)
set -euo pipefail
HELD=${HELD:-/tmp/proxylab_held_sweeps}; SWEEPS=experiments/results/sweeps
case "${1:-}" in
  out)
    shift; mkdir -p "$HELD"
    for d in "$SWEEPS"/*/; do
      name=$(basename "$d"); keep=0
      for k in "$@"; do [ "$k" = "$name" ] && keep=1; done
      [ $keep = 1 ] || mv "$d" "$HELD/$name"
    done
    echo "held $(ls "$HELD" | wc -l) sweep directories in $HELD; tracked files left: $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
    ;;
  back)
    [ -d "$HELD" ] || { echo "nothing held in $HELD"; exit 0; }
    for d in "$HELD"/*/; do [ -d "$d" ] && mv "$d" "$SWEEPS/"; done
    rmdir "$HELD"; git status --short -- "$SWEEPS" | head -5
    ;;
  *) echo "usage: $0 out [DIR...] | back" >&2; exit 2 ;;
esac
