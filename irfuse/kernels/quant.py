"""Triton source for quantization epilogues (exactly NUMERICS.md; and the `in_dtype`
scales of torchao, outside it: PER_TOKEN_SCALES, GROUP_SCALES).

An epilogue is a pair: a preload, emitted with the kernel's first loads so that its
latency overlaps theirs (it matters for a handful of rows), and a store, which takes `v`
(fp32, already rounded to the producer's output dtype; a row or a tile of one per
program: `row`, `cols` = `col_start` + row_columns(...): arange(BLOCK), or an nvfp4
row's halves of blocks; `mask`, masked lanes hold 0) to
`out_ptr`, and its scales to `scale_out_ptr` (at `row * scale_out_row_stride + i *
scale_out_col_stride`; nvfp4 uses the swizzled layout). Divisions are correctly rounded,
as the reference divides: by a scale shared by a row or a group, through `div_by` (one
product and two fmas per element, not a division, and a test for what they miss), or
for a per-token row that needs no test (FINITE_ROW) `div_finite`.
"""

import functools
import textwrap

# Rounds fp32 onto the e4m3 grid (RNE) so that the interpreter's fp32->fp8 cast, which
# is wrong for subnormals and mantissa carries (TOOLCHAIN.md), sees exact values. On the
# GPU the hardware cast already is RNE and the helper is compiled out.
ROUND_TO_E4M3 = """
@triton.jit
def round_to_e4m3(v):
    bits = v.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    magnitude = bits & 0x7FFFFFFF
    normal = (magnitude + 0x7FFFF + ((magnitude >> 20) & 1)) & 0xFFF00000
    absolute = magnitude.to(tl.float32, bitcast=True)
    subnormal = ((absolute + 16384.0) - 16384.0).to(tl.uint32, bitcast=True)
    rounded = tl.where(absolute >= 0.015625, normal, subnormal)
    return tl.where(v != v, v, (rounded | sign).to(tl.float32, bitcast=True))  # keep NaN


# fp8(clamp(v, -448, 448)): on the GPU Triton's cast is cvt.rn.satfinite, which already
# saturates to +-448 (infinities included) and keeps NaN, so only the interpreter clamps;
# its cast also writes NaN as +-384, so there NaN gets torch's bytes (0x7F, the sign kept).
@triton.jit
def to_fp8(v, INTERPRET: tl.constexpr):
    if INTERPRET:
        v = round_to_e4m3(tl.clamp(v, -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL))
        nan_bits = ((v.to(tl.uint32, bitcast=True) >> 24) | 0x7F).to(tl.uint8)
        bits = tl.where(v != v, nan_bits, v.to(tl.float8e4nv).to(tl.uint8, bitcast=True))
        return bits.to(tl.float8e4nv, bitcast=True)
    return v.to(tl.float8e4nv)
"""

# Amaxes and bounds as the graph takes them: a NaN anywhere in a row (group, tensor) makes
# its amax and its scale NaN (torch.amax, clamp and minimum propagate it; Triton's max
# and maximum drop it by default). On the GPU this is max.NaN.f32, no slower.
NAN_MAX = """
@triton.jit
def nan_max(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def amax_of(v, axis: tl.constexpr):
    return tl.reduce(tl.abs(v), axis, nan_max)
"""

# a / b correctly rounded, from inv_b = div_rn(1, b): q = a * inv_b is within one ulp of
# a / b, the remainder is exact in an fma, and one fma correction step rounds it correctly
# (Markstein's theorem; quotients in the subnormal range, which could differ, quantize to
# zero in fp8 anyway). The correction is q - (q * b - a) * inv_b, the minus carried by
# inv_b: a zero a then keeps its sign (q + (a - q * b) * inv_b gives +0 for a = -0, and a
# negated fma is folded back into that form by the compiler). `a * -1.0` is -a exactly
# and becomes a negated operand of the fma; Triton's `-a` is `0 - a`, which differs at
# zero, so it stays an instruction an element (1 of ~27 per element in a standalone
# per-group kernel, sm_90 SASS). Where the correction does not hold (an infinite or NaN
# a, a zero or infinite b) q already is the quotient.
# Two forms, bit for bit the same, which compile differently; each kernel takes the one
# that ran fastest in an A/B (bench/RESULTS.md):
# - DIV_BY tests the correction for NaN (the default, attention included; add + norm
#   with static or per-group, and norm + static: within 0.7% of DIV_BY_BOUNDED, H100,
#   thirty-second session);
# - DIV_BY_BOUNDED tests a against a bound set once per scale (|a| < |b| * 2^127: a
#   finite q; quotients from 2^127 to the largest float, far above fp8's 448, are q,
#   within an ulp), so the test comes first and the compiler predicates the correction
#   instead of selecting (standalone quants: per-token 11%, per-group 16% faster than
#   a form that tested q's range, H200; rms_norm + per-group without a residual: 5%-8%
#   faster than that form and 0.3%-1.8% faster than DIV_BY, H100).
DIV_BY = """
@triton.jit
def div_by(a, b, inv_b):
    q = a * inv_b
    corrected = tl.fma(tl.fma(q, b, a * -1.0), -inv_b, q)
    return tl.where(corrected == corrected, corrected, q)
"""
DIV_BY_BOUNDED = """
@triton.jit
def div_by(a, b, inv_b):
    q = a * inv_b
    corrected = tl.fma(tl.fma(q, b, a * -1.0), -inv_b, q)
    # |a| / |b| < 2^127: q is finite (above, q is within an ulp and saturates in fp8)
    bound = tl.where((tl.abs(b) < float("inf")) & (b != 0), tl.abs(b) * 2.0**127, -1.0)
    return tl.where(tl.abs(a) < bound, corrected, q)
"""

