"""Triton source for the RMSNorm family: one row of `n_cols` per program (standalone
quants with no row-wide reduction take one tile of a row per program instead; standalone
per-token over wide rows has a body of its own, quant.PER_TOKEN_TWO_PASS).

The body loads the row as fp32 `v`, optionally normalises it with its own weight and eps
first (a norm whose result only a residual add reads: Gemma's post-attention norm, the
first half of a sandwich), optionally adds the residual (storing the sum in
the model dtype; the norm reads the fp32 sum, or the stored one for a `rounded_sum` op),
normalises, applies the weight, and leaves `v` rounded to the norm's output dtype (the
model dtype, or fp32 for an `unrounded` norm) for the epilogue, so a fused quant sees
exactly what the unfused pair would.
"""

SIGNATURE = """
@triton.jit
def {name}(
    x_ptr, residual_ptr, weight_ptr, x_weight_ptr, scale_ptr, out_ptr, residual_out_ptr,
    scale_out_ptr, value_ptr, n_cols, x_row_stride, residual_row_stride, out_row_stride,
    residual_out_row_stride, scale_out_row_stride, scale_out_col_stride, value_row_stride, eps,
    x_eps, BLOCK: tl.constexpr, HAS_SCALE: tl.constexpr, INTERPRET: tl.constexpr,{rows_param}
):
"""
ROWS_PARAM = " n_rows,"  # a kernel of several rows a program: how many rows in all

# The body's start, after `col_start` is set: the row's columns, then (once `row` is set)
# its load.
ROW_COLUMNS = """    cols = col_start + {cols}
    mask = cols < n_cols
    model_dtype = x_ptr.dtype.element_ty
"""
LOAD_ROW = (
    "    v = widened(tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0), "
    "INTERPRET)\n"
)  # fmt: skip

ROWS_IN_ORDER = "    row = tl.program_id(0).to(tl.int64)\n"
# Several rows a program (kernel_spec._rows_body): the first row's load, then a loop over
# the rows that loads row i + 1 before it computes row i. The last program runs what is
# left of the n_rows rows (a parameter of these kernels alone); each program's last row
# loads itself again (from cache: a masked load of no row needs a scalar mask, which
# Triton's interpreter refuses).
ROWS_OF_A_PROGRAM = (
    "    first_row = tl.program_id(0).to(tl.int64) * {rows}  # {rows} rows a program\n"
    "    last_row = tl.minimum(first_row + {rows}, n_rows) - 1  # fewer in the last program\n"
    "    x_next = tl.load(x_ptr + first_row * x_row_stride + cols, mask=mask, other=0.0)\n"
)
NEXT_ROW = """    for row in range(first_row, last_row + 1):
        x_row = x_next
        # the next row's load in flight while this row computes
        next_row = tl.minimum(row + 1, last_row)
        x_next = tl.load(x_ptr + next_row * x_row_stride + cols, mask=mask, other=0.0)
        v = widened(x_row, INTERPRET)
"""
# Phase 2 of a per-tensor quant re-reads what phase 1 just read: the rows phase 1 read
# last are the ones still in L2, so they go first.
ROWS_LAST_FIRST = (
    "    row = (tl.num_programs(0) - 1 - tl.program_id(0)).to(tl.int64)  # last rows first\n"
)
WHOLE_ROW = "    col_start = 0  # the whole row\n"
# A row of exactly BLOCK columns (KernelSpec.full_block): n_cols as the constant BLOCK, so
# that Triton drops the row's masks and folds what is computed from n_cols (the mean's
# division, nvfp4's scale offsets). sm_90 SASS (Triton 3.6, bench/sass.py), rms_norm +
# nvfp4 at 4096 columns on 4 warps: 792 instructions a thread against 848, in the same
# 64 registers; rms_norm + per-token on 8 warps 496 against 512.
FULL_BLOCK = "    n_cols = BLOCK  # the row fills BLOCK: its masks and n_cols' arithmetic fold\n"
# Without a row-wide reduction a row splits into tiles, so that a few rows still fill the
# GPU (one program per row leaves most SMs idle below ~100 rows). The grid is rows x tiles,
# and programs start in grid order (axis 0 fastest): read as one index over the tiles in
# memory order, programs that run together read adjacent tiles, not a column of tiles one
# row apart. The index is unsigned 32-bit: a 64-bit division by the tiles of a row cost
# ~100 SASS instructions a thread before the first load, 24 here (standalone nvfp4 1.6%-
# 1.8% faster on H100, bench/RESULTS.md), and no tensor that fits in memory has 2^32
# tiles (a row of two tiles spans over 1024 columns; the grid's rows are under 2^31).
TILE_INDEX = """    tile = tl.program_id(1).to(tl.uint32) * tl.num_programs(0) + tl.program_id(0)
    tiles = tl.num_programs(1).to(tl.uint32)
    tile_row = tile // tiles
"""
ROW_TILES_IN_ORDER = TILE_INDEX + "    row = tile_row.to(tl.int64)\n"
ROW_TILES_LAST_FIRST = (
    TILE_INDEX + "    row = (tl.num_programs(0) - 1 - tile_row).to(tl.int64)  # last rows first\n"
)
ROW_TILE = "    col_start = (tile - tile_row * tiles).to(tl.int32) * BLOCK  # one tile of the row\n"

