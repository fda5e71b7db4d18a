"""Model FLOPs per token and MFU: the one count used by benchmarks/throughput.py and benchmarks/peers/torch_gpt.py.

Pure python (no jax, no torch), so the PyTorch peer and the JAX benchmark share it. For one training step
(forward + backward), per token:

    FLOPs/token = 6 · N_matmul + 12 · Σ_layers Σ_heads Dh · T_eff(head)

  N_matmul   every parameter that takes part in a matmul: each kernel with >= 2 axes (Wq, Wk, Wv, Wo, W1, W2,
             MLRA factors, the output head V·d, counted also when tied to the embedding). Not counted: the
             input-embedding lookup (a gather) and the 1-D norm scales. 2 FLOPs per parameter per token forward,
             4 backward (input and weight gradients): 6 (Kaplan et al. 2020 §2.1; PaLM, App. B).
  attention  per head and query, the score matmul q·kᵀ and the value matmul p·v each cost 2·Dh FLOPs per key
             the query attends to: 4·Dh forward, 8·Dh backward, 12·Dh per (query, attended key) pair.
  T_eff      the mean number of keys a query attends to: for a causal head over T positions (T + 1) / 2; for a
             causal sliding-window head of w keys (the query included; attention=ls local heads)
             (1/T) Σ_i min(i + 1, w), which is ≈ w for w ≪ T and (T + 1) / 2 for w >= T.

Convention: model FLOPs count the attended (query, key) pairs, so causal masking halves the attention term.
PaLM (App. B) and most MFU tables count 12·L·H·Dh·T, as if every query saw every key; we do not, because (1)
what a causal flash kernel computes is the lower triangle (cuDNN, FlashAttention and PyTorch's flash SDPA skip
the masked blocks), (2) it is the only convention under which a local head of window w costs ∝ w while a
global head costs ∝ T on the same footing, and (3) MFU is meant to count useful model work, which the masked
half is not. At the ladder shapes up to 302M (T = 512) the attention term is then 3–4% of the total instead of 6–8%
(151M: 12·12·16·64·256.5 = 37.8M vs 6·N_matmul = 1.10G FLOPs/token), so MFU under this rule is a few percent
lower than under PaLM's. Implementations that do compute the masked entries (the explicit float32 XLA path,
LSSAR's T × T weights) are charged the same model FLOPs: the extra work is theirs, not the model's.

MFU = tokens/s · FLOPs/token / (n_devices · peak). Headline peak: the H200 datasheet's dense BF16 rate, 989
TFLOP/s; beside it the 790 TFLOP/s that a bf16 GEMM reached on our H200 (DESIGN §7, "measured peak").
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

DATASHEET_PEAK_TFLOPS = 989.0  # NVIDIA H200 SXM, dense BF16 tensor-core peak (the sparse figure is 2x)
MEASURED_PEAK_TFLOPS = 790.0  # bf16 dense GEMM rate measured on our H200 (DESIGN §7)


def mean_attended_keys(seq_len: int, window: int | None = None) -> float:
    """T_eff: keys attended per query, averaged over the T query positions of a causal head (window=None: all
    earlier keys and itself; window=w: the last w keys, the query included)."""
    T = seq_len
    w = T if window is None else min(window, T)
    # queries 0..w-1 see i+1 keys (w(w+1)/2 in all); queries w..T-1 see w keys each
    return (w * (w + 1) / 2 + (T - w) * w) / T


def head_windows(model_cfg) -> list[int | None]:
    """Per head, the window of keys it attends to (None = every earlier key), read from a model config with
    attribute access (`attention`, `n_heads`, and for attention=ls `ls.n_global`, `ls.window`)."""
    H = model_cfg.n_heads
    if model_cfg.attention == "ls":
        g = model_cfg.ls.n_global
        return [None] * g + [model_cfg.ls.window] * (H - g)
    return [None] * H


def attention_flops_per_token(*, n_layers: int, head_dim: int, seq_len: int, windows: Sequence[int | None]) -> float:
    """12 · Dh · T_eff per head and layer (forward + backward of q·kᵀ and p·v), summed over heads and layers."""
    per_layer = sum(12.0 * head_dim * mean_attended_keys(seq_len, w) for w in windows)
    return n_layers * per_layer


def model_flops_per_token(
    n_matmul: int, *, n_layers: int, head_dim: int, seq_len: int, windows: Sequence[int | None]
) -> float:
    """Training FLOPs per token: 6 · N_matmul + the attention term (module docstring)."""
    return 6.0 * n_matmul + attention_flops_per_token(
        n_layers=n_layers, head_dim=head_dim, seq_len=seq_len, windows=windows
    )


def matmul_params(shapes: Iterable[Sequence[int]], *, tied_head_size: int = 0) -> int:
    """N_matmul from the shapes of every parameter except the input-embedding table: kernels (>= 2 axes) count,
    1-D norm scales and scalars do not; `tied_head_size` adds V·d when the head reuses the embedding."""
    return sum(math.prod(s) for s in shapes if len(s) >= 2) + tied_head_size


def mfu(tokens_per_second: float, flops_per_token: float, peak_tflops: float, n_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over n_devices · peak."""
    return tokens_per_second * flops_per_token / (peak_tflops * 1e12 * n_devices)
