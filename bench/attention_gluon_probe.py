"""Probe: a prefill written in Gluon, with its tensor-core products scheduled by hand, in
the forms irfuse lowers, to close the gap to cuDNN that Triton 3.6's schedule leaves
(non-causal head dim 128: 0.865x, bench/RESULTS.md).

Triton 3.6 waits on every QK product with `wgmma.wait_group 0`, which also waits on the
P@V product still in flight, so the softmax never runs beside a product of its own warp
group. Gluon (Triton 3.6's lower-level language: explicit layouts, shared memory,
mbarriers, async wgmma, warp specialization) lets the kernel order them as FA3 does on
Hopper: each key tile's QK is issued together with the previous tile's P@V, the kernel
waits for the QK alone (`warpgroup_mma_wait(1)`), and the softmax runs while P@V is on
the tensor cores. Two consumer warp groups take 64 query rows each; a producer warp
streams K and V through TMA rings, whose slots the consumers free by mbarrier arrivals.
`ping-pong` also makes the consumers issue their products in turns.

The thirty-fourth session measured the first form (2-D views of contiguous [B, H, S, D],
Sq = Skv a multiple of 128, no GQA / lse / epilogue; commit 2db6a1e, with a variant that
freed the slots by a CTA barrier instead: slower than Triton). The kernel now takes what
irfuse's prefill takes but explicit masks and the epilogues beside static fp8: q / k / v
as 4-D TMA views [B, S, H, D] of any strides (q as its projection leaves it), the output
written into [B, S, H*D], GQA, ragged lengths (TMA reads zeros past the end, the last
tile masks those keys), causal top-left and bottom-right (rows that see no key give 0
and lse -inf), lse, and the static fp8 epilogue. Gluon does not run in the interpreter:
`--compile-only` compiles the variants for sm_90 on a machine without a GPU and counts
their SASS instructions; `--check` compares one with irfuse's reference ops.

    python bench/attention_gluon_probe.py --check NAME   # under timeout: a hang is a bug
    python bench/attention_gluon_probe.py [--compile-only] [--variants NAME...]
        [--shapes I...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path
from unittest import mock

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

# Triton 3.9 (the CPU's) renamed Gluon's TMA copies; 3.6 (the GPU's) has the old names only
tma_load = getattr(tma, "async_load", tma.async_copy_global_to_shared)
tma_store = getattr(tma, "async_store", tma.async_copy_shared_to_global)

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    PREFILL_SHAPES,
    append_results,
    compare,
    cudnn_attention,
    prefill_flops,
    prefill_inputs,
)

BLOCK_M = 64  # query rows a consumer warp group; a program has two
BLOCK_N = 128
STAGES = 2
WS_CONSUMER_REGS = gl.constexpr(240)  # the second consumer warp group's registers (setmaxnreg)
EPILOGUES = ("none", "static")
GL_DTYPES = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16,
             torch.float8_e4m3fn: gl.float8e4nv}  # fmt: skip
CAUSAL = {"none": 0, "top_left": 1, "bottom_right": 2}


@gluon.jit
def load_kv(desc, ring, bars, slot, batch, row, kv_head, pred):
    """TMA of one key (or value) tile into its ring slot, completing on the slot's barrier
    (rows past the sequence read as zeros)."""
    mbarrier.expect(bars.index(slot), desc.block_type.nbytes, pred=pred)
    tma_load(desc, [batch, row, kv_head, 0], bars.index(slot), ring.index(slot), pred=pred)


@gluon.jit
def key_tiles(seq_q, seq_kv, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """The program's first query row, its number of key tiles (at least one) and how far
    the keys a query sees run past its row (Skv - Sq bottom-right, else 0); causal
    programs run the longest first."""
    block = gl.program_id(0)
    offset = seq_kv - seq_q if CAUSAL == 2 else 0
    if CAUSAL != 0:
        block = gl.num_programs(0) - 1 - block
        seen = gl.minimum(block * ROWS + ROWS + offset, seq_kv)
        return block * ROWS, gl.maximum(gl.cdiv(seen, BLOCK_N), 1), offset
    return block * ROWS, gl.cdiv(seq_kv, BLOCK_N), offset


@gluon.jit
def mask_tile(s, j, first_masked, q_start, offset, seq_kv, BLOCK_N: gl.constexpr,
              CAUSAL: gl.constexpr):  # fmt: skip
    """Key tile j's scores, -inf where the key is past the sequence or (causal) after what
    its query sees; tiles before `first_masked` every row sees in full, untouched."""
    if j >= first_masked:
        layout: gl.constexpr = s.type.layout
        rows = q_start + gl.arange(0, s.shape[0], layout=gl.SliceLayout(1, layout))
        cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
        keep = cols[None, :] < seq_kv
        if CAUSAL != 0:
            keep = keep & (cols[None, :] <= rows[:, None] + offset)
        s = gl.where(keep, s, -float("inf"))
    return s


@gluon.jit
def ws_loader(k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, k_free, v_free, batch,
              kv_head, n_tiles, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
    """The producer warp: each K and V tile into its slot once both consumers freed it."""
    for j in range(n_tiles):
        slot = j % STAGES
        freed = ((j // STAGES) & 1) ^ 1  # the phase that frees tile j - STAGES
        mbarrier.wait(k_free.index(slot), freed, pred=j >= STAGES)
        load_kv(k_desc, k_ring, k_ready, slot, batch, j * BLOCK_N, kv_head, True)
        mbarrier.wait(v_free.index(slot), freed, pred=j >= STAGES)
        load_kv(v_desc, v_ring, v_ready, slot, batch, j * BLOCK_N, kv_head, True)


@gluon.jit
def take_turn(turn, round, PINGPONG: gl.constexpr):
    """Ping-pong: wait until the other warp group has issued its products of this round."""
    if PINGPONG:
        mbarrier.wait(turn, round & 1)


@gluon.jit
def pass_turn(turn, PINGPONG: gl.constexpr):
    if PINGPONG:
        mbarrier.arrive(turn)


@gluon.jit
def softmax_step(s, m_i, qk_scale):
    """The new row max (base 2), the factor that rescales the old state to it, and the
    tile's probabilities; rows that have seen no key yet (max -inf) give 0s, not NaNs."""
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    m_use = gl.where(m_new == -float("inf"), 0.0, m_new)
    return m_new, gl.exp2(m_i - m_use), gl.exp2(s * qk_scale - m_use[:, None])