# The residual's row, loaded before x's own norm (a sandwich's) so that its load is in
# flight during that reduction.
LOAD_RESIDUAL = """    residual_row = residual_ptr + row * residual_row_stride
    residual = widened(tl.load(residual_row + cols, mask=mask, other=0.0), INTERPRET)
"""

ADD_RESIDUAL = """
    # residual add: the sum in fp32; residual_out in the model dtype
    v += residual
    tl.store(
        residual_out_ptr + row * residual_out_row_stride + cols,
        stored_as(v, model_dtype, INTERPRET),
        mask=mask,
    )
"""

# The graph's add rounds the sum before the norm reads it (a `rounded_sum` fused op).
ROUND_SUM = "    v = round_to(v, model_dtype, INTERPRET)  # the norm reads the rounded sum\n"

# The weight stays in its own dtype: the plain weight step multiplies it packed.
PRELOAD_WEIGHT = """
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0)  # loaded early
"""

RMS_NORM = """
    # rms_norm over the row (variance on the fp32 value); the result rounds to norm_dtype
    norm_dtype = {norm_dtype}
    # eps in fp32 whatever the launcher passed (Inductor's wrapper passes floats as fp64)
    rstd = tl.rsqrt(tl.sum(v * v) / n_cols + tl.cast(eps, tl.float32))
"""

# rms_norm + nvfp4 over a row of a few BLOCK-wide pieces that is not a power of two
# (7168 = 7 x 1024; kernel_spec.pieces_body): each piece is held in registers of its own,
# so that no lane pads the row (a BLOCK of 8192 lanes spends an eighth of its work on
# columns 7168 to 8191, and this kernel is bound by its instructions). n_cols is exactly
# the pieces (runtime.pieces_of), so nothing is masked.
PIECE_COLUMNS = """    model_dtype = x_ptr.dtype.element_ty
    piece = tl.arange(0, BLOCK)  # a piece's columns: the row is {pieces} pieces, none padded
"""
PIECE_LOAD = (
    "    v{i} = widened(tl.load(x_ptr + row * x_row_stride + {i} * BLOCK + piece), INTERPRET)\n"
)
PIECE_WEIGHT = "    w{i} = tl.load(weight_ptr + {i} * BLOCK + piece)  # loaded early\n"
PIECES_NORM = """
    # rms_norm over the row (variance on the fp32 value, its squares summed piece by
    # piece, then over the piece); each piece's result rounds to norm_dtype
    norm_dtype = {norm_dtype}
    squares = ({squares})
    rstd = tl.rsqrt(tl.sum(squares) / n_cols + tl.cast(eps, tl.float32))
"""
# A piece's weight step and epilogue, as a helper the kernel calls once a piece.
PIECE_EPILOGUE = """
@triton.jit
def {name}(
    v, w, rstd, row, col_start, n_cols: tl.constexpr, out_ptr, out_row_stride, scale_out_ptr,
    global_scale, model_dtype: tl.constexpr, norm_dtype: tl.constexpr, BLOCK: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # columns col_start to col_start + BLOCK of a row (all n_cols of them in range)
{weighted}{store}"""
PIECE_CALL = (
    "    {name}(v{i}, w{i}, rstd, row, {i} * BLOCK, {pieces} * BLOCK, out_ptr, out_row_stride,\n"
    "        scale_out_ptr, global_scale, model_dtype, norm_dtype, BLOCK, INTERPRET)\n"
)

