"""FP8 and NVFP4 quantization reference ops (see shared/NUMERICS.md, "Quantization")."""

from __future__ import annotations

import torch

from ._checks import (
    FLOAT_DTYPES,
    FP8_DTYPE,
    FP8_MAX,
    check_scalar_scale,
    check_tensor,
    fmt_shape,
    known_true,
)

FP8_MIN_SCALE = 1.0 / (FP8_MAX * 512.0)
GROUP_EPS = 1e-10
NVFP4_BLOCK = 16
NVFP4_SCALE_ROWS = 128  # the swizzled block scales' tile of rows (128x4), which rows pad to
E2M1_MAX = 6.0
# Magnitudes of the e2m1 codes 0..7 (bit 3 of a nibble is the sign).
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def fp8_cast(x_f32: torch.Tensor) -> torch.Tensor:
    """Saturating round-to-nearest-even cast of fp32 values to float8_e4m3fn."""
    return x_f32.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE).contiguous()


def div_const(t: torch.Tensor, c: float) -> torch.Tensor:
    """Correctly rounded ``t / c`` on every device.

    CUDA turns division by a Python (CPU) scalar into multiplication by its reciprocal,
    which can be off by one ulp; dividing by a same-device 0-dim tensor is a true division.
    """
    return t / torch.full((), c, dtype=t.dtype, device=t.device)


def round_up(a, b):  # works on ints and SymInts
    return (a + b - 1) // b * b


# ---------------------------------------------------------------------------------------
# static per-tensor fp8


def _check_static(x: torch.Tensor, scale: torch.Tensor) -> None:
    check_tensor("static_fp8_quant", "x", x, dtypes=FLOAT_DTYPES)
    check_scalar_scale("static_fp8_quant", "scale", scale, x.device)