# Division by one scale for a whole kernel in two instructions an element, div_by's five:
# a / b = fma(a, zh, a * zl), zh + zl ~ 1 / b (Brisebarre, Muller and Raina's method for a
# divisor known in advance). The Gluon prefill's static fp8 of an `x / s` graph divides
# so (H100, B4 H32 S4096 D128 causal: its block within 0.2% of a multiply by 1 / s, 2.3%
# slower through div_by); so does the Triton prefill's, checking bf16 over one warp's 32
# lanes (over all 128 threads, a barrier, it cost what the pair saved in its short
# programs) and fp16 over 128 threads (over one warp, 32 turns a lane, it cost more than
# div_by). zh is RN(1 / b) moved toward zero where it rounded away, so that zl has its
# sign: infinities and signed zeros come out as division gives them. It is correctly
# rounded for most b, not every b (bf16: all but about 2 in 10^5 random scales):
# pair_is_exact divides every significand of the value's bits (8 for bf16: steps of 128;
# 11 for fp16: 1024) in one binade both ways, and a kernel keeps div_by where they
# differ. Other binades follow by scaling while the quotient and a * zl stay normal:
# quotients below 2^-100 quantize to 0 and above 448 saturate, so fp8 never sees the
# difference. b's exponent is held to [-100, 100] (so is the binade's, its significands
# exact); else div_by.
RECIPROCAL_PAIR = """
@triton.jit
def reciprocal_pair(b, inv_b):
    away = tl.fma(-b, inv_b, 1.0) < 0  # |RN(1 / b)| > 1 / |b|: one ulp toward zero
    zh = tl.where(away, (inv_b.to(tl.int32, bitcast=True) - 1).to(tl.float32, bitcast=True),
                  inv_b)
    return zh, tl.fma(-b, zh, 1.0) * zh


@triton.jit
def div_by_pair(a, zh, zl):
    return tl.fma(a, zh, a * zl)


@triton.jit
def pair_is_exact(b, inv_b, zh, zl, lanes, SIGNIFICANDS: tl.constexpr):
    # SIGNIFICANDS: 2^(BITS - 1); lanes: the caller's arange (in its layout) dividing it,
    # each lane checking SIGNIFICANDS / lanes of them (a warp's 32 lanes reduce without a
    # barrier)
    exponent = (b.to(tl.int32, bitcast=True) >> 23) & 0xFF
    usual = (exponent >= 27) & (exponent <= 227)  # 2^-100 to 2^100
    binade = (tl.where(usual, exponent, 127) << 23).to(tl.float32, bitcast=True)
    same = lanes >= 0
    for turn in tl.static_range(SIGNIFICANDS // lanes.shape[0]):
        steps = lanes + (turn * lanes.shape[0] + SIGNIFICANDS)
        a = steps.to(tl.float32) * (binade * (0.5 / SIGNIFICANDS))
        same = same & (div_by_pair(a, zh, zl) == div_by(a, b, inv_b))
    return usual & (tl.min(same.to(tl.int32), 0) == 1)
"""

# div_by without its test, for a row whose every correction is finite (FINITE_ROW): the
# same correctly rounded quotient in three instructions an element. On the GPU in PTX, one
# element an asm block: written in Triton it compiles to fewer instructions, yet rms_norm +
# per-token without a residual ran 7%-8% slower with it at hidden 7168 (the same at 4096;
# an A/B on one H100, bench/RESULTS.md, thirty-third session).
DIV_FINITE = """
@triton.jit
def div_finite(a, b, inv_b, INTERPRET: tl.constexpr):
    if INTERPRET:
        q = a * inv_b
        return tl.fma(tl.fma(q, b, a * -1.0), -inv_b, q)
    return tl.inline_asm_elementwise(
        "{ .reg .f32 q, r, n; mul.rn.f32 q, $1, $3; neg.f32 n, $1; fma.rn.f32 r, q, $2, n; "
        "neg.f32 n, $3; fma.rn.f32 $0, r, n, q; }",
        "=r,r,r,r", [a, b, inv_b], dtype=tl.float32, is_pure=True, pack=1,
    )
"""

