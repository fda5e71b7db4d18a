"""The PyTorch GPT that benchmarks/peers/torch_gpt.py times: proxylab's baseline model, written for PyTorch.

Same architecture as models/transformer.py with the ladder presets' settings: pre-LN blocks, LayerNorm with a
learned scale and no bias (eps 1e-6, statistics in float32), per-head qk-layernorm (one scale over Dh shared by
the heads, separate for q and k) before RoPE, RoPE in float32 with the rotate-half (GPT-NeoX) pairing of
models/attention.py `rope`, causal softmax attention through `F.scaled_dot_product_attention(is_causal=True)`,
GELU MLP (tanh approximation, jax.nn.gelu's default) of width 4d, untied output head, no biases anywhere.
Parameters are float32; the caller runs the forward under bf16 autocast. Loss: mean CE plus z-loss
coef · mean(log² Z) on float32 logits (the head matmul writes bf16 under autocast, then `.float()`: the numerics
of proxylab's `model.logits_dtype=bfloat16`).

Init is plain N(0, 0.02²): throughput does not depend on it, so we do not reproduce model.init here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rope_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, Dh/2] in float32: angle t · base^(-2i/Dh) for pair i (channel i with channel i + Dh/2)."""
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float32) * 2.0 / head_dim)
    angle = torch.arange(seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]
    return torch.cos(angle), torch.sin(angle)


def apply_rope(x_BxTxHxK: torch.Tensor, cos_TxF: torch.Tensor, sin_TxF: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in float32, cast back to x's dtype (models/attention.py `rope`)."""
    half = x_BxTxHxK.shape[-1] // 2
    x = x_BxTxHxK.float()
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos_TxF[None, :, None, :], sin_TxF[None, :, None, :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x_BxTxHxK.dtype)


class Block(nn.Module):
    """x + Attn(LN1(x)), then + MLP(LN2(x))."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, eps: float):
        super().__init__()
        inner = n_heads * head_dim
        self.n_heads, self.head_dim = n_heads, head_dim
        self.norm1 = nn.LayerNorm(d_model, eps=eps, bias=False)
        self.q = nn.Linear(d_model, inner, bias=False)
        self.k = nn.Linear(d_model, inner, bias=False)
        self.v = nn.Linear(d_model, inner, bias=False)
        self.o = nn.Linear(inner, d_model, bias=False)
        self.q_norm = nn.LayerNorm(head_dim, eps=eps, bias=False)
        self.k_norm = nn.LayerNorm(head_dim, eps=eps, bias=False)
        self.norm2 = nn.LayerNorm(d_model, eps=eps, bias=False)
        self.fc1 = nn.Linear(d_model, 4 * d_model, bias=False)
        self.fc2 = nn.Linear(4 * d_model, d_model, bias=False)

    def attention(self, x_BxTxD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x_BxTxD.shape
        shape = (B, T, self.n_heads, self.head_dim)
        q = self.q(x_BxTxD).view(shape)
        k = self.k(x_BxTxD).view(shape)
        v = self.v(x_BxTxD).view(shape)
        # qk-layernorm (float32 under autocast), then RoPE, then back to v's (bf16) dtype for the flash kernel
        q = apply_rope(self.q_norm(q), cos, sin).to(v.dtype)
        k = apply_rope(self.k_norm(k), cos, sin).to(v.dtype)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        return self.o(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def forward(self, x_BxTxD: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x_BxTxD = x_BxTxD + self.attention(self.norm1(x_BxTxD), cos, sin)
        return x_BxTxD + self.fc2(F.gelu(self.fc1(self.norm2(x_BxTxD)), approximate="tanh"))


class GPT(nn.Module):
    """Token embedding, L pre-LN blocks, final LayerNorm, untied head; `loss(tokens_BxS)` on S = T + 1 tokens."""

    def __init__(self, *, vocab: int, d_model: int, n_layers: int, n_heads: int, head_dim: int, seq_len: int,
                 z_loss: float = 1e-4, eps: float = 1e-6):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, head_dim, eps) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(d_model, eps=eps, bias=False)
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.z_loss = z_loss
        cos, sin = rope_tables(seq_len, head_dim)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def loss(self, tokens_BxS: torch.Tensor) -> torch.Tensor:
        inputs, targets = tokens_BxS[:, :-1], tokens_BxS[:, 1:]
        x = self.embed(inputs)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        logits_BxTxV = self.head(self.final_norm(x)).float()
        logits = logits_BxTxV.reshape(-1, logits_BxTxV.shape[-1])
        ce = F.cross_entropy(logits, targets.reshape(-1))
        logz = torch.logsumexp(logits, dim=-1)
        return ce + self.z_loss * logz.square().mean()
