"""Argument checks shared by the real and the fake (meta) implementations.

The checks only look at shapes, dtypes and devices, never at tensor values, so they run
without a host sync and also during tracing with fake tensors and symbolic sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0


def known_true(cond: object) -> bool:
    """True when `cond` holds for sure; symbolic conditions that cannot be decided are False."""
    if isinstance(cond, torch.SymBool):
        from torch.fx.experimental.symbolic_shapes import guard_or_false

        return guard_or_false(cond)
    return bool(cond)


def ne(a: object, b: object) -> bool:
    """True when two (possibly symbolic) sizes are known to differ."""
    return known_true(a != b)


def broadcasts_to(shape: Sequence[object], target: Sequence[object]) -> bool:
    """Whether `shape` broadcasts to `target`; symbolic sizes fail only when known to differ."""
    return len(shape) <= len(target) and not any(
        ne(m, 1) and ne(m, t) for m, t in zip(reversed(shape), reversed(target), strict=False)
    )


def fmt_shape(t: torch.Tensor) -> str:
    """Shape of `t` as a short string, e.g. ``[4, 8]``."""
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def fmt_dtypes(dtypes: Sequence[torch.dtype]) -> str:
    """Dtype list as a short string, e.g. ``float16/bfloat16``."""
    return "/".join(str(d).removeprefix("torch.") for d in dtypes)


def check_tensor(
    op: str,
    name: str,
    t: object,
    *,
    dtypes: Sequence[torch.dtype] | None = None,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Check that `t` is a tensor with an allowed dtype, rank and device; return it."""
    prefix = f"irfuse.{op}: {name}"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{prefix} must be a tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{prefix} must have dtype {fmt_dtypes(dtypes)}, got {t.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ValueError(f"{prefix} must be {want}, got shape {fmt_shape(t)}")
    if min_ndim is not None and t.dim() < min_ndim:
        raise ValueError(f"{prefix} must have at least {min_ndim} dims, got shape {fmt_shape(t)}")
    if device is not None and t.device != device:
        raise ValueError(f"{prefix} must be on device {device}, got {t.device}")
    return t


def check_scalar_scale(op: str, name: str, t: object, device: torch.device) -> torch.Tensor:
    """Check a float32 tensor with exactly one element on `device`."""
    prefix = f"irfuse.{op}: {name} must be a float32 tensor with one element"
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{prefix}, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{prefix}, got dtype {t.dtype}")
    if ne(t.numel(), 1):
        raise ValueError(f"{prefix}, got shape {fmt_shape(t)}")
    if t.device != device:
        raise ValueError(f"{prefix} on device {device}, got device {t.device}")
    return t


def check_dim(op: str, name: str, t: torch.Tensor, dim: int, expected: object, what: str) -> None:
    """Check that ``t.shape[dim] == expected`` (skipped when undecidable symbolically)."""
    if ne(t.shape[dim], expected):
        raise ValueError(
            f"irfuse.{op}: {name}.shape[{dim}] must equal {what} ({expected}), "
            f"got shape {fmt_shape(t)}"
        )


def check_same_shape(op: str, name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Check that `t` has exactly the shape of `ref`."""
    bad = t.dim() != ref.dim() or any(ne(a, b) for a, b in zip(t.shape, ref.shape, strict=True))
    if bad:
        raise ValueError(
            f"irfuse.{op}: {name} must have the shape of {ref_name} {fmt_shape(ref)}, "
            f"got {fmt_shape(t)}"
        )
