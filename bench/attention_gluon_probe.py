"""Probe: does a prefill written in Gluon, with its tensor-core products scheduled by hand,
close the gap to cuDNN that Triton 3.6's schedule leaves (non-causal head dim 128: 0.865x,
bench/RESULTS.md)?

Triton 3.6 waits on every QK product with `wgmma.wait_group 0`, which also waits on the
P@V product still in flight, so the softmax never runs beside a product of its own warp
group. Gluon (Triton 3.6's lower-level language: explicit layouts, shared memory,
mbarriers, async wgmma) lets the kernel order them as FA3 does on Hopper: each key tile's
QK is issued together with the previous tile's P@V, the kernel waits for the QK alone
(`warpgroup_mma_wait(1)`), and the softmax runs while P@V is on the tensor cores. K and V
stream through TMA into rings of STAGES tiles, each tile with its mbarrier; one
`thread_barrier` an iteration frees the slots the two warp groups are done with.

Causal top-left or no mask, Sq = Skv a multiple of the tiles, q / k / v contiguous
[B, H, S, D] (a 2-D TMA view [B*H*S, D]): enough to time the schedule, not a kernel
irfuse lowers to. Gluon does not run in the interpreter; `--compile-only` compiles the
variants for sm_90 on a machine without a GPU and counts their SASS instructions.

    python bench/attention_gluon_probe.py --check NAME   # one variant against SDPA
    python bench/attention_gluon_probe.py [--compile-only] [--variants NAME...]
        [--shapes I...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import collections
import functools
import math
import sys
from pathlib import Path

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

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare  # noqa: E402

BLOCK_N = 128
WARPS = 8  # two warp groups, 64 query rows each
WS_CONSUMER_REGS = gl.constexpr(240)  # the second consumer warp group's registers (setmaxnreg)


@gluon.jit
def load_kv(desc, ring, bars, slot, row, pred):
    """TMA of one key (or value) tile into its ring slot, completing on the slot's barrier."""
    mbarrier.expect(bars.index(slot), desc.block_type.nbytes, pred=pred)
    tma.async_copy_global_to_shared(desc, [row, 0], bars.index(slot), ring.index(slot), pred=pred)


