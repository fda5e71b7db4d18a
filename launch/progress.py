"""A run's progress display: step, loss, tokens/s, MFU and ETA every `train.log_every` steps.

On a terminal (stderr is a TTY) one tqdm bar that redraws in place; otherwise (CI, pods, a file) one plain absl
INFO line per log step, so logs stay readable. tqdm, not rich: it is one small package with no dependencies of
its own, its bar writes to stderr beside absl's log lines without taking over the terminal, and it is what JAX
and Hugging Face training scripts already show.

MFU is launch/flops.py's count, the one the throughput benchmarks and --dry_run report (6 · N_matmul + the
attention term, per token) · tokens/s / (devices · peak), shown where the device's dense BF16 peak is known
(PEAK_FLOPS) and `–` elsewhere (CPU).
"""

from __future__ import annotations

import sys

from absl import logging

from launch import flops

# dense BF16 tensor-core peak per device, by jax's device_kind (datasheets; the H200's is launch/flops.py's)
PEAK_FLOPS = {
    "NVIDIA H200": flops.DATASHEET_PEAK_TFLOPS * 1e12, "NVIDIA H100 80GB HBM3": 989e12, "TPU v4": 275e12,
    "TPU v5p": 459e12,
}


def device_peak() -> tuple[float | None, int]:
    """(the dense BF16 peak FLOP/s of one local device, or None when unknown; the number of devices)."""
    import jax

    devices = jax.devices()
    return PEAK_FLOPS.get(devices[0].device_kind), len(devices)


def mfu(tokens_per_second: float, *, flops_per_token: float, n_devices: int, peak_flops: float | None) -> float | None:
    """launch/flops.py's MFU over n_devices · peak (FLOP/s); None without a known peak."""
    return None if peak_flops is None else flops.mfu(tokens_per_second, flops_per_token, peak_flops / 1e12, n_devices)


def duration(seconds: float) -> str:
    """`2.5d`, `1h02m`, `3m20s`, `45s`: the one way proxylab prints a duration (ETAs, plans, trial times)."""
    s = int(round(seconds))
    if s >= 86400:
        return f"{seconds / 86400:.1f}d"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Progress:
    """Progress of one run from step `start` to `total`: a bar when `tty` (default: stderr is a terminal), plain
    lines otherwise. `update` after each logged window; `close` at the end."""

    def __init__(self, total: int, start: int, tty: bool | None = None, file=None):
        self.total = total
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", file=file or sys.stderr, dynamic_ncols=True,
                            leave=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")

    def update(self, step: int, *, loss: float, tokens_per_second: float, mfu: float | None, eta: float,
               lr: float | None = None) -> None:
        mfu_text = "–" if mfu is None else f"{100 * mfu:.1f}%"
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={loss:.4f}, {tokens_per_second / 1e3:.1f}k tok/s, mfu={mfu_text}, "
                                     f"eta {duration(eta)}", refresh=False)
            self.bar.update(step - self.bar.n)
            return
        logging.info("step %7d/%d | loss %8.4f | lr %s | %9.1fk tok/s | mfu %s | eta %s", step, self.total, loss,
                     "–" if lr is None else f"{lr:.2e}", tokens_per_second / 1e3, mfu_text, duration(eta))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
