"""Small functions and modules written the way model code writes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from irfuse.demo import DecoderBlock, static_quant

FP8 = torch.float8_e4m3fn
__all__ = ["DecoderBlock", "static_quant"]


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


def t5_rms_norm(x, weight, eps: float = 1e-6):
    """T5LayerNorm.forward: x itself times the fp32 rsqrt (promoted, not cast)."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return weight * (x * torch.rsqrt(variance + eps)).to(weight.dtype)


def t5_norm_quant(x, weight, scale, eps: float = 1e-6):
    return static_quant(t5_rms_norm(x, weight, eps), scale)


def squared_by_mul_rms_norm(x, weight, eps: float = 1e-6):
    """The square as `xf * xf`."""
    xf = x.float()
    return weight * (xf * torch.rsqrt((xf * xf).mean(-1, keepdim=True) + eps)).to(x.dtype)


def squared_by_mul_norm_quant(x, weight, scale, eps: float = 1e-6):
    return static_quant(squared_by_mul_rms_norm(x, weight, eps), scale)


def cast_twice_rms_norm(x, weight, eps: float = 1e-6):
    """x cast to fp32 once for the variance and again for the product."""
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return weight * (x.to(torch.float32) * torch.rsqrt(variance + eps)).to(x.dtype)


def cast_twice_norm_quant(x, weight, scale, eps: float = 1e-6):
    return static_quant(cast_twice_rms_norm(x, weight, eps), scale)


def vllm_add_rms_norm(x, residual, weight, eps: float = 1e-6):
    """vLLM's RMSNorm.forward_native with a residual: the sum kept in fp32 for the norm,
    the residual stream rounded back to the model dtype."""
    orig_dtype = x.dtype
    x = x.to(torch.float32) + residual.to(torch.float32)
    residual = x.to(orig_dtype)
    x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)
    return x.to(orig_dtype) * weight, residual


def vllm_add_norm_quant(x, residual, weight, scale, eps: float = 1e-6):
    y, residual = vllm_add_rms_norm(x, residual, weight, eps)
    return static_quant(y, scale), residual


def gemma_rms_norm(x, weight, eps: float = 1e-6):
    """Gemma3RMSNorm.forward: times `1 + w` in fp32, cast back."""
    v = x.float()
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    return (v * (1.0 + weight.float())).type_as(x)


def gemma_norm_quant(x, weight, scale, eps: float = 1e-6):
    return static_quant(gemma_rms_norm(x, weight, eps), scale)


def per_token_quant(y):
    """Dynamic per-token fp8 as vLLM's reference writes it: (q, scale)."""
    amax = y.float().abs().amax(-1, keepdim=True)
    scale = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (y.float() / scale).clamp(-448.0, 448.0).to(FP8), scale


def _sandwich_quant(norm, attn_out, residual, w_post, w_pre, scale):
    h = residual + norm(attn_out, w_post)
    y = norm(h, w_pre)
    return (static_quant(y, scale), h) if scale is not None else (*per_token_quant(y), h)


def gemma_sandwich_quant(attn_out, residual, w_post, w_pre, scale=None):
    """Gemma's post-attention norm, the residual add, the pre-feedforward norm and a quant
    of its value (static with `scale`, else per token): (q, [scales,] the residual sum)."""
    return _sandwich_quant(gemma_rms_norm, attn_out, residual, w_post, w_pre, scale)


def glm4_sandwich_quant(attn_out, residual, w_post, w_pre, scale=None):
    """The same with HF's plain-weight norm (GLM-4's post_self_attn_layernorm, the next
    layer's input norm)."""
    return _sandwich_quant(hf_rms_norm, attn_out, residual, w_post, w_pre, scale)


def olmo2_rms_norm(x, weight, eps: float = 1e-6):
    """Olmo2RMSNorm.forward: the weight multiplied in fp32, then cast back."""
    v = x.to(torch.float32)
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)
    return (weight * v).to(x.dtype)


def post_norm_quant(norm, x, residual, weight, scale=None):
    """A post-norm (OLMo 2's `h = r + norm(attn_out)`) and the next projection's quant of
    the sum (static with `scale`, else per token): (q, [scales,] h)."""
    h = residual + norm(x, weight)
    return (static_quant(h, scale), h) if scale is not None else (*per_token_quant(h), h)


def add_hf_norm_quant(x, residual, weight, scale):
    """Residual add, HF norm, static quant: decomposed the same way on CPU and CUDA."""
    h = x + residual
    return static_quant(hf_rms_norm(h, weight), scale), h


class LlamaRMSNorm(torch.nn.Module):
    """HF's LlamaRMSNorm: eps is a module attribute, which torch.compile(dynamic=True)
    turns into a graph input."""

    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden))
        self.variance_epsilon = eps

    def forward(self, hidden_states):
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class AddNormQuant(torch.nn.Module):
    """Residual add, LlamaRMSNorm, static fp8 quant: the pre-projection chain of a layer."""

    def __init__(self, hidden: int):
        super().__init__()
        self.norm = LlamaRMSNorm(hidden)

    def forward(self, x, residual, scale):
        h = x + residual
        return static_quant(self.norm(h), scale), h


class Float8Linear(torch.nn.Module):
    """A linear whose input is quantized as torchao's Float8Tensor does, per row or per
    tensor (the scale divided in the input's dtype, widened, no lower bound); the matmul
    of the dequantized rows stands in for `_scaled_mm`. `views`: as torchao 0.18 writes
    it, x viewed to its reduction shape and the scale reshaped to its output shape (for
    these granularities both are x's and the scale's own shapes: the AOT graph keeps
    them as views, which Inductor's joint-graph passes remove)."""

    def __init__(self, n_in: int, n_out: int, granularity: str, views: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) / n_in**0.5)
        self.dims = (-1,) if granularity == "row" else (0, 1, 2)
        self.views = views
        self.bias: torch.nn.Parameter | None = None  # added to the product, as F.linear does

    @classmethod
    def replacing(cls, linear: torch.nn.Linear, granularity: str = "row") -> Float8Linear:
        """A Float8Linear with `linear`'s weight and bias."""
        new = cls(linear.in_features, linear.out_features, granularity)
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x):
        if self.views:
            b, s, k = x.shape
            amax = x.view(b, s, k).abs().amax(self.dims, keepdim=True)
            shape = (b, s, 1) if self.dims == (-1,) else (1, 1, 1)
            scale = (amax / 448.0).reshape(shape).to(torch.float32)
        else:
            scale = (x.abs().amax(self.dims, keepdim=True) / 448.0).to(torch.float32)
        q = (x.to(torch.float32) / scale).clamp(-448.0, 448.0).to(FP8)
        rows = q.float() * scale
        out = rows @ self.weight.float().t()
        return (out if self.bias is None else out + self.bias.float()).to(x.dtype)
