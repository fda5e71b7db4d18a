"""The code a run runs, recorded in its config.json (`configs.PROVENANCE`, written by `configs.claim_workdir`), so
that numbers can be traced to a commit and a rerun under other code is noticed (it warns, it does not refuse)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
from pathlib import Path

PROVENANCE_PACKAGES = ("jax", "flax", "optax", "orbax-checkpoint")
_REPO = Path(__file__).resolve().parents[1]


def current() -> dict:
    """The code running now: the git commit, whether tracked files differ from it (`git_dirty`) and a sha256 of
    that difference, when proxylab runs from a git checkout, else the installed package version; and the versions
    of `PROVENANCE_PACKAGES`."""

    def git(*args) -> str:
        return subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, check=True,
                              timeout=30).stdout

    try:
        diff = git("diff", "HEAD", "--no-ext-diff")
        code = {"git_commit": git("rev-parse", "HEAD").strip(), "git_dirty": bool(diff)}
        if diff:
            code["git_diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (an installed package)
        code = {"version": importlib.metadata.version("proxylab")}
    return {**code, **{name: importlib.metadata.version(name) for name in PROVENANCE_PACKAGES}}


def change(recorded: dict, now: dict) -> str | None:
    """What differs between the provenance a run recorded and `now`'s ("jax 0.11.2 -> 0.11.3, ..."), or None."""
    diff = [f"{k} {recorded.get(k)} -> {now.get(k)}" for k in sorted(set(recorded) | set(now))
            if recorded.get(k) != now.get(k)]
    return ", ".join(diff) or None
