"""What the GPU compiler makes of the generated kernels, checked on any machine: Triton
compiles them for an H100 (sm_90) here too, down to PTX, without running them
(tests/sm90_ptx.py, in a process of its own)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from irfuse.lowering.runtime import KERNEL_PARAMS
from tests.sm90_ptx import CONSTEXPRS, NUM_WARPS

SPECS = [
    "fused_add_rms_norm/plain/model/none/rounded_sum/normed_x",
    "fused_add_rms_norm/plain/model/per_token/rounded_sum/normed_x",
    "fused_add_rms_norm/plain/model/static/rounded_sum",
    "rms_norm/plain/model/per_group 128",
]
DTYPES = ["bf16", "fp16"]
# kernels checked only to compile, with scales rounded to the model dtype: one group per
# program (its launch for hidden 128 and a few rows: a tile of 128, one warp), or many, or
# a row's scale
COMPILED = [
    "quant/none/model/per_group 128 in_dtype:fp16:128:1",
    "quant/none/model/per_group 128 in_dtype:bf16:128:1",
    "rms_norm/plain/model/per_group 64 in_dtype:bf16",
    "fused_add_rms_norm/plain/model/per_token in_dtype:fp16",
]
# rms_norm + nvfp4 on aligned rows of 4096 columns at its launch over many rows (4 warps:
# whole blocks a thread, quant.WHOLE_BLOCKS), and the same norm without a quant
ALIGNED = ":aligned"
NVFP4 = {"rms_norm/plain/model/nvfp4:bf16:4096:4": "rms_norm/plain/model/none:bf16:4096:4"}
# rms_norm + nvfp4 over rows of 7168 columns in 7 pieces of 1024 (runtime.pieces_of), and
# the same norm over one piece without a quant
IN_PIECES = (
    "rms_norm/plain/model/nvfp4:bf16:1024:4:aligned:7",
    "rms_norm/plain/model/none:bf16:1024:4:aligned",
)

# rms_norm + per-token / nvfp4 at 8 rows a program (runtime.rows_per_program_of) beside
# the same kernel at a row a program, over 4096 columns: per-token at ROWS_WARPS (8) warps
# (2 loads of 16 bytes a thread a row), nvfp4 at 4 (4 loads)
SEVERAL_ROWS = {
    "rms_norm/plain/model/per_token:fp16:4096:8:aligned:0:8": 2,
    "rms_norm/plain/model/nvfp4:bf16:4096:4:aligned:0:8": 4,
}

# rms_norm + nvfp4 / per-token (8 rows a program) over rows of exactly 4096 columns,
# reading n_cols, each beside the same kernel taking it as BLOCK (runtime.full_block_of)
READS_N_COLS = (
    "rms_norm/plain/model/nvfp4:bf16:4096:4:aligned",
    "rms_norm/plain/model/per_token:fp16:4096:8:aligned:0:8",
)


def full_block(arg: str) -> str:
    """The sm90_ptx argument of `arg`'s kernel taking n_cols as BLOCK."""
    return arg + ":0" * (7 - len(arg.split(":"))) + ":full"