@gluon.jit
def query_block(seq, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """The program's first query row and its number of key tiles; causal programs run the
    longest first."""
    block = gl.program_id(0)
    if CAUSAL:
        block = gl.num_programs(0) - 1 - block
        return block * ROWS, (block + 1) * ROWS // BLOCK_N
    return block * ROWS, seq // BLOCK_N


@gluon.jit
def causal_mask(s, j, n_tiles, q_start, BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    """Key tile j's scores, those of keys after their query at -inf when causal: only the
    program's last tile holds the diagonal (the tiles are as long as its query rows)."""
    if CAUSAL:
        if j == n_tiles - 1:
            layout: gl.constexpr = s.type.layout
            rows = q_start + gl.arange(0, s.shape[0], layout=gl.SliceLayout(1, layout))
            cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
            s = gl.where(cols[None, :] <= rows[:, None], s, -float("inf"))
    return s


@gluon.jit
def gluon_prefill(
    q_desc, k_desc, v_desc, o_desc, seq, qk_scale,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
    STAGES: gl.constexpr, CAUSAL: gl.constexpr, num_warps: gl.constexpr,
):  # fmt: skip
    dtype: gl.constexpr = q_desc.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    q_start, n_tiles = query_block(seq, BLOCK_M, BLOCK_N, CAUSAL)
    q_row = gl.program_id(1) * seq + q_start
    kv_row = gl.program_id(1) * seq

    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, HEAD_DIM], q_desc.layout)
    k_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_bars.index(i), count=1)
        mbarrier.init(v_bars.index(i), count=1)

    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem)
    for i in gl.static_range(STAGES):
        load_kv(k_desc, k_ring, k_bars, i, kv_row + i * BLOCK_N, i < n_tiles)
        load_kv(v_desc, v_ring, v_bars, i, kv_row + i * BLOCK_N, i < n_tiles)

    # the first tile's QK and softmax: the loop below issues its P@V
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_bars.index(0), 0)
    s = warpgroup_mma(q_smem, k_ring.index(0).permute((1, 0)), zero_s, use_acc=False,
                      is_async=True)  # fmt: skip
    s = causal_mask(warpgroup_mma_wait(0, deps=(s,)), 0, n_tiles, q_start, BLOCK_N, CAUSAL)
    gl.thread_barrier()  # both warp groups are done with K slot 0
    load_kv(k_desc, k_ring, k_bars, 0, kv_row + STAGES * BLOCK_N, STAGES < n_tiles)
    m_i = gl.max(s, 1) * qk_scale
    p = gl.exp2(s * qk_scale - m_i[:, None])
    l_i = gl.sum(p, 1)
    p_op = gl.convert_layout(p.to(dtype), p_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

    for j in range(1, n_tiles):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        # QK of tile j and P@V of tile j - 1, both in flight; wait for the QK alone
        mbarrier.wait(k_bars.index(slot), (j // STAGES) & 1)
        s = warpgroup_mma(q_smem, k_ring.index(slot).permute((1, 0)), zero_s,
                          use_acc=False, is_async=True)  # fmt: skip
        mbarrier.wait(v_bars.index(prev), ((j - 1) // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_ring.index(prev), acc, is_async=True)
        s = causal_mask(warpgroup_mma_wait(1, deps=(s,)), j, n_tiles, q_start, BLOCK_N, CAUSAL)
        # the softmax of tile j, beside P@V of tile j - 1
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + gl.sum(p, 1)
        m_i = m_new
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
        # both warp groups are done with K slot `slot` and V slot `prev`: refill them
        gl.thread_barrier()
        load_kv(k_desc, k_ring, k_bars, slot, kv_row + (j + STAGES) * BLOCK_N,
                j + STAGES < n_tiles)  # fmt: skip
        load_kv(v_desc, v_ring, v_bars, prev, kv_row + (j - 1 + STAGES) * BLOCK_N,
                j - 1 + STAGES < n_tiles)  # fmt: skip

    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_bars.index(last), ((n_tiles - 1) // STAGES) & 1)
    acc = warpgroup_mma(p_op, v_ring.index(last), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    acc = acc / gl.convert_layout(l_i, o_rows)[:, None]
    q_smem.store(acc.to(dtype))  # q is no longer read: its tile stages the output
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [q_row, 0], q_smem)
    tma.store_wait(0)
    mbarrier.invalidate(q_bar)
    for i in gl.static_range(STAGES):
        mbarrier.invalidate(k_bars.index(i))
        mbarrier.invalidate(v_bars.index(i))


@gluon.jit
def ws_loader(k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, k_free, v_free, kv_row,
              n_tiles, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):  # fmt: skip
    """The producer warp: each K and V tile into its slot once both consumers freed it."""
    for j in range(n_tiles):
        slot = j % STAGES
        freed = ((j // STAGES) & 1) ^ 1  # the phase that frees tile j - STAGES
        mbarrier.wait(k_free.index(slot), freed, pred=j >= STAGES)
        load_kv(k_desc, k_ring, k_ready, slot, kv_row + j * BLOCK_N, True)
        mbarrier.wait(v_free.index(slot), freed, pred=j >= STAGES)
        load_kv(v_desc, v_ring, v_ready, slot, kv_row + j * BLOCK_N, True)


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
def ws_consumer(q_desc, o_desc, q_smem, q_bar, k_ring, v_ring, k_ready, v_ready, k_free,
                v_free, my_turn, other_turn, q_row, q_start, n_tiles, qk_scale,
                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr):  # fmt: skip
    """One warp group's BLOCK_M query rows: the schedule of gluon_prefill, its slots freed
    by mbarrier arrivals instead of a CTA-wide barrier. With PINGPONG the two warp groups
    issue their products in turns (FA3's warp scheduler barrier), so that one's softmax
    runs while the other's products hold the tensor cores."""
    dtype: gl.constexpr = q_desc.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)

    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [q_row, 0], q_bar, q_smem)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    mbarrier.wait(q_bar, 0)
    mbarrier.wait(k_ready.index(0), 0)
    take_turn(my_turn, 0, PINGPONG)
    s = warpgroup_mma(q_smem, k_ring.index(0).permute((1, 0)), zero_s, use_acc=False,
                      is_async=True)  # fmt: skip
    pass_turn(other_turn, PINGPONG)
    s = causal_mask(warpgroup_mma_wait(0, deps=(s,)), 0, n_tiles, q_start, BLOCK_N, CAUSAL)
    mbarrier.arrive(k_free.index(0))
    m_i = gl.max(s, 1) * qk_scale
    p = gl.exp2(s * qk_scale - m_i[:, None])
    l_i = gl.sum(p, 1)
    p_op = gl.convert_layout(p.to(dtype), p_layout)
    acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

    for j in range(1, n_tiles):
        slot = j % STAGES
        prev = (j - 1) % STAGES
        mbarrier.wait(k_ready.index(slot), (j // STAGES) & 1)
        mbarrier.wait(v_ready.index(prev), ((j - 1) // STAGES) & 1)
        take_turn(my_turn, j, PINGPONG)
        s = warpgroup_mma(q_smem, k_ring.index(slot).permute((1, 0)), zero_s,
                          use_acc=False, is_async=True)  # fmt: skip
        acc = warpgroup_mma(p_op, v_ring.index(prev), acc, is_async=True)
        pass_turn(other_turn, PINGPONG)
        s = causal_mask(warpgroup_mma_wait(1, deps=(s,)), j, n_tiles, q_start, BLOCK_N, CAUSAL)
        mbarrier.arrive(k_free.index(slot))
        m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
        alpha = gl.exp2(m_i - m_new)
        p = gl.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + gl.sum(p, 1)
        m_i = m_new
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(v_free.index(prev))
        acc = acc * gl.convert_layout(alpha, o_rows)[:, None]

    last = (n_tiles - 1) % STAGES
    mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
    take_turn(my_turn, n_tiles, PINGPONG)
    acc = warpgroup_mma(p_op, v_ring.index(last), acc, is_async=True)
    pass_turn(other_turn, PINGPONG)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    acc = acc / gl.convert_layout(l_i, o_rows)[:, None]
    q_smem.store(acc.to(dtype))
    fence_async_shared()
    tma.async_copy_shared_to_global(o_desc, [q_row, 0], q_smem)
    tma.store_wait(0)


@gluon.jit
def gluon_prefill_ws(
    q_desc, k_desc, v_desc, o_desc, seq, qk_scale,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
    STAGES: gl.constexpr, CAUSAL: gl.constexpr, PINGPONG: gl.constexpr,
    num_warps: gl.constexpr,
):  # fmt: skip
    """FA3's layout of warps: two consumer warp groups (the default partition and a
    worker, BLOCK_M rows each) and one producer warp issuing the TMA loads."""
    dtype: gl.constexpr = q_desc.dtype
    q_start, n_tiles = query_block(seq, 2 * BLOCK_M, BLOCK_N, CAUSAL)
    q_row = gl.program_id(1) * seq + q_start
    kv_row = gl.program_id(1) * seq
    q_smem = gl.allocate_shared_memory(dtype, [2, BLOCK_M, HEAD_DIM], q_desc.layout)
    k_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
    v_ring = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], v_desc.layout)
    q_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(q_bars.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count=2)  # one arrival from each consumer
        mbarrier.init(v_free.index(i), count=2)
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(turns.index(i), count=1)
    pass_turn(turns.index(0), PINGPONG)  # the first warp group issues first
    gl.warp_specialize(
        [
            (ws_consumer, (q_desc, o_desc, q_smem.index(0), q_bars.index(0), k_ring, v_ring,
                           k_ready, v_ready, k_free, v_free, turns.index(0),
                           turns.index(1), q_row, q_start, n_tiles, qk_scale, BLOCK_M,
                           BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PINGPONG)),
            (ws_consumer, (q_desc, o_desc, q_smem.index(1), q_bars.index(1), k_ring, v_ring,
                           k_ready, v_ready, k_free, v_free, turns.index(1),
                           turns.index(0), q_row + BLOCK_M, q_start + BLOCK_M, n_tiles,
                           qk_scale, BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, CAUSAL, PINGPONG)),
            (ws_loader, (k_desc, v_desc, k_ring, v_ring, k_ready, v_ready, k_free, v_free,
                         kv_row, n_tiles, BLOCK_N, STAGES)),
        ],
        [4, 1],
        [WS_CONSUMER_REGS, 24],
    )  # fmt: skip


ROWS = 128  # query rows a program: two warp groups of 64
VARIANTS = {  # name: kernel, num_warps, rows of its q / out blocks, its other constexprs
    "gluon": (gluon_prefill, WARPS, ROWS, dict(STAGES=2)),
    "gluon-ws": (gluon_prefill_ws, 4, ROWS // 2, dict(STAGES=2, PINGPONG=False)),
    "gluon-ws 3 stages": (gluon_prefill_ws, 4, ROWS // 2, dict(STAGES=3, PINGPONG=False)),
    "gluon-ws ping-pong": (gluon_prefill_ws, 4, ROWS // 2, dict(STAGES=2, PINGPONG=True)),
}


def tma_view(t: torch.Tensor, rows: int) -> TensorDescriptor:
    """The 2-D TMA view [B*H*S, D] of a contiguous [B, H, S, D] tensor, `rows` a block."""
    flat = t.view(-1, t.shape[-1])
    layout = gl.NVMMASharedLayout.get_default_for([rows, t.shape[-1]], gl.bfloat16)
    return TensorDescriptor(flat, list(flat.shape), list(flat.stride()),
                            [rows, t.shape[-1]], layout)  # fmt: skip


def launch(name: str, causal: bool, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Variant `name` over contiguous [B, H, S, D] inputs, causal top-left or no mask."""
    kernel, warps, block_m, options = VARIANTS[name]
    b, h, s, d = q.shape
    block_n = BLOCK_N
    assert s % ROWS == 0 and s % block_n == 0 and (causal or s // block_n >= options["STAGES"])
    out = torch.empty_like(q)
    descs = [tma_view(q, block_m), tma_view(k, block_n), tma_view(v, block_n),
             tma_view(out, block_m)]  # fmt: skip
    kernel[(s // ROWS, b * h)](
        *descs, s, d**-0.5 * math.log2(math.e), BLOCK_M=block_m, BLOCK_N=block_n,
        HEAD_DIM=d, CAUSAL=causal, num_warps=warps, **options,
    )  # fmt: skip
    return out


def compile_only() -> None:
    from sass import OPCODE, disassemble
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    block_n = BLOCK_N
    for name, (kernel, warps, block_m, options) in VARIANTS.items():
        for d in (64, 128):
            t = torch.empty(1024, 1, 1, d, dtype=torch.bfloat16)
            sig = {arg: mangle_type(tma_view(t, rows)) for arg, rows in
                   (("q_desc", block_m), ("k_desc", block_n), ("v_desc", block_n),
                    ("o_desc", block_m))}  # fmt: skip
            sig |= {"seq": "i32", "qk_scale": "fp32"}
            consts = dict(BLOCK_M=block_m, BLOCK_N=block_n, HEAD_DIM=d, CAUSAL=True,
                          num_warps=warps, **options)  # fmt: skip
            sig |= {arg: "constexpr" for arg in consts}
            compiled = triton.compile(
                GluonASTSource(kernel, sig, consts),
                target=GPUTarget("cuda", 90, 32),
                options={"num_warps": warps},
            )
            ops = collections.Counter(OPCODE.findall(disassemble(compiled.asm["cubin"])))
            print(f"{name} D{d}: {sum(ops.values())} SASS instructions, "
                  f"{compiled.metadata.shared} B shared; " +
                  ", ".join(f"{k} {n}" for k, n in ops.most_common(10)))  # fmt: skip


SHAPES = [  # (B, H, S, D, causal): issue 4's prefill shapes
    (4, 32, 4096, 128, False),
    (4, 32, 4096, 128, True),
    (1, 32, 16384, 128, True),
    (8, 16, 1024, 64, True),
    (4, 32, 4096, 64, False),
]


def bench_shape(b: int, h: int, s: int, d: int, causal: bool, rounds: int) -> list[str]:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from irfuse.lowering import attention as lowering

    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in "qkv")
    mode = "top_left" if causal else "none"

    def generated(q, k, v):  # writes [B, S, H*D]: viewed as [B, H, S, D] to compare
        out = lowering.kernel_attention(q, k, v, None, d**-0.5, mode, "bs_hd", False, "none")
        return out[0].view(b, s, h, d).transpose(1, 2)

    def cudnn(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    candidates = {"cuDNN": cudnn, "generated": generated}
    candidates |= {name: functools.partial(launch, name, causal) for name in VARIANTS}
    reference = cudnn(q, k, v).float()
    errors = [f"{(candidates[n](q, k, v).float() - reference).abs().max().item():.2g}"
              for n in list(candidates)[1:]]  # fmt: skip
    times = compare(candidates, rounds, (q, k, v))
    flops = 4 * b * h * s * s * d / (2 if causal else 1)
    cells = [f"{times[n]:.1f} ({flops / times[n] / 1e6:.0f})" for n in candidates]
    ratios = [f"{times['cuDNN'] / times[n]:.3f}x" for n in list(candidates)[1:]]
    label = f"B{b} H{h} S{s} D{d}{' causal' if causal else ''}"
    row = [label, *cells, *ratios, " / ".join(errors)]
    print(row, flush=True)
    return row


def check(name: str) -> None:
    """One variant against SDPA's math backend on small shapes, causal and not; exits
    non-zero past bf16's tolerance (run it under `timeout`: a wrong mbarrier phase hangs
    the kernel)."""
    import torch.nn.functional as F

    worst = 0.0
    for d, causal in ((64, False), (128, False), (64, True), (128, True)):
        q, k, v = (torch.randn(2, 3, 1024, d, device="cuda", dtype=torch.bfloat16)
                   for _ in "qkv")  # fmt: skip
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                   is_causal=causal)  # fmt: skip
        error = (launch(name, causal, q, k, v).float() - reference).abs().max().item()
        print(f"{name} D{d} causal {causal}: max |out - reference| {error:.3g}", flush=True)
        worst = max(worst, error)
    sys.exit(0 if worst < 2e-2 else 1)


def on_gpu(rounds: int, variants: list[str], shapes: list[int]) -> None:
    for name in set(VARIANTS) - set(variants):
        del VARIANTS[name]
    rows = [bench_shape(*SHAPES[i], rounds) for i in shapes]
    names = ["generated", *VARIANTS]
    header = ["shape", "cuDNN us (TFLOP/s)", *names, *[f"{n} x cuDNN" for n in names],
              f"max abs(out - cuDNN's), {' / '.join(names)}"]  # fmt: skip
    append_results(
        "prefill in Gluon, QK waited alone and the softmax beside P@V (probe), bf16, us "
        "(TFLOP/s)", header, rows,
        f"bench/attention_gluon_probe.py: {ROWS} query rows a program, {BLOCK_N} keys a "
        f"tile, 2 K / V stages unless named; gluon: {WARPS} warps; gluon-ws: two consumer "
        "warp groups and a producer warp; ping-pong: the consumers issue their products in "
        "turns.",
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--check", choices=VARIANTS)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--shapes", nargs="+", type=int, default=list(range(len(SHAPES))),
                        help="indices into SHAPES")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.compile_only:
        compile_only()
    elif args.check:
        check(args.check)
    else:
        on_gpu(args.rounds, args.variants, args.shapes)