@gluon.jit
def ws_consumer(q_desc, o_desc, q_smem, o_smem, q_bar, k_ring, v_ring, k_ready, v_ready,
                k_free, v_free, my_turn, other_turn, lse_ptr, scale_ptr, batch, head, q_start,
                seq_q, seq_kv, offset, n_tiles, qk_scale, BLOCK_M: gl.constexpr,
                BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr,
                CAUSAL: gl.constexpr, PINGPONG: gl.constexpr, HAS_LSE: gl.constexpr,
                EPILOGUE: gl.constexpr):  # fmt: skip
    """One warp group's BLOCK_M query rows. Each key tile's QK is issued with the previous
    tile's P@V, the QK alone waited for, and the softmax runs beside P@V; slots are freed
    by mbarrier arrivals. With PINGPONG the two warp groups issue their products in turns
    (FA3's warp scheduler barrier)."""
    dtype: gl.constexpr = q_desc.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    # tiles before this one every row of the warp group sees in full
    if CAUSAL != 0:
        first_masked = gl.minimum(gl.maximum(q_start + offset + 1, 0) // BLOCK_N,
                                  seq_kv // BLOCK_N)  # fmt: skip
    else:
        first_masked = seq_kv // BLOCK_N

    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma_load(q_desc, [batch, q_start, head, 0], q_bar, q_smem)
    q_tile = q_smem.reshape([BLOCK_M, HEAD_DIM])
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_ready.index(0), 0)
    take_turn(my_turn, 0, PINGPONG)
    s = warpgroup_mma(q_tile, k_ring.index(0).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)),
                      zero_s, use_acc=False, is_async=True)  # fmt: skip
    pass_turn(other_turn, PINGPONG)
    s = warpgroup_mma_wait(0, deps=(s,))
    mbarrier.arrive(k_free.index(0))
    s = mask_tile(s, 0, first_masked, q_start, offset, seq_kv, BLOCK_N, CAUSAL)
    m_i, _, p = softmax_step(s, gl.full([BLOCK_M], -float("inf"), gl.float32,
                                        gl.SliceLayout(1, s_layout)), qk_scale)  # fmt: skip
    l_i = gl.sum(p, 1)
    p_op = gl.convert_layout(p.to(dtype), p_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

    for j in range(1, n_tiles):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
        mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
        take_turn(my_turn, j, PINGPONG)
        s = warpgroup_mma(q_tile, k_ring.index(slot).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)),
                          zero_s, use_acc=False, is_async=True)  # fmt: skip
        acc = warpgroup_mma(p_op, v_ring.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc,
                            is_async=True)  # fmt: skip
        pass_turn(other_turn, PINGPONG)
        s = warpgroup_mma_wait(1, deps=(s,))
        mbarrier.arrive(k_free.index(slot))
        s = mask_tile(s, j, first_masked, q_start, offset, seq_kv, BLOCK_N, CAUSAL)
        m_i, alpha, p = softmax_step(s, m_i, qk_scale)
        l_i = l_i * alpha + gl.sum(p, 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(v_free.index(prev))
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]

    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
    take_turn(my_turn, n_tiles, PINGPONG)
    acc = warpgroup_mma(p_op, v_ring.index(last).reshape([BLOCK_N, HEAD_DIM]), acc,
                        is_async=True)  # fmt: skip
    pass_turn(other_turn, PINGPONG)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    # rows that saw no key (bottom-right, Sq > Skv) give 0 and lse -inf
    seen = l_i > 0
    if HAS_LSE:
        rows = q_start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
        lse = gl.where(seen, (m_i + gl.log2(l_i)) * 0.6931471805599453, -float("inf"))
        # lse [B, Hq, Sq]: program_id(1) is batch * Hq + head
        gl.store(lse_ptr + gl.program_id(1).to(gl.int64) * seq_q + rows, lse,
                 mask=rows < seq_q)  # fmt: skip
    out = acc / gl.convert_layout(gl.where(seen, l_i, 1.0), o_rows)[:, None]
    if EPILOGUE == 1:  # static fp8 of the output as the model dtype rounds it
        inv = 1.0 / gl.load(scale_ptr)
        out = gl.minimum(gl.maximum(out.to(dtype).to(gl.float32) * inv, -448.0), 448.0)
    o_smem.reshape([BLOCK_M, HEAD_DIM]).store(out.to(o_desc.dtype))
    fence_async_shared()
    tma_store(o_desc, [batch, q_start, head, 0], o_smem)
    tma.store_wait(0)


