#!/usr/bin/env bash
# The two set-up commands of the README (both idempotent):
#   bash tasks.sh demo   create .venv (Python 3.12), install proxylab, run the main job (the CPU LR sweep) on the embedded data
#   bash tasks.sh test   create .venv (Python 3.12), install proxylab + test deps (+ Chromium where missing), run the test suite
set -euo pipefail
cd "$(dirname "$0")"

find_python() {  # a Python 3.12 interpreter: $PYTHON, python3.12, python3, or a pyenv-installed 3.12
  local c v
  for c in "${PYTHON:-}" python3.12 python3; do
    [ -n "$c" ] || continue
    v=$("$c" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
    [ "$v" = "3.12" ] && { echo "$c"; return; }
  done
  if command -v pyenv >/dev/null; then
    v=$(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | tail -n 1)
    [ -n "$v" ] && { echo "$(pyenv root)/versions/$v/bin/python3.12"; return; }
  fi
  echo "error: proxylab needs Python 3.12 (set PYTHON=/path/to/python3.12)" >&2
  exit 2
}

setup() {  # $1: pip extras
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[$1]"
}

ensure_chromium() {  # the browser test's headless Chromium (tests/launch/report/test_html.py): installed from the OS
  # packages where it is missing and we are root with apt-get (CI's fresh machine); elsewhere the test skips
  command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium (apt-get) for the browser test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: no chromium and no root apt-get: the browser test will skip" >&2
  fi
}

case "${1:-}" in
  demo)
    setup test
    .venv/bin/python -m launch.sweep --config=experiments/small_scale_proxies.py:tiny --workdir=runs/demo_sweep --executor=auto
    exec .venv/bin/python -m launch.report runs/demo_sweep --metric=attn_max_logit/layer_0 --log_y
    ;;
  test)
    setup "test,tfds,wandb,ray"
    ensure_chromium
    exec .venv/bin/python -m pytest -q -n 2 --dist loadfile tests  # two workers, whole files each (shared fixtures)
    ;;
  *)
    echo "usage: bash tasks.sh demo|test" >&2
    exit 2
    ;;
esac