# 2^ceil(log2(s)) for positive normal s, on the bits (exact, unlike log2/exp2).
CEIL_POW2 = """
@triton.jit
def ceil_pow2(s):
    bits = s.to(tl.uint32, bitcast=True)
    exponent = bits & 0x7F800000
    up = tl.where((bits & 0x7FFFFF) != 0, exponent + 0x800000, exponent)
    return tl.where(s != s, s, up.to(tl.float32, bitcast=True))  # keep NaN
"""

STORE = "    tl.store(out_ptr + row * out_row_stride + cols, {value}, mask=mask)\n"

NONE = (
    "",
    "\n    # epilogue: store in the output dtype\n"
    + STORE.format(value="v.to(out_ptr.dtype.element_ty)"),
)

STATIC = (
    "    inv_scale = tl.math.div_rn(1.0, tl.load(scale_ptr))  # static fp8 scale, loaded early\n",
    "\n    # epilogue: static per-tensor fp8, q = fp8(clamp(v * (1 / scale), -448, 448))\n"
    + STORE.format(value="to_fp8(v * inv_scale, INTERPRET)"),
)

# The quant as a graph writes it, `x / scale`: divided correctly rounded (div_by), which
# `x * (1 / scale)` misses by one fp8 step where the quotient is a tie (0.75 / 0.03).
STATIC_DIV = (
    "    scale = tl.load(scale_ptr)  # static fp8 scale, loaded early\n"
    "    inv_scale = tl.math.div_rn(1.0, scale)\n",
    "\n    # epilogue: static per-tensor fp8, q = fp8(clamp(v / scale, -448, 448))\n"
    + STORE.format(value="to_fp8(div_by(v, scale, inv_scale), INTERPRET)"),
)

PER_TOKEN_PRELOAD = """    if HAS_SCALE:
        scale_ub = tl.load(scale_ptr)  # per-token scale upper bound, loaded early
"""
# `in_dtype` scales (torchao's): the amax divided in the dtype of the value quantized
# (`{value_dtype}`), with no lower bound: a zero row (tensor, group) gets s = 0 and
# quantizes to NaN, as the graph's 0 / 0.
IN_DTYPE_FORMULA = "dtype(amax / 448), in the value's dtype, no lower bound"


def in_dtype_scale(amax: str) -> str:
    """The code of an `in_dtype` scale of `amax` (still to format with `value_dtype`)."""
    return f"    s = round_each(tl.math.div_rn({amax}, 448.0), {{value_dtype}}, INTERPRET)\n"


# The row's scale from its amax, stored; per variant (#irfuse.quant<per_token>, <per_token
# in_dtype>): (what the formula is, its preload, its code).
PER_TOKEN_SCALES = {
    "per_token": (
        "s = max(min(amax, ub) / 448, 1 / (448 * 512))",
        PER_TOKEN_PRELOAD,
        """    if HAS_SCALE:
        amax = tl.minimum(amax, scale_ub, propagate_nan=tl.PropagateNan.ALL)
    s = nan_max(tl.math.div_rn(amax, 448.0), 1.0 / 229376.0)
""",
    ),
    "per_token in_dtype": (f"s = {IN_DTYPE_FORMULA}", "", in_dtype_scale("amax")),
}
STORE_TOKEN_SCALE = "    tl.store(scale_out_ptr + row * scale_out_row_stride, s)\n"
PER_TOKEN_QUANT = "to_fp8(div_by(v, s, inv_s), INTERPRET)"
# Every quotient of the row, |v| <= row_amax, has a finite correction in div_by (a finite
# q, a finite nonzero s): then div_finite gives the same bytes without the per-element
# test. A NaN or infinite amax or scale, a zero scale (in_dtype's of a tiny row) or an
# overflowing quotient (a scale bound far below the amax) takes div_by.
FINITE_ROW = '(row_amax * inv_s < 2.0**120) & (s < float("inf"))'


def per_token(scheme: str, value_dtype: str) -> tuple[str, str]:
    """(preload, store) of a per-token scheme; `value_dtype`: the dtype (an expression in
    the kernel) of the value quantized, in which `in_dtype` rounds its scale."""
    if scheme not in PER_TOKEN_SCALES:
        raise ValueError(f"no epilogue for quant scheme {scheme!r}")
    formula, preload, scale = PER_TOKEN_SCALES[scheme]
    store = (
        f"\n    # epilogue: dynamic per-token fp8, {formula}\n"
        "    row_amax = amax_of(v, 0)\n"
        "    amax = row_amax\n"
        + scale.format(value_dtype=value_dtype)
        + STORE_TOKEN_SCALE
        + "    inv_s = tl.math.div_rn(1.0, s)\n"
        + f"    if {FINITE_ROW}:  # no per-element test (div_finite)\n"
        + "    "
        + STORE.format(value="to_fp8(div_finite(v, s, inv_s, INTERPRET), INTERPRET)")
        + "    else:\n    "
        + STORE.format(value=PER_TOKEN_QUANT)
    )
    return preload, store


