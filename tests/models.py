"""Small functions and modules written the way model code writes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8 = torch.float8_e4m3fn


def static_quant(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (y.float() / scale).clamp(-448, 448).to(FP8)


def add_rms_norm_quant(x, residual, weight, scale, eps: float = 1e-6):
    """F.rms_norm on a residual sum, then static fp8 quant (divide form)."""
    h = x + residual
    y = F.rms_norm(h, (h.shape[-1],), weight, eps)
    return static_quant(y, scale), h


def hf_rms_norm(x, weight, eps: float = 1e-5):
    """LlamaRMSNorm.forward."""
    v = x.to(torch.float32)
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    return weight * v.to(x.dtype)


def hf_norm_quant(x, weight, scale, eps: float = 1e-5):
    """HF norm, then quant written as multiply by the reciprocal with clamp(min=, max=)."""
    y = hf_rms_norm(x, weight, eps)
    return (y * (1.0 / scale)).clamp(min=-448.0, max=448.0).to(FP8)


def gemma_norm_quant(x, weight, scale, eps: float = 1e-6):
    v = x.float()
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    y = (v * (1.0 + weight.float())).type_as(x)
    return static_quant(y, scale)


class DecoderBlock(torch.nn.Module):
    """A Llama-style block with fp8 activation quant before each projection (the
    projections dequantize: fp8 GEMMs are not the point here)."""

    def __init__(self, hidden: int = 64, ffn: int = 128, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.attn_norm = torch.nn.Parameter(1 + 0.1 * torch.randn(hidden))
        self.mlp_norm = torch.nn.Parameter(1 + 0.1 * torch.randn(hidden))
        self.qkv = torch.nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = torch.nn.Linear(hidden, hidden, bias=False)
        self.up = torch.nn.Linear(hidden, 2 * ffn, bias=False)
        self.down = torch.nn.Linear(ffn, hidden, bias=False)
        self.register_buffer("act_scale", torch.tensor([0.05]))
        self.heads = 4

    def _qlinear(self, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        q = static_quant(x, self.act_scale)
        return linear(q.to(x.dtype) * self.act_scale.to(x.dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor):
        b, s, h = x.shape
        hidden = x + residual
        y = F.rms_norm(hidden, (h,), self.attn_norm, self.eps)
        q, k, v = self._qlinear(self.qkv, y).view(b, s, 3, self.heads, -1).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = self.out(a.transpose(1, 2).reshape(b, s, h))
        hidden = x + hidden
        y = F.rms_norm(hidden, (h,), self.mlp_norm, self.eps)
        gate, up = self._qlinear(self.up, y).chunk(2, dim=-1)
        return self._qlinear(self.down, F.silu(gate) * up), hidden
