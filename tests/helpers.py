"""Shared test helpers: tolerances from NUMERICS.md and the dequantized fp8 compare."""

from __future__ import annotations

import torch

TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (1e-3, 1.6e-2),
}
FP8_TOL = 1e-1


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    atol, rtol = TOLERANCES[expected.dtype]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


def assert_fp8_close(q: torch.Tensor, expected: torch.Tensor, scale: torch.Tensor) -> None:
    """Compare fp8 results after dequantization (NUMERICS.md: 1e-1, relative to the
    quantization step at the value's magnitude)."""
    assert q.dtype == torch.float8_e4m3fn and expected.dtype == torch.float8_e4m3fn
    torch.testing.assert_close(
        q.float() * scale, expected.float() * scale, atol=FP8_TOL, rtol=FP8_TOL
    )