@gluon.jit
def gluon_prefill_ws(
    q_desc, k_desc, v_desc, o_desc, lse_ptr, scale_ptr, seq_q, seq_kv, n_heads, group,
    qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
    STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr,
    HAS_LSE: gl.constexpr, EPILOGUE: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    """FA3's layout of warps: two consumer warp groups (the default partition and a
    worker, BLOCK_M query rows each) and one producer warp issuing the TMA loads. q, k,
    v and the output are 4-D TMA views [B, S, H, D] (any strides but the last), so q as
    its projection leaves it and the [B, S, H*D] output the next GEMM reads; GQA maps
    query head h to kv head h // group."""
    batch = gl.program_id(1) // n_heads
    head = gl.program_id(1) % n_heads
    q_start, n_tiles, offset = key_tiles(seq_q, seq_kv, 2 * BLOCK_M, BLOCK_N, CAUSAL)
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [2] + q_desc.block_type.shape,
                                       q_desc.layout)  # fmt: skip
    o_smem = gl.allocate_shared_memory(o_desc.dtype, [2] + o_desc.block_type.shape,
                                       o_desc.layout)  # fmt: skip
    k_ring = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape,
                                       k_desc.layout)  # fmt: skip
    v_ring = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape,
                                       v_desc.layout)  # fmt: skip
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
        mbarrier.init(turns.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=2)  # one arrival from each consumer
        mbarrier.init(v_free.index(i), count=2)
    pass_turn(turns.index(0), PINGPONG)  # the first warp group issues first
    gl.warp_specialize(
        [
            (ws_consumer, (q_desc, o_desc, q_smem.index(0), o_smem.index(0), q_bars.index(0),
                           k_ring, v_ring, k_ready, v_ready, k_free, v_free, turns.index(0),
                           turns.index(1), lse_ptr, scale_ptr, batch, head, q_start, seq_q,
                           seq_kv, offset, n_tiles, qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM,
                           STAGES, CAUSAL, PINGPONG, HAS_LSE, EPILOGUE)),
            (ws_consumer, (q_desc, o_desc, q_smem.index(1), o_smem.index(1), q_bars.index(1),
                           k_ring, v_ring, k_ready, v_ready, k_free, v_free, turns.index(1),
                           turns.index(0), lse_ptr, scale_ptr, batch, head,
                           q_start + BLOCK_M, seq_q, seq_kv, offset, n_tiles, qk_scale,
                           BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PINGPONG, HAS_LSE,
                           EPILOGUE)),
            (ws_loader, (k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, k_free, v_free,
                         batch, head // group, n_tiles, BLOCK_N, STAGES)),
        ],
        [4, 1],
        [WS_CONSUMER_REGS, 24],
    )  # fmt: skip


VARIANTS = {"gluon-ws": False, "gluon-ws ping-pong": True}  # name: PINGPONG


def tma_view(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """The 4-D TMA view of `t` [B, S, H, D] (last dim contiguous), `rows` a block."""
    block = [1, rows, 1, t.shape[-1]]
    layout = gl.NVMMASharedLayout.get_default_for(block, GL_DTYPES[t.dtype])
    return TensorDescriptor(t, list(t.shape), list(t.stride()), block, layout)


def launch(name: str, causal: str, q, k, v, epilogue: str = "none", scale=None,
           return_lse: bool = False):  # fmt: skip
    """Variant `name` over q / k / v [B, H, S, D] (any strides but the last), causal
    "none" / "top_left" / "bottom_right"; returns the output [B, Sq, Hq*D] (bf16, or fp8
    with the static epilogue) and lse [B, Hq, Sq] when asked."""
    b, hq, sq, d = q.shape
    hkv, skv = k.shape[1], k.shape[2]
    fp8 = epilogue == "static"
    out = q.new_empty(b, sq, hq * d, dtype=torch.float8_e4m3fn if fp8 else q.dtype)
    lse = q.new_empty(b, hq, sq, dtype=torch.float32)
    views = ((q.transpose(1, 2), BLOCK_M), (k.transpose(1, 2), BLOCK_N),
             (v.transpose(1, 2), BLOCK_N), (out.view(b, sq, hq, d), BLOCK_M))  # fmt: skip
    descs = [tma_view(t, rows) for t, rows in views]
    gluon_prefill_ws[(triton.cdiv(sq, 2 * BLOCK_M), b * hq)](
        *descs, lse, scale if fp8 else lse, sq, skv, hq, hq // hkv,
        d**-0.5 * math.log2(math.e), BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, HEAD_DIM=d,
        STAGES=STAGES, CAUSAL=CAUSAL[causal], PINGPONG=VARIANTS[name], HAS_LSE=return_lse,
        EPILOGUE=EPILOGUES.index(epilogue), num_warps=4,
    )  # fmt: skip
    return (out, lse) if return_lse else out


def compile_only() -> None:
    """Each variant compiled for sm_90 (bottom-right causal, lse and the static epilogue:
    every branch), with its SASS instruction mix."""
    from sass import compile_sm90, mix
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    for name, pingpong in VARIANTS.items():
        for d in (64, 128):
            t = torch.empty(2, 1024, 4, d, dtype=torch.bfloat16)
            out = torch.empty(2, 1024, 4, d, dtype=torch.float8_e4m3fn)
            sig = {arg: mangle_type(tma_view(x, rows)) for arg, x, rows in
                   (("q_desc", t, BLOCK_M), ("k_desc", t, BLOCK_N), ("v_desc", t, BLOCK_N),
                    ("o_desc", out, BLOCK_M))}  # fmt: skip
            sig |= {"lse_ptr": "*fp32", "scale_ptr": "*fp32", "seq_q": "i32", "seq_kv": "i32",
                    "n_heads": "i32", "group": "i32", "qk_scale": "fp32"}  # fmt: skip
            consts = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, HEAD_DIM=d, STAGES=STAGES,
                          CAUSAL=2, PINGPONG=pingpong, HAS_LSE=True, EPILOGUE=1,
                          num_warps=4)  # fmt: skip
            sig |= {arg: "constexpr" for arg in consts}
            compiled = compile_sm90(GluonASTSource(gluon_prefill_ws, sig, consts), num_warps=4)
            print(f"{name} D{d}: {mix(compiled)}")


def bench_shape(b: int, h: int, s: int, d: int, causal: bool, rounds: int) -> list[str]:
    from irfuse.lowering import attention as lowering
    from irfuse.lowering import attention_gluon

    q, k, v = prefill_inputs(b, h, s, d)
    mode = "top_left" if causal else "none"

    def generated(q, k, v):  # [B, S, H*D], as the Gluon variants write it; the Triton kernel
        with mock.patch.object(attention_gluon, "ENABLED", False):
            return lowering.kernel_attention(q, k, v, None, d**-0.5, mode, "bs_hd", False,
                                             "none")[0]  # fmt: skip

    cudnn = cudnn_attention(causal)
    candidates = {"cuDNN": cudnn, "generated": generated}
    candidates |= {name: functools.partial(launch, name, mode) for name in VARIANTS}
    reference = cudnn(q, k, v).transpose(1, 2).reshape(b, s, h * d).float()
    errors = [f"{(candidates[n](q, k, v).float() - reference).abs().max().item():.2g}"
              for n in list(candidates)[1:]]  # fmt: skip
    times = compare(candidates, rounds, (q, k, v))
    flops = prefill_flops(b, h, s, d, causal)
    cells = [f"{times[n]:.1f} ({flops / times[n] / 1e6:.0f})" for n in candidates]
    ratios = [f"{times['cuDNN'] / times[n]:.3f}x" for n in list(candidates)[1:]]
    label = f"B{b} H{h} S{s} D{d}{' causal' if causal else ''}"
    row = [label, *cells, *ratios, " / ".join(errors)]
    print(row, flush=True)
    return row


CHECKS = [  # (D, causal, Hq, Hkv, Sq, Skv, epilogue, lse): the forms irfuse lowers
    (128, "none", 4, 4, 1031, 1031, "none", True),
    (64, "top_left", 8, 2, 257, 257, "static", False),
    (128, "top_left", 8, 1, 1024, 1024, "none", True),
    (128, "bottom_right", 4, 4, 200, 1031, "static", True),
    (64, "bottom_right", 4, 4, 300, 129, "none", True),  # 171 rows see no key
    (128, "none", 2, 2, 7, 4096, "none", False),
    (128, "top_left", 4, 4, 1031, 1031, "static", True),  # fp16 (below)
]


def check(name: str) -> None:
    """One variant against irfuse's reference ops on CHECKS; exits non-zero past bf16's
    tolerance, or past one fp8 step (run it under `timeout`: a wrong mbarrier phase hangs
    the kernel)."""
    from irfuse.lowering.attention import _reference

    failed = False
    for case, (d, causal, hq, hkv, sq, skv, epilogue, lse) in enumerate(CHECKS):
        dtype = torch.float16 if case == len(CHECKS) - 1 else torch.bfloat16
        q = torch.randn(2, sq, hq, d, device="cuda", dtype=dtype).transpose(1, 2)
        k, v = (torch.randn(2, hkv, skv, d, device="cuda", dtype=dtype) for _ in "kv")
        scale = torch.tensor([0.02], device="cuda")
        want, want_lse, _ = _reference(q, k, v, scale, d**-0.5, causal, "bs_hd", lse,
                                       epilogue, None, None)  # fmt: skip
        got = launch(name, causal, q, k, v, epilogue, scale, lse)
        got, got_lse = got if lse else (got, None)
        error = (got.float() - want.float()).abs()
        # fp8: one e4m3 step (1/8 of the value) where rounding the bf16 output differs
        bound = want.float().abs() / 8 + 2**-9 if epilogue == "static" else 2e-2
        ok = bool((error <= bound).all())
        note = f"max |out - reference| {error.max().item():.3g}"
        if lse:
            finite = torch.isfinite(want_lse)
            ok &= bool((torch.isfinite(got_lse) == finite).all())
            lse_error = (got_lse[finite] - want_lse[finite]).abs().max().item()
            ok &= lse_error < 1e-3
            note += f", lse {lse_error:.3g}"
        print(f"{name} {dtype} D{d} {causal} H{hq}/{hkv} S{sq}x{skv} {epilogue}: {note}"
              f"{'' if ok else ' FAILED'}", flush=True)  # fmt: skip
        failed |= not ok
    sys.exit(1 if failed else 0)


def on_gpu(rounds: int, variants: list[str], shapes: list[int]) -> None:
    for name in set(VARIANTS) - set(variants):
        del VARIANTS[name]
    rows = [bench_shape(*PREFILL_SHAPES[i], rounds) for i in shapes]
    names = ["generated", *VARIANTS]
    header = ["shape", "cuDNN us (TFLOP/s)", *names, *[f"{n} x cuDNN" for n in names],
              f"max abs(out - cuDNN's), {' / '.join(names)}"]  # fmt: skip
    append_results(
        "prefill in Gluon, QK waited alone and the softmax beside P@V (probe), bf16, us "
        "(TFLOP/s)", header, rows,
        f"bench/attention_gluon_probe.py: {2 * BLOCK_M} query rows a program (two consumer "
        f"warp groups and a producer warp), {BLOCK_N} keys a tile, {STAGES} K / V stages; "
        "ping-pong: the consumers issue their products in turns; q laid out as its "
        "projection leaves it, the output [B, S, H*D].",
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--check", choices=VARIANTS)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--shapes", nargs="+", type=int,
                        default=list(range(len(PREFILL_SHAPES))),
                        help="indices into common.PREFILL_SHAPES")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.compile_only:
        compile_only()
    elif args.check:
        check(args.check)
    else:
        on_gpu(args.rounds, args.variants, args.shapes)
