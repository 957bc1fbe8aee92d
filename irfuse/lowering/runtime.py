"""Runtime ops that launch the generated kernels (what exported graphs call).

`torch.ops.irfuse.kernel_norm` covers the RMSNorm family and the standalone quant
kernels: its `kernel` argument (an encoded KernelSpec: producer, weight mode, norm output
dtype, quant scheme) selects the kernel, generated and compiled once per process (see
kernel_cache). Per call it checks only shapes, dtypes and devices (no host sync) and
launches its kernel (two for a dynamic per-tensor quant), so it runs inside CUDA graphs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any

import torch
import triton

from irfuse.kernels.norm import MAX_COLS
from irfuse.kernels.quant import AMAX_ROW_SLOTS, AMAX_SLOTS, parse_scheme
from irfuse.lowering.kernel_cache import load_kernel
from irfuse.lowering.kernel_spec import (
    KernelSpec,
    kernel_source,
    per_tensor_phases,
    plain_norm_nvfp4,
)
from irfuse.lowering.registration import runtime_op
from irfuse.ops.quant import FP8_MIN_SCALE, alloc_group_scales, alloc_nvfp4_scales

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
FP8 = torch.float8_e4m3fn


@functools.cache
def compiled_kernel(spec: KernelSpec) -> Any:
    return load_kernel(spec.name, kernel_source(spec))


@functools.cache
def decode(kernel: str) -> KernelSpec:
    return KernelSpec.decode(kernel)


@functools.cache
def _label(spec: KernelSpec) -> str:
    return f"irfuse.kernel_norm ({spec.describe()})"


@functools.cache
def _one_row_per_tensor(spec: KernelSpec) -> KernelSpec:
    """A per-tensor quant of a single row: its per-token scale is the same formula over
    the same values, so the per-token kernel computes it in one pass."""
    return dataclasses.replace(spec, quant=spec.quant.replace("per_tensor", "per_token"))


MANY_ROWS = 1024  # launch_config's row count from which fewer warps win (see there)


def next_power_of_2(n: int) -> int:
    """triton.next_power_of_2, in plain int arithmetic for a positive int: Triton's (a
    constexpr_function in 3.9) costs ~2-5 us of host time a call, and a launch makes
    several. A symbolic size goes to Triton's (it builds the expression)."""
    return 1 << (n - 1).bit_length() if isinstance(n, int) and n > 0 else triton.next_power_of_2(n)


def cdiv(a: int, b: int) -> int:
    """triton.cdiv, in plain int arithmetic for ints (see next_power_of_2)."""
    return (a + b - 1) // b if isinstance(a, int) and isinstance(b, int) else triton.cdiv(a, b)