# Phase 1 of a per-tensor quant after a plain norm keeps each row's rstd for phase 2
# (quant.AMAX_ROW_SLOTS: where the stats buffer's per-row part starts), which then
# normalises tiles of the row without the row's reduction.
STORE_RSTD = """    tl.store(scale_out_ptr + {slots} + row, rstd)  # for phase 2
"""
RSTD_OF_PHASE_1 = """
    # rms_norm with the row's rstd from phase 1 (a tile of the row: no reduction here)
    norm_dtype = {norm_dtype}
    rstd = tl.load(scale_ptr + {slots} + row)
"""

STORE_VALUE = """
    # the unquantized value too, for readers that need it (one pass instead of two)
    tl.store(value_ptr + row * value_row_stride + cols, v.to(value_ptr.dtype.element_ty),
             mask=mask)
"""

# How the normalised `v` meets its weight `{w}` (loaded in its own dtype; `{rstd}` the
# row's rstd; the result rounds to `{out}`).
WEIGHT = {
    # y = (v * rstd).to(dt) * w, the product rounded to dt as torch does
    "plain": "    v = times_weight(v * {rstd}, {w}, model_dtype, {out}, INTERPRET)\n",
    # y = (v * rstd * w).to(dt)  (F.rms_norm's decomposition)
    "fp32": "    v = round_to(v * {rstd} * widened({w}, INTERPRET), {out}, INTERPRET)\n",
    # Gemma: y = (v * rstd * (1 + w)).to(dt)
    "gemma": "    v = round_to(v * {rstd} * (1.0 + widened({w}, INTERPRET)), {out}, INTERPRET)\n",
}


def weighted(mode: str) -> str:
    """The norm's weight step (WEIGHT[mode]) on the row's `rstd` and `w`."""
    return WEIGHT[mode].format(rstd="rstd", w="w", out="norm_dtype")


# The addend's own norm, before the residual add (its weight and eps: x_weight_ptr, x_eps).
NORM_X = """
    # rms_norm of x first ({mode} weight), rounded to the model dtype as the graph's norm
    # leaves it for the residual add (a sandwich's first norm)
    x_w = tl.load(x_weight_ptr + cols, mask=mask, other=0.0)
    x_rstd = tl.rsqrt(tl.sum(v * v) / n_cols + tl.cast(x_eps, tl.float32))
"""


def norm_of_x(mode: str) -> str:
    """NORM_X then its weight step."""
    step = WEIGHT[mode].format(rstd="x_rstd", w="x_w", out="model_dtype")
    return NORM_X.format(mode=mode) + step


# fp32 -> dtype -> fp32 with round-to-nearest-even. The interpreter truncates on the
# fp32 -> bf16 cast (TOOLCHAIN.md), so there the rounding is done on the bits first. On
# the GPU the rounding is inline PTX that LLVM cannot see into: otherwise it rewrites
# ext(trunc(ext(a) * ext(b))) + ext(c) as a multiply and an add in the model dtype and
# contracts those into one FMA, which rounds once where the graph's two ops round twice
# (a plain sandwich's residual sum was a step off in ~20% of elements). bf16 and fp16
# round two elements per conversion: Triton's own scalar cvt is an F2F (a quarter of the
# FMA rate on sm_90), the packed one an F2FP for two; a plain sandwich rounds five times
# an element. (For fp32 the round trip is the identity; the `mov` then only keeps an fp32
# product apart from an add, as eager computes it.)
ROUND_TO = """
@triton.jit
def round_to(v, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    if INTERPRET:
        if dtype == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            v = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
        return v.to(dtype).to(tl.float32)
    if dtype == tl.bfloat16:
        # the pair's halves widened back: a shift and a mask (bf16 is fp32's top half)
        return tl.inline_asm_elementwise(
            "{ .reg .b32 pair; cvt.rn.bf16x2.f32 pair, $3, $2; "
            "shl.b32 $0, pair, 16; and.b32 $1, pair, 0xffff0000; }",
            "=r,=r,r,r", [v], dtype=tl.float32, is_pure=True, pack=2,
        )
    if dtype == tl.float16:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 pair; .reg .b16 lo, hi; cvt.rn.f16x2.f32 pair, $3, $2; "
            "mov.b32 {lo, hi}, pair; cvt.f32.f16 $0, lo; cvt.f32.f16 $1, hi; }",
            "=r,=r,r,r", [v], dtype=tl.float32, is_pure=True, pack=2,
        )
    return tl.inline_asm_elementwise(
        "mov.b32 $0, $1;", "=r,r", [v.to(dtype).to(tl.float32)], dtype=tl.float32,
        is_pure=True, pack=1,
    )
"""

