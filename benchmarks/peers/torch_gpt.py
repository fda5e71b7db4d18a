"""Throughput of our PyTorch reference of proxylab's baseline model (benchmarks/peers/torch_model.py), one JSON line.

    python -m benchmarks.peers.torch_gpt --size=151m [--batch=256 --seq=512 --vocab=32101 --steps=20 --warmup=5]
    python -m benchmarks.peers.torch_gpt --tiny --device=cpu --no_compile        # smoke test (d 64, L 2, T 64)

What is timed is a full training step on random tokens already on the device, as benchmarks/throughput.py does
for ours: bf16 autocast forward, float32 loss with z-loss 1e-4, backward, global-norm clipping at 1
(`clip_grad_norm_`), fused AdamW (β 0.9/0.95, ε 1e-8, weight decay on the kernels). `torch.compile` compiles the
forward + loss (unless --no_compile); attention runs PyTorch's flash SDPA (forced on CUDA). Shapes come from a
ladder size of experiments/base.py (read with `ast`, so ml-collections is not needed), head dim 64.

Output keys: label, size, tokens_per_second (tokens of the timed steps over their wall time, synchronised at both
ends, as ours), step_ms (median of the per-step CUDA-event times; wall per step on CPU), step_ms_mean,
peak_memory_gib, n_params (with the embedding), matmul_params, flops_per_token (launch/flops.py: the same
count as ours), mfu_datasheet (989 TFLOP/s), mfu_measured (790). CUDA out of memory is a result, not a crash:
`"oom": true` without timing keys, exit status 0.

AdamW's decay here is PyTorch's (lr · wd · θ), not proxylab's independent decay: the same work per step.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a file path, not with -m
    sys.path.insert(0, str(ROOT))

from launch import flops  # noqa: E402  (pure python)

HEAD_DIM = 64
TINY = dict(d_model=64, n_layers=2, n_heads=2, seq=64, batch=4, vocab=512)


def ladder(base_py: Path = ROOT / "experiments" / "base.py") -> dict[str, tuple[int, int, int]]:
    """experiments/base.py's LADDER {size: (d_model, n_layers, n_heads)}, read without importing the module."""
    for node in ast.parse(base_py.read_text()).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "LADDER":
            return ast.literal_eval(node.value)
    raise ValueError(f"no LADDER in {base_py}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="151m", help="a ladder size of experiments/base.py")
    p.add_argument("--tiny", action="store_true", help="d 64, L 2, H 2, seq 64, batch 4, vocab 512 (smoke test)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--vocab", type=int, default=32101)
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation, autotuning)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight_decay", type=float, default=1e-4)
    p.add_argument("--z_loss", type=float, default=1e-4)
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cuda | cpu")
    p.add_argument("--no_compile", action="store_true", help="eager mode (no torch.compile)")
    p.add_argument("--compile_mode", default=None, help="torch.compile mode, e.g. max-autotune (default: default)")
    p.add_argument("--peak_tflops", type=float, default=flops.DATASHEET_PEAK_TFLOPS)
    p.add_argument("--measured_peak_tflops", type=float, default=flops.MEASURED_PEAK_TFLOPS)
    p.add_argument("--label", default="", help="stored in the row; default torch/<size>")
    p.add_argument("--out", default="", help="append the JSON line to this file")
    return p.parse_args(argv)