def launch_config(
    n_rows: int,
    n_cols: int,
    scheme: str = "none",
    row_tiles: bool = False,
    norm: bool = False,
    plain_norm: bool = False,
) -> tuple[int, int]:
    """(BLOCK, num_warps) for rows of `n_cols` elements, chosen by measurement on H200
    (bench/RESULTS.md): 16 warps from 4096 columns (32 for few rows of 8192+), except that
    from 1024 rows an epilogue with its own amax reduction runs best with fewer (4096
    columns: 4 for per-token, 8 for per-group; 16 cost ~30% there, but win at few rows;
    per-token rows padded to a power of two, as 7168 is, run best with 16). Kernels that
    tile rows (`row_tiles`) take their tile from ROW_TILES (NORM_ROW_TILES for a `norm`).
    A `plain_norm` (rms_norm with no residual) + static, per-token or per-group fp8 over
    many rows runs best with few warps (PLAIN_NORM_WARPS)."""
    block = next_power_of_2(n_cols)
    kind = scheme.split()[0]
    if row_tiles:
        tiles = NORM_ROW_TILES[kind] if norm else ROW_TILES[kind]
        _, tile, num_warps = next(t for t in tiles if n_rows < t[0])
        if kind == "nvfp4" and tile > 1024 and n_cols % tile:  # 1024 beats ragged 2048
            tile //= 2
        return (tile, num_warps) if block >= tile else (block, max(1, min(num_warps, block // 128)))
    many_rows = n_rows >= MANY_ROWS
    if plain_norm and many_rows and kind in PLAIN_NORM_WARPS and block <= 8192:
        return block, PLAIN_NORM_WARPS[kind][block > 4096]
    if many_rows and kind == "per_token" and block != n_cols and block >= 8192:
        return block, 16
    if many_rows and kind in ("per_token", "nvfp4", "amax"):
        return block, max(4, min(16, block // 1024))
    if many_rows and kind == "per_group":
        return block, max(4, min(16, block // 512))
    if block >= 8192 and not many_rows:
        return block, 32
    return block, max(4, min(16, block // 256))


# rms_norm (no residual) + quant from MANY_ROWS rows: (warps up to 4096 columns, warps
# for 8192). It moves 3 bytes an element (the add's kernel 7), so more rows in flight beat
# wider programs. H100, kernel alone over rotating inputs against Inductor (bench/
# launch_sweep.py, RESULTS.md, thirtieth session), at 4096 / 16384 rows: static 4096
# columns 1.25x / 1.23x Inductor at 2 warps (16: 1.14x / 1.11x), 7168 1.27x / 1.21x at 4
# (16: 1.19x / 1.15x); per-token 7168 1.67x / 1.46x at 4 (16: 1.63x / 1.40x), 4096 at 4
# as before. nvfp4 keeps its warps (4, 8), already the best or within 1.5%. Per-group
# (groups of 128; thirty-first session): 8 warps at 4096 as before (1.63x Inductor at 4096
# rows), 8 for 8192 (16 before): 7168 1.50x / 1.52x (16: 1.42x / 1.40x), 8192 1.59x /
# 1.64x (16: 1.52x / 1.51x) at 4096 / 16384 rows.
PLAIN_NORM_WARPS = {"static": (2, 4), "per_token": (4, 4), "per_group": (8, 8)}

# Row tiles of the standalone static / per-tensor / per-group / nvfp4 kernels: (below this
# many rows, tile columns, num_warps), first match. Measured on H200 at hidden 4096 and
# 7168 from 1 to 16384 rows (bench/RESULTS.md): tiles fill the GPU at few rows and avoid
# the padding of 7168 to 8192 lanes; per-group and nvfp4 run best with 2 warps per 1024
# columns, nvfp4 over many rows with 2048-column tiles where they divide the row (4096:
# 3-7% faster; 7168 keeps 1024).
ROW_TILES = {
    # many rows: 1024 columns (H100, thirtieth session, tiles read in memory order:
    # 0.986x-0.996x Inductor at 4096 / 7168 x 4096 / 16384, against 0.969x-0.992x at 2048)
    "static": ((64, 1024, 8), (1024, 2048, 8), (math.inf, 1024, 4)),
    # phase 2 (a static quant by phase 1's scale): whole rows from 64, which re-read what
    # phase 1 left in L2, rows last first (chosen when tiles were read a column of tiles
    # at a time; not re-measured since tiles go in memory order)
    "per_tensor": ((64, 1024, 8), (1024, MAX_COLS, 16), (math.inf, MAX_COLS, 4)),
    "per_group": ((64, 1024, 8), (math.inf, 1024, 2)),
    "nvfp4": ((64, 1024, 4), (math.inf, 2048, 2)),
}
# Norm kernels that tile rows: phase 2 of a per-tensor quant after a plain norm. H200,
# scratch sweep at hidden 4096 and 7168, 16 to 16384 rows (bench/RESULTS.md, ninth
# session): 1024 columns with 2 warps over many rows, 4 over a few; within 3% of the best
# of 1024 / 2048 columns x 2 / 4 / 8 warps at every size.
NORM_ROW_TILES = {"per_tensor": ((AMAX_ROW_SLOTS + 1, 1024, 4), (math.inf, 1024, 2))}


# Standalone per-token rows padded to 8192+ lanes (hidden 5120, 7168), from 256 rows: one
# program of 8 warps per row, in two passes over the row's quarters (the amax, then the
# quant re-reading the row from L2; quant.PER_TOKEN_TWO_PASS). H200, kernel alone
# (bench/RESULTS.md, sixth session), x the one-pass kernel: 7168 x 256 / 1024 / 2048 /
# 4096 rows 1.05x / 1.17x / 1.35x / 1.38x, 5120 alike; 1.05x-1.11x the fifth session's
# persistent programs at 4096 / 16384 rows. Rows that fill their lanes, or a smaller
# padded block (2880 in 4096: 0.73x-0.99x), run faster in one pass.
TWO_PASS_MIN_ROWS = 256
TWO_PASS_MIN_BLOCK = 8192
TWO_PASS_WARPS = 8


# rms_norm + nvfp4 without a residual (kernel_spec.plain_norm_nvfp4) over 16-bit rows of
# PIECES pieces of PIECE_COLS columns (3072, 5120 to 8192), at any row count: a program of
# PIECES_WARPS warps holds its row as pieces, 8 columns a thread in each, none padded
# (kernel_spec.pieces_body). As one BLOCK, 7168 columns take 8192 lanes: 920 SASS
# instructions a thread for 28 columns, against 1400 for 56 in pieces (96 registers;
# 8192: 920 for 32 against 1552 for 64, in 120). On an H100, kernel alone, x one BLOCK
# (bench/RESULTS.md, forty-third session): 5120 1.46x / 1.55x at 4096 / 16384 rows;
# 3072 1.09x-1.19x, 6144 1.10x-1.34x, 7168 1.06x-1.18x, 8192 1.02x-1.10x from 1 to 16384
# rows. 4096 columns keep the halves of blocks (quant.WHOLE_BLOCKS): 4 pieces ran 1.04x /
# 0.95x them at 4096 / 16384 rows. (Pieces of 2048 columns, 8 warps, ran 2%-5% faster up
# to 256 rows of 6144 or 8192, and 0.96x-1.00x these at 4096 and 16384.)
PIECE_COLS = 1024
PIECES_WARPS = 4
PIECES = (3, 5, 6, 7, 8)


def pieces_of(spec: KernelSpec, n_cols: int, dtype: torch.dtype) -> int:
    """How many pieces of PIECE_COLS columns `spec`'s kernel holds a row of `n_cols`
    `dtype` values in (0: the row in one BLOCK). Only 16-bit rows: fp32 ones, untimed,
    would take 145 registers a thread at 8 pieces against 120."""
    pieces = n_cols // PIECE_COLS
    if (
        not plain_norm_nvfp4(spec)
        or dtype not in (torch.bfloat16, torch.float16)
        or n_cols != pieces * PIECE_COLS
        or pieces not in PIECES
    ):
        return 0
    return pieces


@functools.cache
def _in_pieces(spec: KernelSpec, pieces: int) -> KernelSpec:
    return dataclasses.replace(spec, pieces=pieces)


# rms_norm + per-token fp8 (ROWS_SCHEMES) without a residual over ROWS_MIN_ROWS to ROWS_MAX_ROWS
# 16-bit rows of ROWS_COLS columns: a program runs ROWS_PER_PROGRAM rows (the last what is
# left), loading row i + 1 before it computes row i (kernel_spec._rows_body), the weight
# once. At 4096 x 4096 a program a row launches about 4 waves of programs that each
# load, then compute about as many instructions as their bytes take to move. On an H100
# (bench/RESULTS.md, forty-first session) the same loop, built by a probe from the
# generated source, ran 1.079x (nvfp4, before its halves of blocks) and 1.040x
# (per-token) at 4096 x 4096, and 0.997x-0.998x at 16384 rows. The generated form, kernel
# alone on an H100 (forty-fifth session): per-token 1.021x at 4096 rows, 0.996x at 8192;
# nvfp4 1.005x and 0.948x, so only per-token runs it (kernel_spec keeps the form generic;
# norm_rows_probe times nvfp4's). At ROWS_WARPS warps (forty-sixth session, same probe):
# per-token 1.052x / 1.010x a row a program at 4096 / 8192 rows, against 1.023x / 0.993x
# at 4 (2 warps: 0.993x / 0.962x); nvfp4 1.000x / 0.951x. nvfp4 in pieces (7168, 8192)
# at 4 or 8 rows a program ran 0.75x-0.87x a row a program: no such kernel is built.
# Forty-seventh session, same probe: per-token at 4096 columns beyond the range, 1.002x /
# 0.993x at 12288 / 16384 rows; at 8192 columns, 1.025x / 1.016x at 4096 / 8192 rows.
ROWS_PER_PROGRAM = 8
ROWS_WARPS = 8
ROWS_COLS = (4096, 8192)
ROWS_MIN_ROWS = 4096
ROWS_MAX_ROWS = 8192  # from here, a program a row again
ROWS_SCHEMES = ("per_token",)


def rows_per_program_of(spec: KernelSpec, n_rows: int, n_cols: int, dtype: torch.dtype) -> int:
    """How many rows a program of `spec`'s kernel runs over [n_rows, n_cols] of `dtype`
    values (0: one, the generated kernel's own form). Only 16-bit rows, as timed."""
    if (
        dtype not in (torch.bfloat16, torch.float16)
        or spec.producer != "rms_norm"
        or spec.keep_value
        or spec.pieces
        or parse_scheme(spec.quant)[0] not in ROWS_SCHEMES
        or not isinstance(n_rows, int)
        or n_cols not in ROWS_COLS
        or not ROWS_MIN_ROWS <= n_rows < ROWS_MAX_ROWS
    ):
        return 0
    return ROWS_PER_PROGRAM


def full_block_of(spec: KernelSpec, n_cols: int, config: tuple[int, int] | None = None) -> bool:
    """Whether `spec`'s kernel (at `config`, else its own launch) takes n_cols as the
    constant BLOCK (norm.FULL_BLOCK): a program a whole row (or several), of exactly
    BLOCK columns known when the kernel is chosen."""
    if spec.pieces or spec.two_pass or spec.row_tiles or not isinstance(n_cols, int):
        return False
    # a whole row's BLOCK is its columns' next power of two (launch_config)
    return n_cols == (config[0] if config else next_power_of_2(n_cols))


@functools.cache
def _full_block(spec: KernelSpec) -> KernelSpec:
    return dataclasses.replace(spec, full_block=True)


@functools.cache
def _in_rows(spec: KernelSpec, rows: int) -> KernelSpec:
    return dataclasses.replace(spec, rows_per_program=rows)


def spec_launch_config(spec: KernelSpec, n_rows: int, n_cols: int) -> tuple[int, int]:
    """launch_config for `spec`'s kernel over [n_rows, n_cols] (norm_launch then gives a
    two-pass kernel TWO_PASS_WARPS); a kernel in pieces takes PIECE_COLS, PIECES_WARPS, one
    of several rows a program ROWS_WARPS."""
    if spec.pieces:
        return PIECE_COLS, PIECES_WARPS
    if spec.rows_per_program:
        return next_power_of_2(n_cols), ROWS_WARPS
    norm = spec.producer != "quant"
    plain_norm = spec.producer == "rms_norm" and not spec.keep_value  # 3 bytes an element
    return launch_config(n_rows, n_cols, spec.quant, spec.row_tiles, norm, plain_norm)


def runs_two_pass(spec: KernelSpec, n_rows: int, n_cols: int) -> bool:
    """Whether `spec` over [n_rows, n_cols] runs its two-pass variant."""
    block = next_power_of_2(n_cols)
    return (
        spec.producer == "quant"
        and spec.quant.split()[0] == "per_token"
        and n_rows >= TWO_PASS_MIN_ROWS
        and TWO_PASS_MIN_BLOCK <= block != n_cols
    )


@functools.cache
def _two_pass(spec: KernelSpec) -> KernelSpec:
    return dataclasses.replace(spec, two_pass=True)


@functools.cache
def sm_count(device: torch.device) -> int:
    """SMs of `device` (a CUDA device)."""
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.cache
def shared_memory_limit(device: torch.device) -> int:
    """Shared memory one program may ask of `device`: the limit Triton checks at launch."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    return triton.runtime.driver.active.utils.get_device_properties(index)["max_shared_mem"]


def tma_strides_ok(*tensors: torch.Tensor) -> bool:
    """TMA needs 16-byte aligned row/batch/head strides; a broadcast (stride 0, e.g. heads
    expanded for GQA) has no descriptor."""
    return all(
        all(s * t.element_size() % 16 == 0 and s > 0 for s in t.stride()[:3]) for t in tensors
    )


def tma_ok(*tensors: torch.Tensor) -> bool:
    """tma_strides_ok, and 16-byte aligned bases."""
    return tma_strides_ok(*tensors) and all(t.data_ptr() % 16 == 0 for t in tensors)


def allocate_outputs(
    spec: KernelSpec, x: torch.Tensor, has_residual: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, residual_out, scales, value) for `x` (fake tensors and symbolic sizes too)."""
    value = x.new_empty(x.shape, dtype=_value_dtype(spec, x)) if spec.keep_value else x.new_empty(0)
    return (*_allocate(spec, x, has_residual), value)


def _allocate(
    spec: KernelSpec, x: torch.Tensor, has_residual: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kind, group, column_major, _ = parse_scheme(spec.quant)
    rows, n = x.shape[:-1], x.shape[-1]
    residual_out = x.new_empty(x.shape) if has_residual else x.new_empty(0)
    if kind == "none":
        return x.new_empty(x.shape, dtype=_value_dtype(spec, x)), residual_out, x.new_empty(0)
    if kind == "nvfp4":
        m = x.shape[0]
        out = x.new_empty((m, n // 2), dtype=torch.uint8)
        scales = alloc_nvfp4_scales(m, n, x)
        return out, residual_out, scales
    out = x.new_empty(x.shape, dtype=FP8)
    if kind == "static":
        scales = x.new_empty(0)
    elif kind == "per_tensor":
        scales = x.new_empty(1, dtype=torch.float32)
    elif kind == "per_token":
        scales = x.new_empty((*rows, 1), dtype=torch.float32)
    else:
        scales = alloc_group_scales(x, group, column_major)
    return out, residual_out, scales


def _check(
    spec: KernelSpec,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    scale: torch.Tensor | None,
    x_weight: torch.Tensor | None = None,
) -> None:
    what = _label(spec)
    kind, group, column_major, _ = parse_scheme(spec.quant)
    if x.dtype not in (torch.bfloat16, torch.float16, torch.float32) or x.dim() == 0:
        raise TypeError(f"{what}: x must be a bf16/fp16/fp32 tensor, got {x.dtype} {x.shape}")
    if x.shape[-1] > MAX_COLS:
        raise ValueError(
            f"{what}: hidden size {x.shape[-1]} > {MAX_COLS} is not supported (a graph "
            "compiled at a symbolic hidden size fuses for sizes up to that: mark it static)"
        )
    if (kind == "nvfp4" or column_major) and x.dim() != 2:
        raise ValueError(f"{what}: x must be 2-D, got shape {list(x.shape)}")
    block = 16 if kind == "nvfp4" else group
    if block and x.shape[-1] % block:
        raise ValueError(f"{what}: hidden size {x.shape[-1]} is not a multiple of {block}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype):
        raise ValueError(
            f"{what}: residual {residual.dtype} {list(residual.shape)} must "
            f"match x {x.dtype} {list(x.shape)}"
        )
    if spec.producer != "quant":
        _check_weight(what, "weight", spec, weight, x)
    adds = spec.producer in ("fused_add_rms_norm", "rms_norm_add")
    if (residual is None) == adds:
        raise ValueError(f"{what}: " + ("needs its residual" if adds else "takes no residual"))
    if spec.normed_x:
        _check_weight(what, "x_weight", spec, x_weight, x)
    elif x_weight is not None:
        raise ValueError(f"{what}: takes no x_weight (its x is not normalised first)")
    if kind in ("static", "nvfp4") and scale is None:
        raise ValueError(f"{what}: needs its scale")
    no_bound = kind in ("per_tensor", "per_group") or spec.in_dtype
    if no_bound and scale is not None:
        raise ValueError(f"{what}: takes no scale (its scale is computed, with no upper bound)")
    if scale is not None and (scale.dtype != torch.float32 or scale.numel() != 1):
        raise ValueError(f"{what}: scale must be a one-element float32 tensor")
    for name, t in (("residual", residual), ("weight", weight), ("scale", scale),
                    ("x_weight", x_weight)):  # fmt: skip
        if t is not None and t.device != x.device:
            raise ValueError(f"{what}: {name} is on {t.device}, x on {x.device}")
    if x.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"{what}: irfuse kernels run on CUDA tensors (CPU tensors need TRITON_INTERPRET=1)"
        )


def _host_value(name: str, value: torch.Tensor) -> float:
    """A float `torch.compile(dynamic=True)` made a graph input: a one-element CPU tensor
    (read without a device sync)."""
    if value.numel() != 1 or not value.is_floating_point():
        raise ValueError(f"kernel_norm: {name} must be one float, got {value.shape}")
    return value.item()


def _check_weight(
    what: str, name: str, spec: KernelSpec, weight: torch.Tensor | None, x: torch.Tensor
) -> None:
    if weight is None or weight.shape != x.shape[-1:]:
        raise ValueError(f"{what}: {name} must have shape [{x.shape[-1]}]")
    fp32_ok = spec.weight_mode == "gemma" and weight.dtype == torch.float32
    if weight.dtype != x.dtype and not fp32_ok:
        raise TypeError(f"{what}: {name} dtype {weight.dtype} != input dtype {x.dtype}")


def _rows(t: torch.Tensor, n_cols: int) -> torch.Tensor:
    """`t` as [rows, n_cols] with unit column stride (copies only when it must)."""
    t2 = t.reshape(-1, n_cols)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


@runtime_op("kernel_norm")
def kernel_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    scale: torch.Tensor | None,
    eps: float,
    kernel: str,
    eps_input: torch.Tensor | None = None,
    x_weight: torch.Tensor | None = None,
    x_eps: float = 0.0,
    x_eps_input: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the generated (add +) (rms_norm +) quant kernel `kernel`. `scale` is the static
    scale, the per-token upper bound or the nvfp4 global scale. `eps_input`, a one-element
    tensor, replaces `eps`: a float `torch.compile(dynamic=True)` made a graph input (a
    0-d CPU tensor, read without a device sync). `x_weight`, `x_eps` (or `x_eps_input`):
    the weight and eps of x's own norm before the add (a `normed_x` kernel). Returns (out,
    residual_out, scales, value); the last three are empty when the kernel has none."""
    spec = decode(kernel)
    _check(spec, x, residual, weight, scale, x_weight)
    eps = _host_value("eps", eps_input) if eps_input is not None else eps
    x_eps = _host_value("x_eps", x_eps_input) if x_eps_input is not None else x_eps
    out, residual_out, scales, value = allocate_outputs(spec, x, residual is not None)
    if x.numel() == 0:  # the reference's scale of an empty tensor (row): of an amax of 0
        if spec.per_tensor or parse_scheme(spec.quant)[0] == "per_token":
            scales.fill_(0.0 if spec.in_dtype else FP8_MIN_SCALE)
        return out, residual_out, scales, value
    outputs = (out, residual_out, scales, value)
    if spec.per_tensor:
        for launched, launch in per_tensor_launches(
            spec, x, residual, weight, outputs, eps, x_weight, x_eps
        ):
            run_launch(launched, launch)
    else:
        run_launch(*single_launch(spec, x, residual, weight, scale, outputs, eps, x_weight, x_eps))
    return outputs


def per_tensor_launches(
    spec: KernelSpec,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    eps: float,
    x_weight: torch.Tensor | None = None,
    x_eps: float = 0.0,
) -> list[tuple[KernelSpec, NormLaunch]]:
    """A per-tensor quant's two kernels (the grid-wide amax, then the quant) and their
    launches into `outputs` (allocate_outputs'); one kernel for a single row. Phase 1's
    results for phase 2 (per_tensor_stats) are allocated here."""
    if x.numel() == x.shape[-1]:  # one launch instead of a memset and two
        one_row = _one_row_per_tensor(spec)
        return [single_launch(one_row, x, residual, weight, None, outputs, eps, x_weight, x_eps)]
    out, residual_out, scales, value = outputs
    x2, residual2, weight, residual_out2, out2 = _row_views(x, residual, weight, out, residual_out)
    n_cols = x2.shape[1]
    stats = per_tensor_stats(x2)
    phase1, phase2 = per_tensor_phases(spec)
    normed = None
    if phase1.keep_value:  # the kept value, or what phase 2 quantizes
        normed = (
            value.view(-1, n_cols)
            if spec.keep_value
            else x2.new_empty(x2.shape, dtype=_value_dtype(spec, x))
        )
    first = norm_launch(phase1, x2, residual2, weight, None, out2, residual_out2, stats, normed,
                        eps, x_weight=_contiguous(x_weight), x_eps=x_eps)  # fmt: skip
    if phase2.producer == "quant":  # what phase 1 stored: a post-norm's sum, or a value
        read = residual_out2 if spec.producer == "rms_norm_add" else normed
        read = x2 if read is None else read
        second = norm_launch(phase2, read, None, None, stats, out2, None, scales, None, eps)
    else:  # the norm again, from what it read (x, or the rounded sum) and phase 1's rstd
        read = x2 if residual_out2 is None else residual_out2
        second = norm_launch(phase2, read, None, weight, stats, out2, None, scales, None, eps)
    return [(phase1, first), (phase2, second)]


def _row_views(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    out: torch.Tensor,
    residual_out: torch.Tensor,
) -> tuple[
    torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor
]:
    """(x2, residual2, weight, residual_out2, out2): the tensors as the kernels index them,
    rows of unit column stride (the inputs copied only where they must be)."""
    n_cols = x.shape[-1]
    x2 = _rows(x, n_cols)
    weight = _contiguous(weight)
    residual2 = _rows(residual, n_cols) if residual is not None else None
    residual_out2 = residual_out.view(-1, n_cols) if residual is not None else None
    return x2, residual2, weight, residual_out2, out.view(-1, out.shape[-1])


def _contiguous(weight: torch.Tensor | None) -> torch.Tensor | None:
    return weight.contiguous() if weight is not None else None  # the kernel reads w[cols]


def single_launch(
    spec: KernelSpec,
    x: torch.Tensor,
    residual: torch.Tensor | None,
    weight: torch.Tensor | None,
    scale: torch.Tensor | None,
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    eps: float,
    x_weight: torch.Tensor | None = None,
    x_eps: float = 0.0,
    config: tuple[int, int] | None = None,
) -> tuple[KernelSpec, NormLaunch]:
    """The kernel that computes `spec` (any but a per-tensor quant) in one launch into
    `outputs` (allocate_outputs'), and that launch (at `config`, for sweeps: norm_launch;
    a `config` launches the row in one BLOCK or in tiles, never in pieces, a row a
    program)."""
    out, residual_out, scales, value = outputs
    x2, residual2, weight, residual_out2, out2 = _row_views(x, residual, weight, out, residual_out)
    if spec.quant == "nvfp4":  # the kernel writes the swizzled block scales byte by byte
        scales2 = scales.view(torch.uint8)
    elif scales.dim() > 1 or spec.quant.startswith("per_group"):  # [ng] of a 1-D x: one row
        scales2 = scales.view(-1, scales.shape[-1])
    else:
        scales2 = scales
    value2 = value.view(-1, x2.shape[1]) if spec.keep_value else None
    if runs_two_pass(spec, *x2.shape):
        spec = _two_pass(spec)
    if config is None and (pieces := pieces_of(spec, x2.shape[1], x2.dtype)):
        spec = _in_pieces(spec, pieces)
    if config is None and (rows := rows_per_program_of(spec, *x2.shape, x2.dtype)):
        spec = _in_rows(spec, rows)
    if full_block_of(spec, x2.shape[1], config):
        spec = _full_block(spec)
    launch = norm_launch(
        spec, x2, residual2, weight, scale, out2, residual_out2, scales2, value2, eps,
        config, _contiguous(x_weight), x_eps,
    )  # fmt: skip
    return spec, launch


def per_tensor_stats(x2: torch.Tensor) -> torch.Tensor:
    """Phase 1's float32 results for phase 2 (quant.AMAX): amax slots, then a row's rstd
    at AMAX_ROW_SLOTS + row. Only the atomic slots (more than AMAX_ROW_SLOTS rows) start
    at zero; a slot per row is stored, not accumulated."""
    n_rows = x2.shape[0]
    stats = x2.new_empty(AMAX_ROW_SLOTS + n_rows, dtype=torch.float32)
    if n_rows > AMAX_ROW_SLOTS:
        stats[:AMAX_SLOTS].zero_()
    return stats


def _value_dtype(spec: KernelSpec, x: torch.Tensor) -> torch.dtype:
    return torch.float32 if spec.norm_out == "fp32" else x.dtype


NUM_STAGES = 3  # Triton's default on CUDA, which run_launch leaves (Inductor is told it)


def run_launch(spec: KernelSpec, launch: NormLaunch) -> None:
    """Launch `spec`'s kernel as `launch` says (every kernel_norm launch goes through here)."""
    compiled_kernel(spec)[launch.grid](*launch.args, num_warps=launch.num_warps)


@dataclasses.dataclass(frozen=True)
class NormLaunch:
    """One launch of a norm / quant kernel: its grid, warps and arguments in the order of
    the kernel's parameters (kernel_params: KERNEL_PARAMS, then n_rows in a kernel of
    several rows a program)."""

    grid: tuple[int, int]
    num_warps: int
    args: tuple


def stored_params(spec: KernelSpec) -> tuple[str, ...]:
    """The buffers `spec`'s kernel writes, of out_ptr, residual_out_ptr, scale_out_ptr and
    value_ptr (phase 1 of a per-tensor quant, "amax", writes its results for phase 2 to
    scale_out_ptr, and no out)."""
    stored = {
        "out_ptr": spec.quant != "amax",
        "residual_out_ptr": spec.producer in ("fused_add_rms_norm", "rms_norm_add"),
        "scale_out_ptr": spec.quant.split()[0] not in ("none", "static"),
        "value_ptr": spec.keep_value,
    }
    return tuple(name for name, writes in stored.items() if writes)


# The parameters of every generated norm / quant kernel, in order (kernels/norm.py).
KERNEL_PARAMS = (
    "x_ptr", "residual_ptr", "weight_ptr", "x_weight_ptr", "scale_ptr", "out_ptr",
    "residual_out_ptr", "scale_out_ptr", "value_ptr", "n_cols", "x_row_stride",
    "residual_row_stride", "out_row_stride", "residual_out_row_stride", "scale_out_row_stride",
    "scale_out_col_stride", "value_row_stride", "eps", "x_eps", "BLOCK", "HAS_SCALE",
    "INTERPRET",
)  # fmt: skip
ROWS_PARAMS = ("n_rows",)  # after them, in a kernel of several rows a program


def kernel_params(spec: KernelSpec) -> tuple[str, ...]:
    """The parameters of `spec`'s kernel, in order."""
    return KERNEL_PARAMS + ROWS_PARAMS if spec.rows_per_program else KERNEL_PARAMS


def norm_launch(
    spec: KernelSpec,
    x2: torch.Tensor,
    residual2: torch.Tensor | None,
    weight: torch.Tensor | None,
    scale: torch.Tensor | None,
    out2: torch.Tensor,
    residual_out2: torch.Tensor | None,
    scales2: torch.Tensor,
    value2: torch.Tensor | None,
    eps: float,
    config: tuple[int, int] | None = None,
    x_weight: torch.Tensor | None = None,
    x_eps: float = 0.0,
) -> NormLaunch:
    """One launch of `spec`'s kernel over the rows of `x2` (and their tiles); absent
    tensors are passed as `x2` (their pointers are never read: the kernel source has no
    use for them). `config` (BLOCK, num_warps) overrides launch_config (for sweeps). Also
    what Inductor's wrapper is given to launch it (user_kernels.py), from fake tensors."""
    n_rows, n_cols = x2.shape
    block, num_warps = config or spec_launch_config(spec, n_rows, n_cols)
    if spec.two_pass and not config:
        num_warps = TWO_PASS_WARPS
    two_d = scales2.dim() > 1
    args = (
        x2, x2 if residual2 is None else residual2, x2 if weight is None else weight,
        x2 if x_weight is None else x_weight, x2 if scale is None else scale, out2,
        out2 if residual_out2 is None else residual_out2, scales2,
        out2 if value2 is None else value2, n_cols, x2.stride(0),
        0 if residual2 is None else residual2.stride(0), out2.stride(0),
        0 if residual_out2 is None else residual_out2.stride(0),
        scales2.stride(0) if two_d else 1, scales2.stride(1) if two_d else 0,
        0 if value2 is None else value2.stride(0), eps, x_eps, block, scale is not None,
        INTERPRET,
    )  # fmt: skip
    tiles = 1 if spec.pieces else cdiv(n_cols, block)  # a kernel in pieces: the whole row
    if not spec.rows_per_program:
        return NormLaunch((n_rows, tiles), num_warps, args)
    programs = cdiv(n_rows, spec.rows_per_program)  # the last runs what is left
    return NormLaunch((programs, tiles), num_warps, (*args, n_rows))


@torch.library.register_fake("irfuse::kernel_norm")
def _(x, residual, weight, scale, eps, kernel, eps_input=None, x_weight=None, x_eps=0.0,
      x_eps_input=None):  # fmt: skip
    return allocate_outputs(decode(kernel), x, residual is not None)
