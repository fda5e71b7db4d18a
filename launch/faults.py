"""Deterministic fault injection for the fault suite (tests/faults/): the one reader of `PROXYLAB_FAULT`.

The variable is read once, at import; unset (every real run) `maybe_fail` is one comparison and nothing else in
the program changes. Set, it names ONE fault:

    kill_at:<point>:<n>              SIGKILL this process the n-th time (n >= 1) it reaches <point>
    nan_at:<target>:<step>[:<member>]   a NaN at train step <step> (1-based, as in metrics.jsonl);
    inf_at:<target>:<step>[:<member>]   the same with +inf

Points (`POINTS`, the call sites in launch/loop.py and launch/checkpoint.py):
    step        after a train step is dispatched (its computation may still be running)
    ckpt_write  after orbax has written and finalised a checkpoint, before its checksum manifest exists
    eval        after an eval pass, before its rows are written
    summary     after the final checkpoint, before a member's summary.json is written

Targets (`TARGETS`):
    params      the parameters of member <member> (default 0) are replaced by the value before step <step> runs, on
                the host side of the loop, outside the jitted step: that step's loss is non-finite
    loss, grads inside the jitted step (launch/step.py; every member of the program), when the step's data position
                is <step>: the loss, or every gradient, times the value
"""

from __future__ import annotations

import dataclasses
import os
import signal

POINTS = ("step", "ckpt_write", "eval", "summary")
TARGETS = ("params", "loss", "grads")
VALUES = {"nan_at": float("nan"), "inf_at": float("inf")}


@dataclasses.dataclass(frozen=True)
class Kill:
    point: str
    n: int


@dataclasses.dataclass(frozen=True)
class NonFinite:
    target: str
    step: int
    member: int
    value: float


def parse(spec: str) -> Kill | NonFinite | None:
    """The fault that `spec` (a PROXYLAB_FAULT value) names; None for ""; ValueError for anything malformed."""
    if not spec:
        return None
    kind, *args = spec.split(":")
    try:
        if kind == "kill_at" and len(args) == 2 and args[0] in POINTS and int(args[1]) >= 1:
            return Kill(args[0], int(args[1]))
        if kind in VALUES and len(args) in (2, 3) and args[0] in TARGETS and int(args[1]) >= 1:
            return NonFinite(args[0], int(args[1]), int(args[2]) if len(args) == 3 else 0, VALUES[kind])
    except ValueError:
        pass
    raise ValueError(
        f"PROXYLAB_FAULT={spec!r}: expected kill_at:<{'|'.join(POINTS)}>:<n> or nan_at|inf_at:"
        f"<{'|'.join(TARGETS)}>:<step>[:<member>]"
    )


FAULT = parse(os.environ.get("PROXYLAB_FAULT", ""))
_reached = dict.fromkeys(POINTS, 0)


def maybe_fail(point: str) -> None:
    """SIGKILLs this process if the fault is `kill_at:<point>:<n>` and this is the n-th time `point` is reached."""
    if FAULT is None or not isinstance(FAULT, Kill) or FAULT.point != point:
        return
    _reached[point] += 1
    if _reached[point] == FAULT.n:
        os.kill(os.getpid(), signal.SIGKILL)


def nonfinite(target: str) -> NonFinite | None:
    """The non-finite fault on `target` ("params", "loss" or "grads"), or None."""
    return FAULT if isinstance(FAULT, NonFinite) and FAULT.target == target else None
