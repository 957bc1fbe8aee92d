"""When kernel_attention's prefill runs the Gluon kernel (irfuse/kernels/attention_gluon.py),
and its launch.

It runs on sm_90 (H100, H200) for head dims 128 and (not causal) 64, q, k and v alike,
in bf16 / fp16 without an explicit mask, by PLANS' query lengths, ending with no
quant or the static fp8 one, where TMA can view q, k and v (choice says why not); the
Triton kernels run the rest, and everything in the interpreter. Set
IRFUSE_GLUON_PREFILL=0 to run the Triton prefill everywhere.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, NamedTuple

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


class GluonConfig(NamedTuple):
    consumers: int  # warp groups of BLOCK_M query rows
    registers: int  # each consumer's (setmaxnreg)
    stages: int  # of the K / V rings
    block_n: int  # keys a tile


class Plan(NamedTuple):
    min_rows: int  # query rows from which it runs
    config: GluonConfig
    persistent: bool  # a program an SM taking the work items in turn, else one an item


# FA3's configs on Hopper: at head dim 128 two consumers of 240 registers (2 x 64 KB of K
# / V beside q's and the output's 64 KB), at 64 three of 160; at head dim 64 two of 240
# won below 2048 rows (bench/RESULTS.md, thirty-sixth session).
TWO_WIDE, THREE_NARROW = GluonConfig(2, 240, 2, 128), GluonConfig(3, 160, 2, 128)
# (head dim, causal): the plans by query length (the last whose min_rows q reaches; none:
# the Triton kernel runs it). bench/RESULTS.md, 512 to 4096 rows, thirty-fifth and
# thirty-sixth sessions:
# - head dim 128 beat the Triton kernel at every length timed, the shortest 512 (below,
#   the Triton kernel's 64-row tiles: twice the programs). Persistent, 1.05x-1.17x a
#   program an item, causal 1.07x-1.18x (H200: 0.93x-1.08x cuDNN);
# - head dim 64 without a causal mask, persistent: 1.10x-1.12x the Triton kernel at 512
#   and 1024 rows with two consumers (H100), 1.15x-1.18x at 2048 with three;
# - causal head dim 64 lost: three consumers 0.61x-0.99x the Triton kernel (512 to 2048
#   rows), two persistent 0.99x (issue 4's B8 H16 S1024), a program an item 0.85x.
PLANS: dict[tuple[int, bool], tuple[Plan, ...]] = {
    (128, False): (Plan(512, TWO_WIDE, True),),
    (128, True): (Plan(512, TWO_WIDE, True),),
    (64, False): (Plan(512, TWO_WIDE, True), Plan(2048, THREE_NARROW, True)),
}


def plan(head_dim: int, causal: bool, rows: int) -> Plan | None:
    """The plan for `rows` query rows at `head_dim`, causal or not; None: the Triton
    kernel runs it."""
    reached = [p for p in PLANS.get((head_dim, causal), ()) if rows >= p.min_rows]
    return reached[-1] if reached else None


def configs() -> set[GluonConfig]:
    """Every config a plan runs."""
    return {p.config for plans in PLANS.values() for p in plans}


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


def choice(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool,
    mask_kind: int,
    epilogue: str,
    addresses: bool = True,
) -> Plan | str:
    """The plan the Gluon prefill runs q, k, v (4-D [B, H, S, D], checked by
    kernel_attention) by, `causal` or not, with a mask of `mask_kind` (0: none) and
    `epilogue`, or why it does not run them. `addresses`: whether to check the tensors'
    bases too (a graph's fake tensors have none: compiling, their data_ptr raises)."""
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
    d = q.shape[-1]
    if d != v.shape[-1] or not (PLANS.get((d, False)) or PLANS.get((d, True))):
        return f"head dims {d} / {v.shape[-1]}"
    if not PLANS.get((d, causal)):
        return f"{'causal' if causal else 'no mask'} at head dim {d} (the Triton kernel is faster)"
    chosen = plan(d, causal, q.shape[2])
    if chosen is None or k.shape[2] == 0:
        return f"{q.shape[2]} query rows, {k.shape[2]} keys"
    items = work_items(q, chosen.config)
    if items > MAX_GRID_X:
        return f"{items} query blocks x heads"
    if not (tma_ok if addresses else tma_strides_ok)(q, k, v):  # (the output always is)
        return "strides or bases TMA cannot view"
    return chosen


def refusal(*args: Any, **kwargs: Any) -> str | None:
    """Why the Gluon prefill does not run choice's arguments, or None if it does."""
    chosen = choice(*args, **kwargs)
    return chosen if isinstance(chosen, str) else None


@functools.cache
def _shared_layout(block: tuple[int, ...], dtype: torch.dtype) -> gl.NVMMASharedLayout:
    return gl.NVMMASharedLayout.get_default_for(list(block), _GL_DTYPES[dtype])


def _view(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """The TMA view of `t` [B, S, H, D] (last dim contiguous), blocks of `rows` rows."""
    block = (1, rows, 1, t.shape[-1])
    return TensorDescriptor(t, list(t.shape), list(t.stride()), list(block),
                            _shared_layout(block, t.dtype))  # fmt: skip


def work_items(q: torch.Tensor, config: GluonConfig) -> int:
    """The kernel's work items over q [B, Hq, Sq, D] with `config`: query blocks x heads."""
    b, h, sq, _ = q.shape
    return cdiv(sq, config.consumers * BLOCK_M) * b * h


def launch(
    kernel, q, k, v, out, layout: str, lse, scale, sm_scale: float, causal: int,
    chosen: Plan, heads_per_sweep: int = 1,
) -> None:  # fmt: skip
    """The Gluon prefill over q [B, Hq, Sq, D], k, v [B, Hkv, Skv, D] (choice a plan),
    into `out` ([B, Sq, Hq*D] for bs_hd, the transpose of [B, Sq, Hq, D] for bhsd) and
    `lse` [B, Hq, Sq] (empty: not asked for); `causal`: 0 none, 1 top-left, 2
    bottom-right; by the `chosen` plan (`kernel`: the one with its consumers), its items
    in sweeps of `heads_per_sweep` heads (irfuse/lowering/attention.py's
    heads_per_sweep)."""
    b, h, sq, d = q.shape
    config = chosen.config
    rows = out.view(b, sq, h, d) if layout == "bs_hd" else out.transpose(1, 2)
    views = (_view(q.transpose(1, 2), BLOCK_M), _view(k.transpose(1, 2), config.block_n),
             _view(v.transpose(1, 2), config.block_n), _view(rows, BLOCK_M))  # fmt: skip
    items = work_items(q, config)
    programs = min(items, sm_count(q.device)) if chosen.persistent else items
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
    asked for, `config` (default: the plan's for the longest non-causal rows). Its
    @triton.jit helpers must not be interpreted: call it in a process without
    TRITON_INTERPRET."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    from irfuse.lowering.attention import gluon_prefill_kernel

    config = config or PLANS[head_dim, False][-1].config
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