def shapes(args: argparse.Namespace) -> dict:
    """Model and batch shapes from --tiny or --size plus --batch/--seq/--vocab."""
    if args.tiny:
        return dict(TINY, size="tiny", head_dim=TINY["d_model"] // TINY["n_heads"])
    table = ladder()
    if args.size not in table:
        raise SystemExit(f"--size={args.size!r}: choose one of {', '.join(table)}")
    d, L, H = table[args.size]
    return dict(size=args.size, d_model=d, n_layers=L, n_heads=H, head_dim=HEAD_DIM, seq=args.seq, batch=args.batch,
                vocab=args.vocab)


def flops_per_token(s: dict, matmul_params: int) -> float:
    return flops.model_flops_per_token(
        matmul_params, n_layers=s["n_layers"], head_dim=s["head_dim"], seq_len=s["seq"], windows=[None] * s["n_heads"]
    )


def result_row(args, s: dict, *, device: str, n_params: int, matmul_params: int, step_s: list[float] | None,
               wall_s: float | None, peak_memory_gib: float | None, extra: dict) -> dict:
    """The JSON row; `step_s` None means CUDA ran out of memory (no timing keys, `oom: true`)."""
    row = dict(
        label=args.label or f"torch/{s['size']}", size=s["size"], framework="pytorch", device=device,
        batch_size=s["batch"], seq_len=s["seq"], vocab_size=s["vocab"], d_model=s["d_model"],
        n_layers=s["n_layers"], n_heads=s["n_heads"], n_params=n_params, matmul_params=matmul_params,
        flops_per_token=flops_per_token(s, matmul_params), peak_tflops=args.peak_tflops,
        measured_peak_tflops=args.measured_peak_tflops, compiled=not args.no_compile, **extra,
    )
    if step_s is None:
        return dict(row, oom=True)
    tokens_per_s = s["batch"] * s["seq"] * len(step_s) / wall_s
    return dict(
        row, oom=False, steps=len(step_s), tokens_per_second=tokens_per_s,
        step_ms=1e3 * statistics.median(step_s), step_ms_mean=1e3 * wall_s / len(step_s),
        peak_memory_gib=peak_memory_gib,
        mfu_datasheet=flops.mfu(tokens_per_s, row["flops_per_token"], args.peak_tflops),
        mfu_measured=flops.mfu(tokens_per_s, row["flops_per_token"], args.measured_peak_tflops),
    )


def param_counts(s: dict) -> tuple[int, int]:
    """(all parameters, N_matmul) of torch_model.GPT at shapes `s`, without building it (an OOM row has them too):
    per block Wq Wk Wv Wo (d·H·Dh each) and W1 W2 (4d² each) plus 4 norm scales (2 of d, 2 of Dh); the head V·d
    counts as a matmul, the embedding V·d and the final norm's d do not. `measure` checks it against the model."""
    d, inner, V = s["d_model"], s["n_heads"] * s["head_dim"], s["vocab"]
    matmul = s["n_layers"] * (4 * d * inner + 8 * d * d) + V * d
    return matmul + V * d + s["n_layers"] * (2 * d + 2 * s["head_dim"]) + d, matmul


def is_oom(torch, e: BaseException) -> bool:
    """CUDA OOM, also when torch.compile wraps it in its own exception."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def measure(torch, args, s: dict, device: str) -> tuple[list[float], float, float | None]:
    """Builds the model and optimizer, runs warmup then timed steps; (per-step seconds, wall seconds, peak GiB)."""
    from benchmarks.peers.torch_model import GPT

    cuda = device == "cuda"
    model = GPT(vocab=s["vocab"], d_model=s["d_model"], n_layers=s["n_layers"], n_heads=s["n_heads"],
                head_dim=s["head_dim"], seq_len=s["seq"], z_loss=args.z_loss).to(device)
    n_params, matmul = param_counts(s)
    built = (sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters() if p.dim() >= 2))
    assert built == (n_params, matmul + s["vocab"] * s["d_model"]), (built, n_params, matmul)  # embedding is 2-D
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [dict(params=decay, weight_decay=args.weight_decay), dict(params=no_decay, weight_decay=0.0)],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=cuda,
    )
    loss_fn = model.loss if args.no_compile else torch.compile(model.loss, mode=args.compile_mode)
    batches = [torch.randint(0, s["vocab"], (s["batch"], s["seq"] + 1), device=device) for _ in range(4)]
    attention_ctx = contextlib.nullcontext
    if cuda:  # force the flash kernel (torch >= 2.3): an unsupported shape fails loudly instead of falling back
        from torch.nn.attention import SDPBackend, sdpa_kernel

        attention_ctx = functools.partial(sdpa_kernel, SDPBackend.FLASH_ATTENTION)

    def step(batch):
        with attention_ctx(), torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = loss_fn(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=cuda)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for i in range(args.warmup):
        step(batches[i % 4])
    sync()
    if cuda:
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.steps)]
    t0 = time.perf_counter()
    step_s = []
    for i in range(args.steps):
        if cuda:
            events[i][0].record()
        else:
            t_step = time.perf_counter()
        loss = step(batches[i % 4])
        if cuda:
            events[i][1].record()
        else:
            step_s.append(time.perf_counter() - t_step)
    sync()
    wall = time.perf_counter() - t0
    if not torch.isfinite(loss).item():
        raise FloatingPointError(f"non-finite loss {loss.item()}")
    if cuda:
        step_s = [a.elapsed_time(b) / 1e3 for a, b in events]
        return step_s, wall, torch.cuda.max_memory_allocated() / 2**30
    return step_s, wall, None


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    s = shapes(args)
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    extra = dict(torch_version=torch.__version__,
                 device_name=torch.cuda.get_device_name() if device == "cuda" else "cpu")
    n_params, matmul_params = param_counts(s)
    common = dict(device=device, n_params=n_params, matmul_params=matmul_params, extra=extra)
    try:
        step_s, wall, peak = measure(torch, args, s, device)
        row = result_row(args, s, step_s=step_s, wall_s=wall, peak_memory_gib=peak, **common)
    except Exception as e:  # noqa: BLE001  (only OOM is turned into a row)
        if not (device == "cuda" and is_oom(torch, e)):
            raise
        row = result_row(args, s, step_s=None, wall_s=None, peak_memory_gib=None, **common)
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return row


if __name__ == "__main__":
    main()
