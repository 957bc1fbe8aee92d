"""Shared test helpers: tolerances from NUMERICS.md and the dequantized fp8 compare."""

from __future__ import annotations

import torch

import irfuse.ops as ref
from irfuse.lowering import runtime
from irfuse.ops.quant import (
    nvfp4_scale_shape,
    per_group_fp8_quant_in_dtype,
    per_tensor_fp8_quant_in_dtype,
    per_token_fp8_quant_in_dtype,
    static_fp8_quant_divided,
)
from irfuse.transforms import DEFAULT_PIPELINE

TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-3, 1.6e-2),
}
# The default passes with every norm raised, also those no quant fuses into (which the
# default leaves to Inductor): for tests of the norm's forms and kernels.
EVERY_NORM = ",".join(
    "raise-rms-norm{standalone=true}" if name == "raise-rms-norm" else name
    for name in DEFAULT_PIPELINE
)
FP8_TOL = 1e-1
NVFP4_TOL = 3e-1


def garbage_nvfp4_scales(m: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """An nvfp4 scale buffer of 0xFF bytes (stands in for an uninitialized one)."""
    return like.new_full(nvfp4_scale_shape(m, n), -1, dtype=torch.int32)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def dtype_step(t: torch.Tensor) -> torch.Tensor:
    """One step (ulp) of t's dtype at each of t's magnitudes (the smallest normal's below)."""
    info = torch.finfo(t.dtype)
    magnitude = t.float().abs().clamp(min=info.tiny)
    return torch.exp2(torch.floor(torch.log2(magnitude))) * info.eps


def assert_fp8_close(q: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor) -> None:
    """Compare fp8 results after dequantization (NUMERICS.md: 1e-1, relative to the
    quantization step at the value's magnitude)."""
    assert q.dtype == torch.float8_e4m3fn and expected.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(
        q.float() * scale, expected.float() * scale, atol=FP8_TOL, rtol=FP8_TOL
    )


def reference_quant(scheme: str, y: torch.Tensor, scale: torch.Tensor | None):
    kind, *flags = scheme.split()
    if kind == "static":
        divided = flags == ["div"]
        quant = static_fp8_quant_divided if divided else ref.static_fp8_quant
        return quant(y, scale), None
    if kind == "per_token":
        in_dtype = flags == ["in_dtype"]
        return per_token_fp8_quant_in_dtype(y) if in_dtype else ref.per_token_fp8_quant(y, scale)
    if kind == "per_tensor":
        in_dtype = flags == ["in_dtype"]
        return per_tensor_fp8_quant_in_dtype(y) if in_dtype else ref.per_tensor_fp8_quant(y)
    if kind == "per_group" and "in_dtype" in flags:
        return per_group_fp8_quant_in_dtype(y, int(flags[0]), "col" in flags)
    if kind == "per_group":
        return ref.per_group_fp8_quant(y, int(flags[0]), "col" in flags, "ue8m0" in flags)
    return ref.nvfp4_quant(y, scale)


def dequant(scheme: str, q, scales, scale, t: int, h: int) -> torch.Tensor:
    kind, *flags = scheme.split()
    if kind == "static":
        return ref.dequant_fp8(q, scale)
    if kind in ("per_token", "per_tensor"):
        return ref.dequant_fp8(q, scales)
    if kind == "per_group":
        return ref.dequant_fp8_per_group(q, scales, int(flags[0]))
    return ref.nvfp4_dequant(q, scales, scale, t, h)


def assert_quant_close(scheme: str, got: torch.Tensor, expected: torch.Tensor) -> None:
    """Dequantized values at NUMERICS.md's tolerance, relative to each row's range (values
    near zero quantize coarsely in the block formats)."""
    tol = NVFP4_TOL if scheme == "nvfp4" else FP8_TOL
    span = expected.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)
    torch.testing.assert_close(got / span, expected / span, atol=tol, rtol=tol)


def recorded_launches(monkeypatch) -> list[tuple]:
    """(spec, launch) of every kernel_norm launch from here on (runtime.run_launch), each
    still run."""
    launched: list[tuple] = []
    real = runtime.run_launch
    monkeypatch.setattr(
        runtime,
        "run_launch",
        lambda spec, launch: (launched.append((spec, launch)), real(spec, launch)),
    )
    return launched
