"""Runtime ops that launch the generated kernels (what exported graphs call).

`torch.ops.irfuse.kernel_norm` covers the RMSNorm family and standalone static quant:
its `kernel` argument (an encoded KernelSpec: producer, weight mode, norm output dtype,
quant scheme) selects the kernel, generated and compiled once per process (see
kernel_cache). Per call it checks only shapes, dtypes and
devices (no host sync) and launches one kernel, so it runs inside CUDA graphs.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch
import triton

from irfuse.kernels.norm import MAX_COLS
from irfuse.lowering.kernel_cache import load_kernel
from irfuse.lowering.to_triton import KernelSpec, kernel_source

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FP8 = torch.float8_e4m3fn


@functools.cache
def compiled_kernel(spec: KernelSpec) -> Any:
    return load_kernel(spec.name, kernel_source(spec))


@functools.cache
def decode(kernel: str) -> KernelSpec:
    return KernelSpec.decode(kernel)


def out_dtype(spec: KernelSpec, x: torch.Tensor) -> torch.dtype:
    if spec.quant == "static":
        return FP8
    return torch.float32 if spec.norm_out == "fp32" else x.dtype


def launch_config(n_rows: int, n_cols: int) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of `n_cols` elements, chosen by measurement on H200
    (bench/norm_quant.py --sweep): 16 warps from 4096 columns, 32 for few rows of 8192+."""
    block = triton.next_power_of_2(n_cols)
    if block >= 8192 and n_rows < 1024:
        return block, 32
    return block, max(4, min(16, block // 256))


def _check(
    spec: KernelSpec,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    scale: torch.Tensor | None,
) -> None:
    what = f"irfuse.kernel_norm ({spec.describe()})"
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or x.dim() == 0:
        raise TypeError(f"{what}: x must be a bf16/fp16/fp32 tensor, got {x.dtype} {x.shape}")
    if x.shape[-1] > MAX_COLS:
        raise ValueError(f"{what}: hidden size {x.shape[-1]} > {MAX_COLS} is not supported")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"{what}: residual {residual.dtype} {list(residual.shape)} must "
            f"match x {x.dtype} {list(x.shape)}"
        )
    if spec.producer != "quant":
        if weight is None or weight.shape != x.shape[-1:]:
            raise ValueError(f"{what}: weight must have shape [{x.shape[-1]}]")
        fp32_ok = spec.weight_mode == "gemma" and weight.dtype == torch.float32
        if weight.dtype != x.dtype and not fp32_ok:
            raise TypeError(f"{what}: weight dtype {weight.dtype} != input dtype {x.dtype}")
    if spec.quant == "static" and (
        scale is None or scale.dtype != torch.float32 or scale.numel() != 1
    ):
        raise ValueError(f"{what}: scale must be a one-element float32 tensor")
    for name, t in (("residual", residual), ("weight", weight), ("scale", scale)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{what}: {name} is on {t.device}, x on {x.device}")
    if x.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"{what}: irfuse kernels run on CUDA tensors (CPU tensors need TRITON_INTERPRET=1)"
        )


@torch.library.custom_op("irfuse::kernel_norm", mutates_args=())
def kernel_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    scale: torch.Tensor | None,
    eps: float,
    kernel: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the generated (add +) rms_norm (+ static fp8 quant) kernel `kernel`; returns
    (out, residual_out), residual_out empty without a residual."""
    spec = decode(kernel)
    _check(spec, x, residual, weight, scale)
    n_cols = x.shape[-1]
    x2 = x.reshape(-1, n_cols)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty(x2.shape, dtype=out_dtype(spec, x), device=x.device)
    residual2 = residual_out = None
    if residual is not None:
        residual2 = residual.reshape(-1, n_cols)
        if residual2.stride(-1) != 1:
            residual2 = residual2.contiguous()
        residual_out = torch.empty_like(x2)
    if x2.shape[0] and n_cols:
        block, num_warps = launch_config(x2.shape[0], n_cols)
        compiled_kernel(spec)[(x2.shape[0],)](
            x2,
            residual2 if residual2 is not None else x2,
            weight if weight is not None else x2,
            scale if scale is not None else x2,
            out,
            residual_out if residual_out is not None else out,
            n_cols,
            x2.stride(0),
            residual2.stride(0) if residual2 is not None else 0,
            out.stride(0),
            residual_out.stride(0) if residual_out is not None else 0,
            eps,
            BLOCK=block,
            INTERPRET=INTERPRET,
            num_warps=num_warps,
        )
    if residual_out is None:
        return out.view(x.shape), x.new_empty(0)
    return out.view(x.shape), residual_out.view(x.shape)


@kernel_norm.register_fake
def _(x, residual, weight, scale, eps, kernel):
    spec = decode(kernel)  # validates the spec at trace time
    out = x.new_empty(x.shape, dtype=out_dtype(spec, x))
    return out, (x.new_empty(x.shape) if residual is not None else x.new_empty(0))
