"""When kernel_attention's prefill runs the Gluon kernel (irfuse/kernels/attention_gluon.py),
and its launch.

It runs on sm_90 (H100, H200) for head dims 128 and (not causal) 64, q, k and v alike,
in bf16 / fp16 without an explicit mask, from GLUON_MIN_ROWS query rows, ending with no
quant or the static fp8 one, where TMA can view q, k and v (refusal says why not); the
Triton kernels run the rest, and everything in the interpreter. Set
IRFUSE_GLUON_PREFILL=0 to run the Triton prefill everywhere.
"""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import torch
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from irfuse.kernels import attention_gluon as pieces
from irfuse.kernels.attention import MAX_GRID_X
from irfuse.lowering.runtime import INTERPRET, cdiv, sm_count, tma_ok, tma_strides_ok

ENABLED = os.environ.get("IRFUSE_GLUON_PREFILL", "1") != "0"

BLOCK_M = 64  # query rows a consumer warp group
PRODUCER_REGS = 24
# Every config's consumers take about all of an SM's 64K registers: one program an SM.
PROGRAMS_PER_SM = 1
# (head dim, causal): whether a program an SM strides over the work items (persistent),
# else a program an item
PERSISTENT = {(128, False): False, (128, True): False, (64, False): False, (64, True): False}


class GluonConfig(NamedTuple):
    consumers: int  # warp groups of BLOCK_M query rows
    registers: int  # each consumer's (setmaxnreg)
    stages: int  # of the K / V rings
    block_n: int  # keys a tile


# By head dim, as FA3 runs them on Hopper: at 128 two consumers of 240 registers (2 x 64
# KB of K / V beside q's and the output's 64 KB), at 64 three of 160.
CONFIGS = {128: GluonConfig(2, 240, 2, 128), 64: GluonConfig(3, 160, 2, 128)}
# (head dim, causal): query rows from which it runs (H100, bench/RESULTS.md, 512 to 4096
# rows, thirty-fifth session). Head dim 128: it beat the Triton kernel at every length
# timed (1.05x-1.15x), the shortest 512; below, the Triton kernel's 64-row tiles (twice
# the programs). Head dim 64 without a causal mask: 1.10x-1.13x from 2048 rows, even
# below. Causal at head dim 64 its 192-row programs lost to the Triton kernel from 0.57x
# at 512 rows to 0.99x at 2048 (1.02x at 4096): the Triton kernel runs it.
GLUON_MIN_ROWS = {(128, False): 512, (128, True): 512, (64, False): 2048}
EPILOGUES = tuple(pieces.EPILOGUES)
# Gluon's TMA copies, as this Triton names them (3.9 renamed 3.6's)
TMA_COPIES = (
    {"tma_load": "async_load", "tma_store": "async_store"}
    if hasattr(tma, "async_load")
    else {"tma_load": "async_copy_global_to_shared", "tma_store": "async_copy_shared_to_global"}
)
_GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16,
              torch.float8_e4m3fn: gl.float8e4nv}  # fmt: skip


@functools.cache
def _is_sm90(device_index: int) -> bool:
    # (a graph's fake CUDA tensors may be compiled on a machine without a GPU)
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device_index) == (9, 0)


def on_sm90(device: torch.device) -> bool:
    """Whether `device` is an sm_90 GPU (H100, H200) the kernel runs on (not the
    interpreter)."""
    return not INTERPRET and device.type == "cuda" and _is_sm90(device.index or 0)


def refusal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    mask_kind: int,
    epilogue: str,
    addresses: bool = True,
) -> str | None:
    """Why the Gluon prefill does not run q, k, v (4-D [B, H, S, D], checked by
    kernel_attention), `causal` or not, with a mask of `mask_kind` (0: none) and
    `epilogue`, or None if it does. `addresses`: whether to check the tensors' bases too
    (a graph's fake tensors have none: compiling, their data_ptr raises)."""
    if not ENABLED:
        return "IRFUSE_GLUON_PREFILL=0"
    if not on_sm90(q.device):
        return "not on an sm_90 GPU"
    if mask_kind:
        return "an explicit mask"
    if epilogue not in EPILOGUES:
        return f"the {epilogue} epilogue"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"{q.dtype}"
    if q.shape[-1] != v.shape[-1] or q.shape[-1] not in CONFIGS:
        return f"head dims {q.shape[-1]} / {v.shape[-1]}"
    min_rows = GLUON_MIN_ROWS.get((q.shape[-1], causal))
    if min_rows is None:
        return f"causal at head dim {q.shape[-1]} (the Triton kernel is faster)"
    if q.shape[2] < min_rows or k.shape[2] == 0:
        return f"{q.shape[2]} query rows, {k.shape[2]} keys"
    if work_items(q) > MAX_GRID_X:
        return f"{work_items(q)} query blocks x heads"
    if not (tma_ok if addresses else tma_strides_ok)(q, k, v):  # (the output always is)
        return "strides or bases TMA cannot view"
    return None