# 16-bit rows in and out of fp32 (norm kernels; the interpreter's casts truncate,
# TOOLCHAIN.md, so there a value is rounded before its cast).
CONVERSIONS = {
    # a bf16 pair's halves are the top halves of two fp32 values, so a shift and a mask
    # widen them (Triton's cast spends a byte permute more per pair; fp16 keeps its cvt)
    "widened": """
@triton.jit
def widened(v, INTERPRET: tl.constexpr):
    if INTERPRET or v.dtype != tl.bfloat16:
        return v.to(tl.float32)
    return tl.inline_asm_elementwise(
        "{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }",
        "=r,=r,r", [v], dtype=tl.float32, is_pure=True, pack=2,
    )
""",
    # round_to one element at a time, for tensors that may hold one element a thread
    # (a row's or a group's scales): the packed conversion takes two
    "round_each": """
@triton.jit
def round_each(v, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    if INTERPRET:
        return round_to(v, dtype, INTERPRET)
    return tl.inline_asm_elementwise(
        "mov.b32 $0, $1;", "=r,r", [v.to(dtype).to(tl.float32)], dtype=tl.float32,
        is_pure=True, pack=1,
    )
""",
    # the plain weight step, round_to(round_to(v, dtype) * w, out): with w, v and the
    # product all 16-bit, one packed multiply of two elements (the exact product rounded
    # once: what torch computes through fp32, where the product of two bf16 or two fp16
    # values is exact) in place of two widenings, a multiply an element and a second
    # rounding; 1.02x-1.18x on rms_norm + nvfp4 / static fp8 (bench/RESULTS.md)
    "times_weight": """
@triton.jit
def times_weight(v, w, dtype: tl.constexpr, out: tl.constexpr, INTERPRET: tl.constexpr):
    if INTERPRET or w.dtype != dtype or out != dtype or dtype == tl.float32:
        return round_to(round_to(v, dtype, INTERPRET) * widened(w, INTERPRET), out, INTERPRET)
    if dtype == tl.bfloat16:
        return tl.inline_asm_elementwise(
            "{ .reg .b32 pair; cvt.rn.bf16x2.f32 pair, $3, $2; mul.rn.bf16x2 pair, pair, $4; "
            "shl.b32 $0, pair, 16; and.b32 $1, pair, 0xffff0000; }",
            "=r,=r,r,r,r", [v, w], dtype=tl.float32, is_pure=True, pack=2,
        )
    return tl.inline_asm_elementwise(
        "{ .reg .b32 pair; .reg .b16 lo, hi; cvt.rn.f16x2.f32 pair, $3, $2; "
        "mul.rn.f16x2 pair, pair, $4; mov.b32 {lo, hi}, pair; cvt.f32.f16 $0, lo; "
        "cvt.f32.f16 $1, hi; }",
        "=r,=r,r,r,r", [v, w], dtype=tl.float32, is_pure=True, pack=2,
    )
""",
    # a value the kernel keeps unrounded, stored: one conversion (round_to then a cast
    # converts twice)
    "stored_as": """
@triton.jit
def stored_as(v, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    if INTERPRET:
        return round_to(v, dtype, INTERPRET).to(dtype)
    return v.to(dtype)
""",
}


def conversions_in(body: str) -> str:
    """The CONVERSIONS helpers that `body` calls."""
    return "".join(text for name, text in CONVERSIONS.items() if f"{name}(" in body)


# One row per program holds the whole row in registers: beyond this, it would spill.
MAX_COLS = 65536