# Standalone per-token over rows padded to 8192+ lanes (hidden 7168), a whole kernel body:
# two passes over the row's quarters, the amax, then the quant, which reads the row again
# from L2 (the first pass's loads ask to keep it there). Holding the row in registers
# instead costs occupancy at that width (runtime.runs_two_pass).
PER_TOKEN_TWO_PASS = (
    """    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * x_row_stride
{preload}    # pass 1: the amax, the four quarters' loads in flight together
    abs_max = tl.zeros([BLOCK // 4], tl.float32)
    for quarter in tl.static_range(4):
        cols = quarter * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
        v = tl.load(x_row + cols, mask=cols < n_cols, other=0.0, eviction_policy="evict_last")
        abs_max = nan_max(abs_max, tl.abs(v.to(tl.float32)))

    # dynamic per-token fp8, {formula}
    amax = tl.reduce(abs_max, 0, nan_max)
{scale}"""
    + STORE_TOKEN_SCALE
    + """    inv_s = tl.math.div_rn(1.0, s)

    # pass 2: the quant of each quarter, read again (from L2)
    for quarter in tl.static_range(4):
        cols = quarter * (BLOCK // 4) + tl.arange(0, BLOCK // 4)
        mask = cols < n_cols
        v = tl.load(x_row + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(
            tl.float32
        )
    """
    + STORE.format(value=PER_TOKEN_QUANT)
)


def per_token_two_pass(scheme: str) -> str:
    """The two-pass standalone body of a per-token scheme."""
    formula, preload, scale = PER_TOKEN_SCALES[scheme]
    scale = scale.format(value_dtype="x_ptr.dtype.element_ty")
    return PER_TOKEN_TWO_PASS.format(formula=formula, preload=preload, scale=scale)


# Per-group scales from each group's amax: NUMERICS.md's, or `in_dtype` (torchao's 1x128).
GROUP_SCALES = {
    False: "    s = tl.math.div_rn(nan_max(amax_of(groups, 1), 1e-10), 448.0)\n",
    True: in_dtype_scale("amax_of(groups, 1)"),
}
PER_GROUP = (
    "",
    """
    # epilogue: per-group fp8, groups of {group}: s = {scale_formula}
    groups = tl.reshape(v, (BLOCK // {group}, {group}))
{scale}{ue8m0}    inv_s = tl.math.div_rn(1.0, s)
    q = tl.reshape(to_fp8(div_by(groups, s[:, None], inv_s[:, None]), INTERPRET), (BLOCK,))
    g = col_start // {group} + tl.arange(0, BLOCK // {group})
    g_ptr = scale_out_ptr + row * scale_out_row_stride + g * scale_out_col_stride
    tl.store(g_ptr, s, mask=g < n_cols // {group})
"""
    + STORE.format(value="q"),
)