@pytest.fixture(scope="module")
def ptx_of() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [f"{spec}:{dtype}" for spec in SPECS for dtype in DTYPES] + COMPILED
    args += [arg + ALIGNED for pair in NVFP4.items() for arg in pair] + list(IN_PIECES)
    args += [*SEVERAL_ROWS, *(a_row_a_program(arg) for arg in SEVERAL_ROWS)]
    args += [*READS_N_COLS, *map(full_block, READS_N_COLS)]
    run = subprocess.run([sys.executable, "-m", "tests.sm90_ptx", *args], env=env,
                         cwd=Path(__file__).parent.parent, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    if run.returncode and "cuda" not in run.stderr.lower():
        raise AssertionError(run.stderr)
    if run.returncode:  # a Triton build without its CUDA backend or ptxas
        pytest.skip(f"Triton cannot compile for sm_90 here: {run.stderr[-300:]}")
    return json.loads(run.stdout)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", SPECS)
def test_no_model_dtype_rounding_is_contracted_into_an_fma(spec, dtype, ptx_of):
    """A plain sandwich rounds `x_norm * w` to the model dtype, then adds the residual.
    LLVM folds such fp32 round trips into model-dtype ops (a multiply whose fp32 product
    it rounds), and contracts a multiply and an add of those into one model-dtype FMA,
    which rounds once where the graph rounds twice (it did: a fifth of a sandwich's
    residual sums a step off on an H100); ptxas may contract a multiply without a rounding
    modifier too. The kernels' rounding is opaque to LLVM: no 16-bit multiply or FMA in
    the PTX that the compiler made (the kernels' own inline PTX multiplies 16-bit pairs with
    an explicit rounding, which nothing contracts). (The one 16-bit op left is the residual
    add of two loaded values, which rounds once either way.)"""
    ptx = ptx_of[f"{spec}:{dtype}"]
    compiled = re.sub(r"// begin inline asm.*?// end inline asm", "", ptx, flags=re.S)
    half_ops = re.findall(r"\b(?:fma|mul)(?:\.rn)?(?:\.ftz)?\.(?:bf16|f16)(?:x2)?\b", compiled)
    assert not half_ops, sorted(set(half_ops))
    assert re.search(rf"cvt\.rn\.{dtype.replace('fp', 'f')}x2\.f32", ptx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", SPECS)
def test_roundings_convert_two_elements_at_a_time(spec, dtype, ptx_of):
    """Each rounding of a row to the model dtype is one packed conversion per two elements
    (a scalar cvt costs a packed one's issue slot: a plain sandwich rounds five times an
    element and was held by them). What stays scalar is a store's conversion of a value
    already rounded: one an element per 16-bit tensor stored, at most two here."""
    ptx = ptx_of[f"{spec}:{dtype}"]
    short = dtype.replace("fp", "f")
    packed = len(re.findall(rf"cvt\.rn\.{short}x2\.f32", ptx))
    scalar = len(re.findall(rf"cvt\.rn\.{short}\.f32", ptx))
    elements = CONSTEXPRS["BLOCK"] // (32 * NUM_WARPS)  # a thread's share of the row
    assert packed >= elements // 2, (packed, scalar)
    assert scalar <= 2 * elements, (packed, scalar)


@pytest.mark.parametrize("spec", SPECS)
def test_bf16_rows_widen_without_a_conversion(spec, ptx_of):
    """A loaded bf16 pair widens to fp32 with a shift and a mask (bf16 is fp32's top
    half): Triton's cvt.f32.bf16 becomes a byte permute and a multiply on sm_90, one
    instruction more per pair, on every row (x, the residual, the weights) a norm reads."""
    ptx = ptx_of[f"{spec}:bf16"]
    assert not re.findall(r"cvt\.f32\.bf16", ptx)
    assert re.search(r"\{ shl\.b32 %r\d+, %r\d+, 16; and\.b32 %r\d+, %r\d+, 0xffff0000; \}", ptx)


@pytest.mark.parametrize("arg", COMPILED)
def test_scales_rounded_to_the_model_dtype_compile(arg, ptx_of):
    """torchao's scales (amax / 448 rounded to the model dtype) compile for sm_90: one
    group's scale is one element a thread, which the packed rounding of rows cannot take
    (it failed to compile on the GPU; the interpreter runs no inline PTX)."""
    assert ".entry" in ptx_of[arg]


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_plain_weight_step_multiplies_16_bit_pairs(dtype, ptx_of):
    """A plain norm's weight step, (v * rstd) rounded to the model dtype times w, rounded
    again: one packed 16-bit multiply a pair (the exact product rounded once, as torch's
    fp32 product of two 16-bit values is), not two widenings and an fp32 multiply."""
    ptx = ptx_of[f"rms_norm/plain/model/per_group 128:{dtype}"]
    assert re.search(rf"mul\.rn\.{dtype.replace('fp', 'f')}x2", ptx)


@pytest.mark.parametrize("arg", NVFP4)
def test_nvfp4_blocks_stay_in_one_thread(arg, ptx_of):
    """rms_norm + nvfp4 over rows of 4096 columns holds each block of 16 in one thread:
    its amax takes no shuffle and its scale (a division) is computed once. Its shuffles
    are the norm's sum of squares, as in the same norm without a quant. (Loaded in memory
    order, each block spans two threads: a shuffle a block, and each scale twice.)"""

    def shuffles(ptx: str) -> int:
        return len(re.findall(r"shfl\.sync", ptx))

    assert shuffles(ptx_of[arg + ALIGNED]) == shuffles(ptx_of[NVFP4[arg] + ALIGNED])


def test_nvfp4_pieces_store_their_scales_without_a_barrier(ptx_of):
    """rms_norm + nvfp4 in pieces stores each piece's block scales from the threads that
    computed them (quant.NVFP4_SCALES_IN_PLACE): its only barriers are those of the norm's
    one reduction over the row, as in a norm of one piece without a quant. (tl.store moved
    each piece's scales through shared memory first: two barriers a piece.)"""

    def barriers(ptx: str) -> int:
        return len(re.findall(r"bar\.sync", ptx))

    in_pieces, norm_alone = (ptx_of[arg] for arg in IN_PIECES)
    assert barriers(in_pieces) == barriers(norm_alone) > 0
    assert len(re.findall(r"st\.global\.b8", in_pieces)) == 7  # a piece's scales, once each


def a_row_a_program(arg: str) -> str:
    """The sm90_ptx argument of `arg`'s kernel at a row a program."""
    return arg.removesuffix(":8").removesuffix(":0")


@pytest.mark.parametrize("arg", SEVERAL_ROWS)
def test_several_rows_load_the_next_row_before_the_reduction(arg, ptx_of):
    """A program of several rows issues the next row's loads (vectorised, 16 bytes each)
    before the first row's reduction (its first barrier), on top of the loads a program
    of one row issues there: its row and the weight (and nothing is loaded twice)."""

    def loads_before_the_reduction(ptx: str) -> int:
        return len(re.findall(r"ld\.global\.v4", ptx.split("bar.sync", 1)[0]))

    one_row = loads_before_the_reduction(ptx_of[a_row_a_program(arg)])
    assert loads_before_the_reduction(ptx_of[arg]) == one_row + SEVERAL_ROWS[arg]


@pytest.mark.parametrize("arg", READS_N_COLS)
def test_rows_of_exactly_block_columns_never_read_n_cols(arg, ptx_of):
    """Over rows of exactly BLOCK columns the kernel takes n_cols as the constant BLOCK
    (norm.FULL_BLOCK): its masks, the mean's divisor and nvfp4's scale offsets fold, so
    that it never reads the parameter, and the masks' comparisons are gone."""
    param = f"_param_{KERNEL_PARAMS.index('n_cols')}]"
    full = ptx_of[full_block(arg)]
    assert param in ptx_of[arg] and param not in full
    assert len(re.findall(r"setp\.", full)) < len(re.findall(r"setp\.", ptx_of[arg]))
