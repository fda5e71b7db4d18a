"""`train.compilation_cache` (launch/loop.py `enable_compilation_cache`): a second process that trains the same
tiny program loads every executable from the persistent cache instead of compiling it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import helpers

# One short run in a fresh process; prints the process's jax compilation-cache events (jax.monitoring, public API).
RUN = """
import json, sys
from jax import monitoring
events = {}
monitoring.register_event_listener(lambda event, **_: events.__setitem__(event, events.get(event, 0) + 1))
from experiments import base
from launch import configs, loop
cfg = configs.apply_overrides(base.get_config("tiny"), {
    "data.source": "synthetic", "train.steps": 2, "train.log_every": 1, "train.eval_every": 2, "train.eval_batches": 1,
    "train.progress": False, "train.compilation_cache": sys.argv[1],
    "model.n_layers": 1})  # one layer: the same init, step and eval programs to cache, each compiled in less time
loop.train(cfg, sys.argv[2])
print(json.dumps({k.rsplit("/", 1)[1]: v for k, v in events.items() if "compilation_cache" in k}))
"""


def run(cache: str, workdir, cache_root) -> dict:
    """The cache events of a 2-step run in a new process, with $PROXYLAB_CACHE (the data cache root) `cache_root`."""
    env = dict(os.environ, PROXYLAB_CACHE=str(cache_root))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run([sys.executable, "-c", RUN, cache, str(workdir)], cwd=helpers.REPO, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_cache(tmp_path):
    """The default ("") puts the cache in <data cache root>/xla."""
    cache = tmp_path / "root" / "xla"
    first = run("", tmp_path / "a", tmp_path / "root")
    entries = sorted(p.name for p in cache.iterdir())
    assert first.get("cache_misses", 0) >= 3 and len(entries) >= first["cache_misses"]  # init, step, eval at least
    assert first.get("cache_hits", 0) == 0
    second = run(str(cache), tmp_path / "b", tmp_path / "elsewhere")  # the same directory, named explicitly  # a fresh run directory: the same programs
    assert second.get("cache_hits", 0) == first["cache_misses"] and second.get("cache_misses", 0) == 0
    assert sorted(p.name for p in cache.iterdir()) == entries


def test_off_uses_no_cache(tmp_path):
    events = run("off", tmp_path / "a", tmp_path / "root")
    assert events.get("cache_hits", 0) == 0 and events.get("cache_misses", 0) == 0
    assert not (tmp_path / "root" / "xla").exists()