# nvfp4 of blocks [R, 16] (fp32): SF = e4m3(global_scale * amax / 6), q = e2m1(v *
# global_scale / SF) rounded to nearest even, two per byte (even element: low nibble).
# Returns the packed bytes [R, 8] and the scale bytes [R]. Shape-generic callers reshape.
# The kernels are bound by these instructions, not by memory (standalone: 1.5x faster
# with a trivial code, bench/RESULTS.md): each one saved per element counts.
NVFP4_HELPERS = """
@triton.jit
def e2m1_index(e):
    # |e| rounded onto {0, .5, 1, 1.5, 2, 3, 4, 6} (RNE, saturating at 6, NaN -> 0) as its
    # index 0-7 in the low byte of an fp32's bits (bits from 8 up are left over: the
    # packing drops them). The index is piecewise linear and concave in |e|: min(2a,
    # a + 2, a / 2 + 4), each line rounded to an integer by adding 2^23 in one operation
    # (ties to the even index: the even grid point), whose low byte then holds it.
    a = tl.minimum(tl.abs(e), 6.0, propagate_nan=tl.PropagateNan.ALL)  # inf -> 6, NaN kept
    index = tl.minimum(tl.minimum(a * 2.0 + 8388608.0, a + 8388610.0), a * 0.5 + 8388612.0)
    return tl.maximum(index, 8388608.0).to(tl.int32, bitcast=True)  # NaN (below 2^23) -> 0


@triton.jit
def e2m1_code(e):
    # e2m1_index with e's sign in bit 3
    return e2m1_index(e) | ((e.to(tl.int32, bitcast=True) >> 28) & 8)


@triton.jit
def e2m1_bytes(e, INTERPRET: tl.constexpr):
    # e [R, 2K] as e2m1 codes (e2m1_code), two per byte (the even element in the low
    # nibble): [R, K] uint8 (K a multiple of 4)
    if INTERPRET:
        code = e2m1_code(e)
        # byte = even + (odd << 4), truncated: the codes' bits from 8 (even), 4 (odd) drop
        pairs = tl.reshape(code, (code.shape[0], code.shape[1] // 2, 2))
        pairs = pairs << (tl.arange(0, 2) * 4)[None, None, :]
        return tl.sum(pairs, axis=2).to(tl.uint8)
    # On the GPU, 8 elements' bytes at once, by prmt: first the signs, e's top bytes each
    # widened to 0x00 / 0xFF (4 even ones in one word, 4 odd ones in another), then the
    # indices' low bytes, likewise; 15 instructions where a sign an element and a byte a
    # pair take 23. Signs first, so that e's registers are free before the indices are
    # computed: gathering both at the end held 8 registers more (72), a program an SM
    # fewer at 8 warps (bench/RESULTS.md, forty-first session).
    # (prmt selector 0x00fb: the widened top bytes of its two words, 0x0040: their low
    # bytes, 0x5410: the low halves of two words; lop3 0xe4: (a & c) | (b & ~c), bit 3 of
    # each byte from the even word, the rest from the odd one; 0xfe: a | b | c)
    e_even, e_odd = tl.split(tl.reshape(e, (e.shape[0], e.shape[1] // 2, 2)))
    signs = tl.inline_asm_elementwise(
        "{ .reg .b32 lo, hi, even, odd; "
        "prmt.b32 lo, $1, $2, 0x00fb; prmt.b32 hi, $3, $4, 0x00fb; "
        "prmt.b32 even, lo, hi, 0x5410; "
        "prmt.b32 lo, $5, $6, 0x00fb; prmt.b32 hi, $7, $8, 0x00fb; "
        "prmt.b32 odd, lo, hi, 0x5410; "
        "lop3.b32 $0, even, odd, 0x08080808, 0xe4; }",
        "=r" + ",r" * 8, [e_even, e_odd], dtype=tl.uint8, is_pure=True, pack=4,
    )
    index = tl.reshape(e2m1_index(e), (e.shape[0], e.shape[1] // 2, 2))
    index_even, index_odd = tl.split(index)
    return tl.inline_asm_elementwise(
        "{ .reg .b32 lo, hi, even, odd; "
        "prmt.b32 lo, $1, $2, 0x0040; prmt.b32 hi, $3, $4, 0x0040; "
        "prmt.b32 even, lo, hi, 0x5410; "
        "prmt.b32 lo, $5, $6, 0x0040; prmt.b32 hi, $7, $8, 0x0040; "
        "prmt.b32 odd, lo, hi, 0x5410; shl.b32 odd, odd, 4; "
        "and.b32 lo, $9, 0x88888888; "
        "lop3.b32 $0, even, odd, lo, 0xfe; }",
        "=r" + ",r" * 9, [index_even, index_odd, signs], dtype=tl.uint8, is_pure=True, pack=4,
    )


@triton.jit
def nvfp4_scales(amax, global_scale, INTERPRET: tl.constexpr):
    # a block's scale from its amax (a NaN makes it NaN, and its codes 0): the e4m3
    # scale and the multiplier of its values, inv = SF != 0 ? global_scale / SF : 0
    # / 6 correctly rounded by div_by (0.16666667 = RN(1/6)): no division per block
    sf = to_fp8(div_by(global_scale * amax, 6.0, 0.16666666666666666), INTERPRET)
    sf_value = sf.to(tl.float32)
    if INTERPRET:  # its cast back reads NaN's byte (0x7F) as a number
        sf_value = tl.where((sf.to(tl.uint8, bitcast=True) & 0x7F) == 0x7F, float("nan"), sf_value)
    safe = tl.where(sf_value != 0, sf_value, 1.0)
    return sf, tl.where(sf_value != 0, tl.math.div_rn(global_scale, safe), 0.0)


@triton.jit
def e2m1_of(e, INTERPRET: tl.constexpr):
    # e [R, 2K] as bytes [R, K] (e2m1_bytes), NaN's codes 0
    if INTERPRET:  # the GPU's NaN is 0x7FFFFFFF; numpy's keeps an operand's sign
        e = tl.where(e != e, float("nan"), e)
    return e2m1_bytes(e, INTERPRET)


@triton.jit
def nvfp4_blocks(blocks, global_scale, INTERPRET: tl.constexpr):
    sf, inv = nvfp4_scales(amax_of(blocks, 1), global_scale, INTERPRET)
    return e2m1_of(blocks * inv[:, None], INTERPRET), sf.to(tl.uint8, bitcast=True)


@triton.jit
def nvfp4_scale_offset(row, k, n_cols):
    # the byte of block scale (row, k) in the swizzled 128x4 layout (NUMERICS.md)
    tile = (row >> 7) * ((n_cols + 63) // 64) + (k >> 2)
    return tile * 512 + (row & 31) * 16 + ((row >> 5) & 3) * 4 + (k & 3)
"""