@torch.library.custom_op("irfuse::static_fp8_quant", mutates_args=())
def static_fp8_quant(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q = fp8(clamp(x_f32 * (1/scale), -448, 448)); scale is fp32 with one element."""
    _check_static(x, scale)
    inv = 1.0 / scale.reshape(())
    return fp8_cast(x.float() * inv)


@static_fp8_quant.register_fake
def _(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    _check_static(x, scale)
    return x.new_empty(x.shape, dtype=FP8_DTYPE)


def static_fp8_quant_divided(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q = fp8(clamp(x_f32 / scale, -448, 448)): the quant as a graph writes it (what
    `#irfuse.quant<static div>` computes; one fp8 step from static_fp8_quant at ties)."""
    _check_static(x, scale)
    return fp8_cast(x.float() / scale.reshape(()))


# ---------------------------------------------------------------------------------------
# dynamic per-token fp8


def _check_per_token(x: torch.Tensor, scale_ub: torch.Tensor | None) -> None:
    check_tensor("per_token_fp8_quant", "x", x, dtypes=FLOAT_DTYPES, min_ndim=1)
    if scale_ub is not None:
        check_scalar_scale("per_token_fp8_quant", "scale_ub", scale_ub, x.device)


@torch.library.custom_op("irfuse::per_token_fp8_quant", mutates_args=())
def per_token_fp8_quant(
    x: torch.Tensor, scale_ub: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row fp8 quant: s = max(min(amax|x|, ub)/448, 1/(448*512)); returns (q, s[..., 1])."""
    _check_per_token(x, scale_ub)
    xf = x.float()
    # a row of no values has amax 0 (torch.amax refuses the empty dim), as the kernels
    amax = xf.abs().amax(dim=-1, keepdim=True) if x.shape[-1] else xf.sum(-1, keepdim=True)
    if scale_ub is not None:
        amax = torch.minimum(amax, scale_ub.reshape(()))
    s = torch.clamp(div_const(amax, FP8_MAX), min=FP8_MIN_SCALE)
    return fp8_cast(xf / s), s


@per_token_fp8_quant.register_fake
def _(x: torch.Tensor, scale_ub: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    _check_per_token(x, scale_ub)
    q = x.new_empty(x.shape, dtype=FP8_DTYPE)
    s = x.new_empty((*x.shape[:-1], 1), dtype=torch.float32)
    return q, s


def per_token_fp8_quant_in_dtype(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row fp8 quant whose scale is divided in x's dtype, then widened, with no lower
    bound: s = float(dtype(amax|x| / 448)), q = fp8(clamp(x_f32 / s, -448, 448)); returns
    (q, s[..., 1]). torchao's per-row scale (what `#irfuse.quant<per_token in_dtype>`
    computes). A zero row has s = 0 and quantizes to NaN, as the graph's 0 / 0 does."""
    _check_per_token(x, None)
    xf = x.float()
    s = div_const(xf.abs().amax(dim=-1, keepdim=True), FP8_MAX).to(x.dtype).float()
    return fp8_cast(xf / s), s


# ---------------------------------------------------------------------------------------
# dynamic per-tensor fp8


@torch.library.custom_op("irfuse::per_tensor_fp8_quant", mutates_args=())
def per_tensor_fp8_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-tensor fp8 quant: s = max(amax|x|/448, 1/(448*512)); returns (q, s[1])."""
    check_tensor("per_tensor_fp8_quant", "x", x, dtypes=FLOAT_DTYPES)
    xf = x.float()
    if xf.numel() == 0:
        amax = xf.new_zeros((1,))
    else:
        amax = xf.abs().amax().reshape(1)
    s = torch.clamp(div_const(amax, FP8_MAX), min=FP8_MIN_SCALE)
    return fp8_cast(xf / s.reshape(())), s


@per_tensor_fp8_quant.register_fake
def _(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    check_tensor("per_tensor_fp8_quant", "x", x, dtypes=FLOAT_DTYPES)
    return x.new_empty(x.shape, dtype=FP8_DTYPE), x.new_empty((1,), dtype=torch.float32)


def per_tensor_fp8_quant_in_dtype(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-tensor fp8 quant whose scale is divided in x's dtype, then widened, with no
    lower bound: s = float(dtype(amax|x| / 448)) (torchao's default, per-tensor, scale;
    `#irfuse.quant<per_tensor in_dtype>`); returns (q, s[1]). An all-zero (or empty)
    tensor has s = 0: its values quantize to NaN, as the graph's 0 / 0."""
    check_tensor("per_tensor_fp8_quant", "x", x, dtypes=FLOAT_DTYPES)
    xf = x.float()
    amax = xf.abs().amax().reshape(1) if xf.numel() else xf.new_zeros((1,))
    s = div_const(amax, FP8_MAX).to(x.dtype).float()
    return fp8_cast(xf / s.reshape(())), s


# ---------------------------------------------------------------------------------------
# per-group fp8


def _check_per_group(x: torch.Tensor, group_size: int, column_major: bool) -> None:
    op = "per_group_fp8_quant"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, ndim=2 if column_major else None, min_ndim=1)
    if group_size not in (64, 128):
        raise ValueError(f"irfuse.{op}: group_size must be 64 or 128, got {group_size}")
    if known_true(x.shape[-1] % group_size != 0):
        raise ValueError(
            f"irfuse.{op}: group_size {group_size} must divide the last dim of x, "
            f"got shape {fmt_shape(x)}"
        )


def alloc_group_scales(x: torch.Tensor, group_size: int, column_major: bool) -> torch.Tensor:
    ng = x.shape[-1] // group_size
    if column_major:
        return x.new_empty((ng, x.shape[0]), dtype=torch.float32).t()
    return x.new_empty((*x.shape[:-1], ng), dtype=torch.float32)


@torch.library.custom_op("irfuse::per_group_fp8_quant", mutates_args=())
def per_group_fp8_quant(
    x: torch.Tensor, group_size: int, column_major: bool = False, ue8m0: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group fp8 quant along the last dim: s = max(amax, 1e-10)/448 (ue8m0: 2^ceil(log2)).

    Returns ``(q, scales)`` with scales ``[T, K/G]``; with ``column_major`` (x must be 2-D)
    the scales are stored ``[K/G, T]`` and returned as its transpose.
    """
    _check_per_group(x, group_size, column_major)
    xf = x.float()
    g = xf.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    amax = g.abs().amax(dim=-1, keepdim=True)
    s = div_const(torch.clamp(amax, min=GROUP_EPS), FP8_MAX)
    if ue8m0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    q = fp8_cast(g / s).reshape(x.shape)
    scales = alloc_group_scales(x, group_size, column_major)
    scales.copy_(s.squeeze(-1))
    return q, scales


@per_group_fp8_quant.register_fake
def _(
    x: torch.Tensor, group_size: int, column_major: bool = False, ue8m0: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_per_group(x, group_size, column_major)
    q = x.new_empty(x.shape, dtype=FP8_DTYPE)
    return q, alloc_group_scales(x, group_size, column_major)


def per_group_fp8_quant_in_dtype(
    x: torch.Tensor, group_size: int, column_major: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group fp8 quant whose scales are divided in x's dtype, then widened, with no
    lower bound: s = float(dtype(amax / 448)) per group (torchao's 1x128 activation
    scale; what `#irfuse.quant<per_group G in_dtype>` computes). A zero group quantizes
    to NaN, as the graph's 0 / 0 does. Returns ``(q, scales)`` as per_group_fp8_quant."""
    _check_per_group(x, group_size, column_major)
    g = x.float().reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    s = div_const(g.abs().amax(dim=-1, keepdim=True), FP8_MAX).to(x.dtype).float()
    scales = alloc_group_scales(x, group_size, column_major)
    scales.copy_(s.squeeze(-1))
    return fp8_cast(g / s).reshape(x.shape), scales


# ---------------------------------------------------------------------------------------
# nvfp4


def _check_nvfp4(x: torch.Tensor, global_scale: torch.Tensor) -> None:
    check_tensor("nvfp4_quant", "x", x, dtypes=FLOAT_DTYPES, ndim=2)
    if known_true(x.shape[1] % NVFP4_BLOCK != 0):
        raise ValueError(
            f"irfuse.nvfp4_quant: the last dim of x must be a multiple of {NVFP4_BLOCK}, "
            f"got shape {fmt_shape(x)}"
        )
    check_scalar_scale("nvfp4_quant", "global_scale", global_scale, x.device)


def nvfp4_scale_shape(m, n) -> tuple:
    """Shape of the int32 swizzled block-scale tensor for an [m, n] input."""
    return (round_up(m, NVFP4_SCALE_ROWS), round_up(n // NVFP4_BLOCK, 4) // 4)


def alloc_nvfp4_scales(m: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """The swizzled block-scale tensor a kernel fills for an [m, n] input: zero-filled
    only where the layout pads (rows to 128, blocks to 4 per row); without padding the
    kernel writes every byte, and a memset would cost a launch (~1.5 us on H200, 7% of a
    4096 x 4096 quant)."""
    shape = nvfp4_scale_shape(m, n)
    if nvfp4_scales_padded(m, n):
        return like.new_zeros(shape, dtype=torch.int32)
    return like.new_empty(shape, dtype=torch.int32)


def nvfp4_scales_padded(m, n) -> bool:
    """Whether the swizzled layout of an [m, n] input pads (True for symbolic sizes:
    fake tensors take no guard)."""
    symbolic = not (isinstance(m, int) and isinstance(n, int))
    return symbolic or bool(m % NVFP4_SCALE_ROWS or (n // NVFP4_BLOCK) % 4)


def e2m1_codes(v: torch.Tensor) -> torch.Tensor:
    """Round fp32 values to e2m1 nibbles (RNE, saturate at 6, sign in bit 3) as uint8; NaN
    is 0 whatever its sign bit (a GPU's arithmetic makes every NaN 0x7FFFFFFF)."""
    a = v.abs()
    mag = (
        (a > 0.25).to(torch.uint8)
        + (a >= 0.75).to(torch.uint8)
        + (a > 1.25).to(torch.uint8)
        + (a >= 1.75).to(torch.uint8)
        + (a > 2.5).to(torch.uint8)
        + (a >= 3.5).to(torch.uint8)
        + (a > 5.0).to(torch.uint8)
    )
    return mag | ((torch.signbit(v) & ~v.isnan()).to(torch.uint8) << 3)


def e2m1_values(codes: torch.Tensor) -> torch.Tensor:
    """Decode e2m1 nibbles (uint8 values 0..15) to fp32."""
    lut = torch.tensor(E2M1_VALUES, dtype=torch.float32, device=codes.device)
    mag = lut[(codes & 7).long()]
    return torch.where((codes & 8) != 0, -mag, mag)


def swizzle_block_scales(sf: torch.Tensor) -> torch.Tensor:
    """Lay out e4m3 block scales ``[m, n/16]`` as the zero-padded int32 "swizzled 128x4"."""
    m, kb = sf.shape
    mp, kp = round_up(m, NVFP4_SCALE_ROWS), round_up(kb, 4)
    padded = torch.zeros((mp, kp), dtype=torch.uint8, device=sf.device)
    padded[:m, :kb] = sf.view(torch.uint8)
    # r = rb*128 + r2*32 + r1, k = kc*4 + k1 -> offset ((rb*KC + kc)*32 + r1)*16 + r2*4 + k1
    tiles = padded.view(mp // 128, 4, 32, kp // 4, 4).permute(0, 3, 2, 1, 4).contiguous()
    return tiles.view(torch.int32).reshape(mp, kp // 4)


def unswizzle_block_scales(block_scales: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """Inverse of :func:`swizzle_block_scales`: e4m3 scales ``[m, n/16]``."""
    mp, kc = block_scales.shape
    kp = kc * 4
    raw = block_scales.contiguous().view(torch.uint8).reshape(mp // 128, kc, 32, 4, 4)
    padded = raw.permute(0, 3, 2, 1, 4).reshape(mp, kp)
    return padded[:m, : n // NVFP4_BLOCK].contiguous().view(FP8_DTYPE)


@torch.library.custom_op("irfuse::nvfp4_quant", mutates_args=())
def nvfp4_quant(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4 quant of x[m, n]: returns (uint8 [m, n/2], swizzled int32 block scales)."""
    _check_nvfp4(x, global_scale)
    m, n = x.shape
    gs = global_scale.reshape(())
    blocks = x.float().reshape(m, n // NVFP4_BLOCK, NVFP4_BLOCK)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    sf = fp8_cast(div_const(gs * amax, E2M1_MAX))
    sf_f = sf.float()
    inv = torch.where(sf_f != 0, gs / sf_f, torch.zeros_like(sf_f))
    codes = e2m1_codes(blocks * inv).reshape(m, n)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return packed, swizzle_block_scales(sf.reshape(m, n // NVFP4_BLOCK))


@nvfp4_quant.register_fake
def _(x: torch.Tensor, global_scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_nvfp4(x, global_scale)
    m, n = x.shape
    q = x.new_empty((m, n // 2), dtype=torch.uint8)
    return q, x.new_empty(nvfp4_scale_shape(m, n), dtype=torch.int32)


# ---------------------------------------------------------------------------------------
# dequantizers (plain functions, for tests and references)


def dequant_fp8(
    q: torch.Tensor, scale: torch.Tensor, out_dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """x ≈ q * scale, with scale broadcastable to q (``[1]``, ``[T, 1]``, ...)."""
    check_tensor("dequant_fp8", "q", q, dtypes=(FP8_DTYPE,))
    check_tensor("dequant_fp8", "scale", scale, dtypes=(torch.float32,), device=q.device)
    return (q.float() * scale).to(out_dtype)


def dequant_fp8_per_group(
    q: torch.Tensor,
    scales: torch.Tensor,
    group_size: int,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Dequantize per-group fp8 (scales ``[..., K/G]``, row-major or the column-major view)."""
    op = "dequant_fp8_per_group"
    check_tensor(op, "q", q, dtypes=(FP8_DTYPE,), min_ndim=1)
    check_tensor(op, "scales", scales, dtypes=(torch.float32,), device=q.device)
    k = q.shape[-1]
    if k % group_size != 0 or tuple(scales.shape) != (*q.shape[:-1], k // group_size):
        raise ValueError(
            f"irfuse.{op}: scales must have shape {[*q.shape[:-1], k // group_size]} for q "
            f"{fmt_shape(q)} and group_size {group_size}, got {fmt_shape(scales)}"
        )
    g = q.float().reshape(*q.shape[:-1], k // group_size, group_size)
    return (g * scales.unsqueeze(-1)).reshape(q.shape).to(out_dtype)


def nvfp4_dequant(
    q: torch.Tensor, block_scales: torch.Tensor, global_scale: torch.Tensor, m: int, n: int
) -> torch.Tensor:
    """Dequantize nvfp4: x ≈ e2m1 * float(SF) / global_scale, fp32 ``[m, n]``."""
    op = "nvfp4_dequant"
    check_tensor(op, "q", q, dtypes=(torch.uint8,), ndim=2)
    check_tensor(op, "block_scales", block_scales, dtypes=(torch.int32,), ndim=2)
    check_scalar_scale(op, "global_scale", global_scale, q.device)
    if tuple(q.shape) != (m, n // 2) or tuple(block_scales.shape) != nvfp4_scale_shape(m, n):
        raise ValueError(
            f"irfuse.{op}: expected q [{m}, {n // 2}] and block_scales "
            f"{list(nvfp4_scale_shape(m, n))}, got {fmt_shape(q)} and {fmt_shape(block_scales)}"
        )
    codes = torch.stack((q & 0xF, q >> 4), dim=-1).reshape(m, n)
    vals = e2m1_values(codes).reshape(m, n // NVFP4_BLOCK, NVFP4_BLOCK)
    sf = unswizzle_block_scales(block_scales, m, n).float().unsqueeze(-1)
    return (vals * sf / global_scale.reshape(())).reshape(m, n)
