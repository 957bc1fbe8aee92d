"""RMSNorm reference ops (see shared/NUMERICS.md, "Normalization")."""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES, check_same_shape, check_tensor, fmt_shape, ne


def _check_norm(op: str, x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool) -> None:
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    check_tensor(op, "weight", weight, dtypes=FLOAT_DTYPES, ndim=1, device=x.device)
    if weight.dtype != x.dtype and not (gemma and weight.dtype == torch.float32):
        extra = " (or float32 with gemma=True)" if not gemma else " or float32"
        raise TypeError(
            f"irfuse.{op}: weight dtype must equal x dtype {x.dtype}{extra}, got {weight.dtype}"
        )
    if ne(weight.shape[0], x.shape[-1]):
        raise ValueError(
            f"irfuse.{op}: weight must have shape [{x.shape[-1]}] (last dim of x), "
            f"got {fmt_shape(weight)}"
        )
    if isinstance(eps, (int, float)) and eps < 0:
        raise ValueError(f"irfuse.{op}: eps must be non-negative, got {eps!r}")


def _normalize(s: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool, dtype):
    """Norm of the fp32 tensor `s`, result in `dtype`."""
    r = s * torch.rsqrt(s.pow(2).mean(dim=-1, keepdim=True) + eps)
    if gemma:
        y = (r * (1.0 + weight.float())).to(dtype)
    else:
        y = r.to(dtype) * weight
    return y.contiguous()


@torch.library.custom_op("irfuse::rms_norm", mutates_args=())
def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> torch.Tensor:
    """y = (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(dtype) * w; gemma: fp32 * (1 + w_f32)."""
    _check_norm("rms_norm", x, weight, eps, gemma)
    return _normalize(x.float(), weight, eps, gemma, x.dtype)


@rms_norm.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False) -> torch.Tensor:
    _check_norm("rms_norm", x, weight, eps, gemma)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _check_fused_add(x, residual, weight, eps, gemma) -> None:
    op = "fused_add_rms_norm"
    _check_norm(op, x, weight, eps, gemma)
    check_tensor(op, "residual", residual, dtypes=(x.dtype,), device=x.device)
    check_same_shape(op, "residual", residual, "x", x)


@torch.library.custom_op("irfuse::fused_add_rms_norm", mutates_args=())
def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """s = x_f32 + res_f32; returns (rms_norm of s, s.to(dtype)); variance on unrounded s."""
    _check_fused_add(x, residual, weight, eps, gemma)
    s = x.float() + residual.float()
    return _normalize(s, weight, eps, gemma, x.dtype), s.to(x.dtype).contiguous()


@fused_add_rms_norm.register_fake
def _(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, gemma: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_fused_add(x, residual, weight, eps, gemma)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    return y, torch.empty_like(x, memory_format=torch.contiguous_format)