# rms_norm + nvfp4 rows of 4096 columns load as halves of blocks, [BLOCK // 8, 8]: row
# h * R + r holds half h of block r (R = BLOCK // 16 blocks). Triton lays a [rows, 8] load
# out 8 contiguous columns a thread, threads and then warps down the rows, so that where R
# is a multiple of the program's threads (4096 columns, 4 warps) a thread holds both
# halves of its blocks: a block's amax and scale stay in its thread, computed once (sm_90
# SASS: 848 instructions a thread against 920). In memory order, a block spans two
# threads, which both compute its scale and exchange its amax by a shuffle. On an H100
# the halves ran 1.04x at 4096 columns, but 0.96x-0.98x at 8192 (8 warps) and in the
# standalone quant's 2048-column tiles (each load covering half of each of 32 sectors):
# only WHOLE_BLOCKS takes them (bench/RESULTS.md, forty-second session). (A [R, 2, 8]
# load does the same on Triton 3.6 but not on 3.9, which orders its two axes of equal
# contiguity the other way.) The standalone quant's 1024-column tiles (rows of 7168, 2
# warps, whole blocks a thread) ran 1.027x / 1.023x as halves at 4096 / 16384 rows:
# QUANT_WHOLE_BLOCKS. Each is a condition on BLOCK that the kernel tests statically.
WHOLE_BLOCKS = "BLOCK == 4096"
QUANT_WHOLE_BLOCKS = "BLOCK == 1024"
NVFP4_HALVES = (
    "(tl.arange(0, BLOCK // 8)[:, None] % (BLOCK // 16)) * 16\n"
    "        + (tl.arange(0, BLOCK // 8)[:, None] // (BLOCK // 16)) * 8"
    " + tl.arange(0, 8)[None, :]"
)
NVFP4_HALVES_HELPER = """
@triton.jit
def nvfp4_halves(halves, global_scale, INTERPRET: tl.constexpr):
    # nvfp4 of blocks held as halves [2R, 8] (NVFP4_HALVES: row h * R + r is half h of
    # block r): the packed bytes [2R, 4] (in the same order) and the scale bytes [R]
    blocks = tl.reshape(halves, (2, halves.shape[0] // 2, 8))
    sf, inv = nvfp4_scales(tl.reduce(amax_of(blocks, 2), 0, nan_max), global_scale, INTERPRET)
    e = tl.reshape(blocks * inv[None, :, None], (halves.shape[0], 8))
    return e2m1_of(e, INTERPRET), sf.to(tl.uint8, bitcast=True)
"""


def row_columns(whole_blocks: str | None) -> str:
    """The columns of a row (tile) a program loads, from `col_start`: arange(BLOCK), or
    for an nvfp4 epilogue the halves of blocks where the condition `whole_blocks` holds
    (WHOLE_BLOCKS, QUANT_WHOLE_BLOCKS)."""
    if not whole_blocks:
        return "tl.arange(0, BLOCK)"
    return (
        f"(  # halves of blocks (quant.WHOLE_BLOCKS)\n        {NVFP4_HALVES}\n"
        f"        if {whole_blocks} else tl.arange(0, BLOCK)\n    )"
    )


NVFP4_PRELOAD = "    global_scale = tl.load(scale_ptr)  # nvfp4 global scale, loaded early\n"
NVFP4_BLOCKS = """    blocks = tl.reshape(v, (BLOCK // 16, 16))
    packed, sf = nvfp4_blocks(blocks, global_scale, INTERPRET)
    # stored as [BLOCK // 8, 4]: the 4 bytes a thread packs go out without a shuffle
    quads = col_start // 2 + tl.arange(0, BLOCK // 8)[:, None] * 4 + tl.arange(0, 4)[None, :]
    tl.store(out_ptr + row * out_row_stride + quads, tl.reshape(packed, (BLOCK // 8, 4)),
             mask=quads < n_cols // 2)
"""
NVFP4_HALVES_STORE = """    packed, sf = nvfp4_halves(v, global_scale, INTERPRET)
    half = tl.arange(0, BLOCK // 8)[:, None]  # half h * (BLOCK // 16) + r: 4 bytes of block r
    pairs = col_start // 2 + (half % (BLOCK // 16)) * 8 + (half // (BLOCK // 16)) * 4
    pairs += tl.arange(0, 4)[None, :]
    tl.store(out_ptr + row * out_row_stride + pairs, packed, mask=pairs < n_cols // 2)
"""
NVFP4_SCALES_STORE = """    k = col_start // 16 + tl.arange(0, BLOCK // 16)
    tl.store(scale_out_ptr + nvfp4_scale_offset(row, k, n_cols), sf, mask=k < n_cols // 16)
"""