@functools.cache
def _shared_layout(block: tuple[int, ...], dtype: torch.dtype) -> gl.NVMMASharedLayout:
    return gl.NVMMASharedLayout.get_default_for(list(block), _GL_DTYPES[dtype])


def _view(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """The TMA view of `t` [B, S, H, D] (last dim contiguous), blocks of `rows` rows."""
    block = (1, rows, 1, t.shape[-1])
    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block),
                            _shared_layout(block, t.dtype))  # fmt: skip


def work_items(q: torch.Tensor) -> int:
    """The kernel's work items over q [B, Hq, Sq, D]: query blocks x heads."""
    b, h, sq, d = q.shape
    return cdiv(sq, CONFIGS[d].consumers * BLOCK_M) * b * h


def launch(
    kernel, q, k, v, out, layout: str, lse, scale, sm_scale: float, causal: int,
    heads_per_sweep: int = 1,
) -> None:  # fmt: skip
    """The Gluon prefill over q [B, Hq, Sq, D], k, v [B, Hkv, Skv, D] (refusal None),
    into `out` ([B, Sq, Hq*D] for bs_hd, the transpose of [B, Sq, Hq, D] for bhsd) and
    `lse` [B, Hq, Sq] (empty: not asked for); `causal`: 0 none, 1 top-left, 2
    bottom-right; its items in sweeps of `heads_per_sweep` heads (irfuse/lowering/
    attention.py's heads_per_sweep), persistent where PERSISTENT says. `kernel`: the one
    with CONFIGS[D]'s consumers."""
    b, h, sq, d = q.shape
    config = CONFIGS[d]
    rows = out.view(b, sq, h, d) if layout == "bs_hd" else out.transpose(1, 2)
    views = (_view(q.transpose(1, 2), BLOCK_M), _view(k.transpose(1, 2), config.block_n),
             _view(v.transpose(1, 2), config.block_n), _view(rows, BLOCK_M))  # fmt: skip
    items = work_items(q)
    programs = min(items, sm_count(q.device)) if PERSISTENT[d, causal != 0] else items
    kernel[(programs,)](
        *views, lse if lse.numel() else out, scale if scale is not None else out, sq,
        k.shape[2], h, h // k.shape[1], heads_per_sweep, items, sm_scale * math.log2(math.e),
        **_constants(config, d, causal, lse.numel() > 0),
    )  # fmt: skip


def _constants(config: GluonConfig, head_dim: int, causal: int, has_lse: bool) -> dict:
    """The kernel's constexpr arguments (num_warps: the default partition's)."""
    return dict(BLOCK_M=BLOCK_M, BLOCK_N=config.block_n, HEAD_DIM=head_dim,
                STAGES=config.stages, CAUSAL=causal, HAS_LSE=has_lse,
                CONSUMER_REGS=config.registers, PRODUCER_REGS=PRODUCER_REGS,
                num_warps=4)  # fmt: skip


def compile_sm90(epilogue: str, head_dim: int, causal: int, config: GluonConfig | None = None):
    """The kernel for `epilogue` compiled for sm_90 on any machine (Gluon has no
    interpreter: the CPU's tests and probes check what it compiles to), bf16 in, lse
    asked for, `config` (default CONFIGS[head_dim]). Its @triton.jit helpers must not be
    interpreted: call it in a process without TRITON_INTERPRET."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from irfuse.lowering.attention import gluon_prefill_kernel

    config = config or CONFIGS[head_dim]
    rows = torch.empty(2, 1024, 4, head_dim, dtype=torch.bfloat16)
    out = rows if epilogue == "none" else torch.empty_like(rows, dtype=torch.float8_e4m3fn)
    views = (("q_desc", rows, BLOCK_M), ("k_desc", rows, config.block_n),
             ("v_desc", rows, config.block_n), ("o_desc", out, BLOCK_M))  # fmt: skip
    sig = {arg: mangle_type(_view(t, block)) for arg, t, block in views}
    sig |= {"lse_ptr": "*fp32", "scale_ptr": "*fp32", "seq_q": "i32", "seq_kv": "i32",
            "n_heads": "i32", "group": "i32", "heads_per_sweep": "i32", "n_items": "i32",
            "qk_scale": "fp32"}  # fmt: skip
    consts = _constants(config, head_dim, causal, True)
    sig |= {arg: "constexpr" for arg in consts}
    kernel = gluon_prefill_kernel(epilogue, config.consumers)
    return triton.compile(GluonASTSource(kernel, sig, consts),
                          target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})  # fmt: skip