# A block's scale stored by the threads that computed it (in memory order the two threads
# of a block both hold it, and both store the byte): tl.store would first move the bytes
# to a layout of its own through shared memory, with two barriers, on every call; a
# `pieces` kernel (kernel_spec.pieces_body) stores a row's scales piece by piece.
NVFP4_SCALES_IN_PLACE = """    k = col_start // 16 + tl.arange(0, BLOCK // 16)
    store_in_place(scale_out_ptr + nvfp4_scale_offset(row, k, n_cols), sf, k < n_cols // 16,
                   INTERPRET)
"""
STORE_IN_PLACE = """
@triton.jit
def store_in_place(pointers, value, mask, INTERPRET: tl.constexpr):
    # tl.store of bytes, each by the threads that hold it, in the layout it has
    if INTERPRET:
        tl.store(pointers, value, mask=mask)
    else:
        tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $3, 0; @p st.global.b8 [$1], $2; mov.b32 $0, 0; }",
            "=r,l,r,r", [pointers.to(tl.int64), value.to(tl.int32), mask.to(tl.int32)],
            dtype=tl.int32, is_pure=False, pack=1,
        )
"""


def nvfp4_store(whole_blocks: str | None, scales_in_place: bool = False) -> str:
    """The nvfp4 epilogue's store: blocks of 16 of a row in memory order, or of its
    halves (row_columns) where the condition `whole_blocks` holds; `scales_in_place`: the
    block scales stored by NVFP4_SCALES_IN_PLACE, not by tl.store."""
    helpers = "nvfp4_blocks, or nvfp4_halves" if whole_blocks else "nvfp4_blocks"
    head = f"\n    # epilogue: nvfp4, blocks of 16 ({helpers}), block scales swizzled 128x4\n"
    scales = NVFP4_SCALES_IN_PLACE if scales_in_place else NVFP4_SCALES_STORE
    if not whole_blocks:
        return head + NVFP4_BLOCKS + scales
    return (
        head
        + f"    if {whole_blocks}:  # the row as halves of blocks (row_columns)\n"
        + textwrap.indent(NVFP4_HALVES_STORE, "    ")
        + "    else:\n"
        + textwrap.indent(NVFP4_BLOCKS, "    ")
        + scales
    )


UE8M0 = "    s = ceil_pow2(s)  # ue8m0: power-of-two scales\n"

# Dynamic per-tensor fp8 runs in two kernels: the scale needs the amax of the whole
# tensor before any value can be quantized. Phase 1 only reduces (a kernel that keeps the
# value stores it through STORE_VALUE); phase 2 quantizes, normalising again after a plain
# norm or reading the value phase 1 stored (kernel_spec.per_tensor_phases).
# Phase 1 leaves its results in a float32 stats buffer: the amax in slots, and after a
# plain norm (or an add whose norm reads the rounded sum) each row's rstd at
# AMAX_ROW_SLOTS + row (norm.STORE_RSTD), so that phase 2 normalises tiles of a row
# without its reduction. Up to AMAX_ROW_SLOTS rows, each row stores its amax in a slot of
# its own (nothing to zero first: one graph node fewer, which pays at few rows); beyond,
# rows spread an atomic max over AMAX_SLOTS slots that the caller zeroes (one atomic per
# row on a single word serialised: 3 us of 9 at 4096 x 4096 on H200). Phase 2 reduces
# the slots; both kernels tell the two cases apart by their grid's row count, the row
# count of the tensor.
AMAX_SLOTS = 32
AMAX_ROW_SLOTS = 512
AMAX = (
    "",
    f"""
    # epilogue: phase 1 of a dynamic per-tensor quant: the row's amax, in a slot of its
    # own over at most {AMAX_ROW_SLOTS} rows, else an atomic max over {AMAX_SLOTS} zeroed slots
    row_amax = amax_of(v, 0)
    if tl.num_programs(0) <= {AMAX_ROW_SLOTS}:
        tl.store(scale_out_ptr + row, row_amax)
    else:
        tl.atomic_max(scale_out_ptr + row % {AMAX_SLOTS}, row_amax)
""",
)

PER_TENSOR_PRELOAD = f"""    # phase 1's amax over its slots (one a row to {AMAX_ROW_SLOTS} rows)
    n_rows = tl.num_programs(0)
    n_slots = tl.where(n_rows <= {AMAX_ROW_SLOTS}, n_rows, {AMAX_SLOTS})
    slots = tl.arange(0, {AMAX_ROW_SLOTS})
    amax = tl.reduce(tl.load(scale_ptr + slots, mask=slots < n_slots, other=0.0), 0, nan_max)
"""
# phase 2's scale: NUMERICS.md's, or `in_dtype` (torchao's per-tensor scale)
TENSOR_SCALES = {
    "per_tensor": (
        "s = max(amax / 448, 1 / (448 * 512))",
        "    s = nan_max(tl.math.div_rn(amax, 448.0), 1.0 / 229376.0)\n",
    ),
    "per_tensor in_dtype": (f"s = {IN_DTYPE_FORMULA}", in_dtype_scale("amax")),
}


def per_tensor(scheme: str, value_dtype: str) -> tuple[str, str]:
    """(preload, store) of phase 2 of a per-tensor scheme (see per_token)."""
    if scheme not in TENSOR_SCALES:
        raise ValueError(f"no epilogue for quant scheme {scheme!r}")
    formula, scale = TENSOR_SCALES[scheme]
    store = (
        f"\n    # epilogue: phase 2 of a dynamic per-tensor fp8, {formula}\n"
        + scale.format(value_dtype=value_dtype)
        + "    tl.store(scale_out_ptr, s, mask=(row == 0) & (col_start == 0))\n"
        + STORE.format(value="to_fp8(div_by(v, s, tl.math.div_rn(1.0, s)), INTERPRET)")
    )
    return PER_TENSOR_PRELOAD, store


# Schemes whose standalone kernel may split a row into tiles (no row-wide reduction).
TILEABLE = ("static", "per_group", "nvfp4", "per_tensor")


def epilogue(
    scheme: str,
    standalone: bool = False,
    value_dtype: str = "model_dtype",
    whole_blocks: str | None = None,
) -> tuple[str, str, str]:
    """(helpers, preload, store) for a quant scheme in `#irfuse.quant` syntax, or for
    `amax` (phase 1 of per_tensor); `standalone`: the quant is the whole kernel (it and
    the scheme pick the form of div_by, see DIV_BY); `value_dtype`: the dtype of the value
    quantized, as the kernel names it (`per_token in_dtype` rounds its scale to it);
    `whole_blocks`: nvfp4 on a row loaded by row_columns(whole_blocks)."""
    kind, *options = scheme.split()
    division = DIV_BY_BOUNDED if standalone or kind == "per_group" else DIV_BY
    fp8_helpers = ROUND_TO_E4M3 + NAN_MAX + division
    if kind == "none":
        return "", *NONE
    if kind == "amax":
        return NAN_MAX, *AMAX
    if kind == "per_tensor":
        return fp8_helpers, *per_tensor(scheme, value_dtype)
    if kind == "static":
        return fp8_helpers, *(STATIC_DIV if options == ["div"] else STATIC)
    if kind == "per_token":
        return fp8_helpers + DIV_FINITE, *per_token(scheme, value_dtype)
    if kind == "nvfp4":
        helpers = fp8_helpers + NVFP4_HELPERS + (NVFP4_HALVES_HELPER if whole_blocks else "")
        return helpers, NVFP4_PRELOAD, nvfp4_store(whole_blocks)
    if kind == "per_group":
        group, ue8m0, in_dtype = int(options[0]), "ue8m0" in options, "in_dtype" in options
        formula = "2^ceil(log2(max(amax, 1e-10) / 448))" if ue8m0 else "max(amax, 1e-10) / 448"
        formula = IN_DTYPE_FORMULA if in_dtype else formula
        scale = GROUP_SCALES[in_dtype].format(value_dtype=value_dtype)
        store = PER_GROUP[1].format(
            group=group, scale_formula=formula, scale=scale, ue8m0=UE8M0 if ue8m0 else ""
        )
        return fp8_helpers + (CEIL_POW2 if ue8m0 else ""), PER_GROUP[0], store
    raise ValueError(f"no epilogue for quant scheme {scheme!r}")


@functools.cache
def parse_scheme(scheme: str) -> tuple[str, int, bool, bool]:
    """(kind, group, column_major, ue8m0) of a scheme string (an `in_dtype` scale is the
    string's to tell); ValueError if malformed."""
    kind, *options = scheme.split()
    if kind in ("none", "static", "per_token", "per_tensor", "nvfp4", "amax") and not options:
        return kind, 0, False, False
    if kind == "static" and options == ["div"]:  # divided, not times the reciprocal
        return kind, 0, False, False
    if kind in ("per_token", "per_tensor") and options == ["in_dtype"]:  # in the value's dtype
        return kind, 0, False, False
    if kind == "per_group" and options and options[0] in ("64", "128"):
        flags = set(options[1:])
        if flags <= {"col", "ue8m0"} or flags <= {"col", "in_dtype"}:
            return kind, int(options[0]), "col" in flags, "ue8m0" in flags
    raise ValueError(f"unknown quant scheme {scheme!r}")
