"""Gluon source of the Hopper (sm_90) prefill: flash attention with its tensor-core
products ordered by hand, as FA3 orders them.

Triton 3.6 waits on every QK product with `wgmma.wait_group 0`, which also waits on the
P@V product still in flight, so the softmax never runs beside a product of its own warp
group, and its TMA pipeline keeps the warp groups in lockstep with CTA-wide barriers
(head dim 128: 0.87x-0.91x cuDNN). Gluon, Triton's lower-level language (explicit
layouts, shared memory, mbarriers, async wgmma, warp specialization), lets the kernel:

- issue each key tile's QK together with the previous tile's P@V, wait for the QK alone
  (`warpgroup_mma_wait(1)`) and run the softmax while P@V holds the tensor cores;
- split a program's query rows over consumer warp groups (64 rows each: two with 240
  registers, or three with 160, as FA3 runs head dim 64) and give a producer warp (24
  registers) the TMA loads of q, K and V, into rings whose slots the consumers free by
  mbarrier arrivals; causal, each warp group stops at its own rows' diagonal and frees
  the later tiles (which the program's later rows read) unread;
- run a list of work items a program (query blocks of one batch and head: one each, or
  persistent, a program an SM taking them in snake order), the producer loading the
  next item's query rows and keys while the consumers end the last one, whose output
  store they wait for only when they next store; items go in sweeps of heads block by
  block, causal the longest first.

Persistent, it runs head dim 128 at 0.93x-1.08x cuDNN from 512 rows (H200,
bench/RESULTS.md, thirty-sixth session).

q, k, v and the output are 4-D TMA views [B, S, H, D] of any strides but the last (q as
its projection leaves it; the output [B, Sq, Hq, D], which both of irfuse's layouts
store), GQA maps query head h to kv head h // group, ragged lengths read zeros past the
end (TMA) and mask those keys in the last tile, causal is top-left or bottom-right (rows
that see no key give 0 and lse -inf). The epilogue is one of EPILOGUES; its quant helpers
are the @triton.jit ones of irfuse/kernels/quant.py (Gluon calls them). `static div`
divides by quant.py's reciprocal pair where its check, once a program, finds it correctly
rounded for every value of the dtype (as fast as a multiply by 1 / scale on B4 H32 S4096
D128 causal, H100, thirty-seventh session), else through div_by's correction.

The placeholders: {tma_load} / {tma_store} (Triton 3.9 renamed Gluon's TMA copies), the
epilogue's {preload} and {store}; `kernel` writes KERNEL's.
"""

HEADER = """
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
"""

HELPERS = """

@gluon.jit
def load_kv(desc, ring, bars, slot, batch, row, kv_head):
    # one key (or value) tile into its ring slot, completing on the slot's barrier (rows
    # past the sequence read as zeros)
    mbarrier.expect(bars.index(slot), desc.block_type.nbytes)
    tma.{tma_load}(desc, [batch, row, kv_head, 0], bars.index(slot), ring.index(slot))


@gluon.jit
def round_item(r):
    # the work item a program runs in round r: r * G + its index in even rounds, r * G +
    # G - 1 - its index in odd ones (G programs), a snake, so that items in order of cost
    # (causal: the longest first) even out over the programs
    programs = gl.num_programs(0)
    index = gl.program_id(0)
    return r * programs + index + (r % 2) * (programs - 1 - 2 * index)


@gluon.jit
def program_rounds(n_items):
    # the rounds this program runs: every full one, and the last if its item is there
    full = n_items // gl.num_programs(0)
    return full + (round_item(full) < n_items).to(gl.int32)


@gluon.jit
def work_item(item, n_items, seq_q, seq_kv, n_heads, heads_per_sweep, ROWS: gl.constexpr,
              BLOCK_N: gl.constexpr, CAUSAL: gl.constexpr):
    # work item `item` of `n_items` (query blocks of ROWS rows x B * Hq): its batch, head,
    # batch * Hq + head, first query row, key tiles (at least one) and how far the keys a
    # query sees run past its row (Skv - Sq bottom-right, else 0). Items run in sweeps
    # over `heads_per_sweep` heads block by block (1: one head's blocks at a time), so
    # that causal blocks, which grow with their index, start with the longest of all the
    # sweep's heads (whose keys and values stay in L2)
    n_blocks = gl.cdiv(seq_q, ROWS)
    sweep_start = item // (heads_per_sweep * n_blocks) * heads_per_sweep
    sweep_heads = gl.minimum(heads_per_sweep, n_items // n_blocks - sweep_start)
    in_sweep = item - sweep_start * n_blocks
    block = in_sweep // sweep_heads
    batch_head = sweep_start + in_sweep % sweep_heads
    offset = seq_kv - seq_q if CAUSAL == 2 else 0
    n_tiles = gl.cdiv(seq_kv, BLOCK_N)
    if CAUSAL != 0:
        block = n_blocks - 1 - block
        seen = gl.minimum(block * ROWS + ROWS + offset, seq_kv)
        n_tiles = gl.maximum(gl.cdiv(seen, BLOCK_N), 1)
    return batch_head // n_heads, batch_head % n_heads, batch_head, block * ROWS, n_tiles, offset


@gluon.jit
def mask_tile(s, j, first_masked, q_start, offset, seq_kv, BLOCK_N: gl.constexpr,
              CAUSAL: gl.constexpr):
    # key tile j's scores, -inf where the key is past the sequence or (causal) after what
    # its query sees; tiles before `first_masked`, which every row sees in full, untouched
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
def softmax_step(s, m_i, qk_scale):
    # the new row max (base 2), the factor that rescales the old state to it and the
    # tile's probabilities; rows that have seen no key yet (max -inf) give 0s, not NaNs
    m_new = gl.maximum(m_i, gl.max(s, 1) * qk_scale)
    m_use = gl.where(m_new == -float("inf"), 0.0, m_new)
    return m_new, gl.exp2(m_i - m_use), gl.exp2(s * qk_scale - m_use[:, None])


@gluon.jit
def producer(q_desc, k_desc, v_desc, q_smem, k_ring, v_ring, q_ready, q_free, k_ready,
             v_ready, k_free, v_free, seq_q, seq_kv, n_heads, group, heads_per_sweep, n_items,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
             CONSUMERS: gl.constexpr, CAUSAL: gl.constexpr):
    # the producer warp, over the program's items (one a round r): each consumer's query
    # rows once it is done with its last ones, then each K and V tile into its slot once
    # every consumer freed it (tile: the ring's count over the items, which sets its slots
    # and phases)
    tile = 0
    for r in range(program_rounds(n_items)):
        batch, head, _, q_start, n_tiles, _ = work_item(
            round_item(r), n_items, seq_q, seq_kv, n_heads, heads_per_sweep, CONSUMERS * BLOCK_M,
            BLOCK_N, CAUSAL)
        for i in gl.static_range(CONSUMERS):
            mbarrier.wait(q_free.index(i), (r & 1) ^ 1, pred=r > 0)
            mbarrier.expect(q_ready.index(i), q_desc.block_type.nbytes)
            tma.{tma_load}(q_desc, [batch, q_start + i * BLOCK_M, head, 0], q_ready.index(i),
                           q_smem.index(i))
        for j in range(n_tiles):
            slot = (tile + j) % STAGES
            freed = (((tile + j) // STAGES) & 1) ^ 1  # the phase that frees the slot's last
            mbarrier.wait(k_free.index(slot), freed, pred=tile + j >= STAGES)
            load_kv(k_desc, k_ring, k_ready, slot, batch, j * BLOCK_N, head // group)
            mbarrier.wait(v_free.index(slot), freed, pred=tile + j >= STAGES)
            load_kv(v_desc, v_ring, v_ready, slot, batch, j * BLOCK_N, head // group)
        tile += n_tiles
"""

CONSUMER = """

@gluon.jit
def rows_consumer(q_desc, o_desc, q_smem, o_smem, q_ready, q_free, k_ring, v_ring, k_ready,
                  v_ready, k_free, v_free, lse_ptr, scale_ptr, seq_q, seq_kv, n_heads,
                  heads_per_sweep, n_items, qk_scale, ROWS_FROM: gl.constexpr,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr,
                  STAGES: gl.constexpr, CONSUMERS: gl.constexpr, CAUSAL: gl.constexpr,
                  HAS_LSE: gl.constexpr):
    # one warp group's BLOCK_M query rows (from ROWS_FROM in each of the program's items):
    # each key tile's QK issued with the previous tile's P@V, the QK alone waited for, the
    # softmax beside P@V
    dtype: gl.constexpr = q_desc.dtype
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, BLOCK_N, 16]
    )
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, HEAD_DIM, 16]
    )
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    q_tile = q_smem.reshape([BLOCK_M, HEAD_DIM])
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
{preload}    tile = 0  # the K / V ring's count over the items (the producer's)
    for r in range(program_rounds(n_items)):
        batch, head, batch_head, q_start, n_tiles, offset = work_item(
            round_item(r), n_items, seq_q, seq_kv, n_heads, heads_per_sweep, CONSUMERS * BLOCK_M,
            BLOCK_N, CAUSAL)
        q_start += ROWS_FROM
        # tiles before this one every row of the warp group sees in full; causal, its
        # rows see no key past tile `my_tiles` (the item's later rows may: n_tiles)
        if CAUSAL != 0:
            first_masked = gl.minimum(gl.maximum(q_start + offset + 1, 0) // BLOCK_N,
                                      seq_kv // BLOCK_N)
            visible = gl.minimum(q_start + BLOCK_M + offset, seq_kv)
            my_tiles = gl.maximum(gl.cdiv(gl.maximum(visible, 0), BLOCK_N), 1)
        else:
            first_masked = seq_kv // BLOCK_N
            my_tiles = n_tiles

        mbarrier.wait(q_ready, r & 1)
        slot = tile % STAGES
        mbarrier.wait(k_ready.index(slot), (tile // STAGES) & 1)
        s = warpgroup_mma(q_tile, k_ring.index(slot).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)),
                          zero_s, use_acc=False, is_async=True)
        s = warpgroup_mma_wait(0, deps=(s,))
        mbarrier.arrive(k_free.index(slot))
        s = mask_tile(s, 0, first_masked, q_start, offset, seq_kv, BLOCK_N, CAUSAL)
        m_i, _, p = softmax_step(s, gl.full([BLOCK_M], -float("inf"), gl.float32,
                                            gl.SliceLayout(1, s_layout)), qk_scale)
        l_i = gl.sum(p, 1)
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        acc = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

        for j in range(1, my_tiles):
            slot = (tile + j) % STAGES
            prev = (tile + j - 1) % STAGES
            mbarrier.wait(k_ready.index(slot), ((tile + j) // STAGES) & 1)
            mbarrier.wait(v_ready.index(prev), ((tile + j - 1) // STAGES) & 1)
            s = warpgroup_mma(q_tile,
                              k_ring.index(slot).reshape([BLOCK_N, HEAD_DIM]).permute((1, 0)),
                              zero_s, use_acc=False, is_async=True)
            acc = warpgroup_mma(p_op, v_ring.index(prev).reshape([BLOCK_N, HEAD_DIM]), acc,
                                is_async=True)
            s = warpgroup_mma_wait(1, deps=(s,))  # the QK alone: P@V stays in flight
            mbarrier.arrive(k_free.index(slot))
            s = mask_tile(s, j, first_masked, q_start, offset, seq_kv, BLOCK_N, CAUSAL)
            m_i, alpha, p = softmax_step(s, m_i, qk_scale)
            l_i = l_i * alpha + gl.sum(p, 1)
            p_op = gl.convert_layout(p.to(dtype), p_layout)
            acc = warpgroup_mma_wait(0, deps=(acc,))
            mbarrier.arrive(v_free.index(prev))
            acc = acc * gl.convert_layout(alpha, o_rows)[:, None]
        mbarrier.arrive(q_free)  # every QK done: the producer may load the next rows

        last = (tile + my_tiles - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((tile + my_tiles - 1) // STAGES) & 1)
        acc = warpgroup_mma(p_op, v_ring.index(last).reshape([BLOCK_N, HEAD_DIM]), acc,
                            is_async=True)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(v_free.index(last))  # the producer may load more
        # rows that saw no key (bottom-right, Sq > Skv) give 0 and lse -inf
        seen = l_i > 0
        if HAS_LSE:
            rows = q_start + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, s_layout))
            lse = gl.where(seen, (m_i + gl.log2(l_i)) * 0.6931471805599453, -float("inf"))
            # lse [B, Hq, Sq]
            gl.store(lse_ptr + batch_head.to(gl.int64) * seq_q + rows, lse, mask=rows < seq_q)
        # a reciprocal a row, a multiply an element (not a division an element)
        o = acc * gl.convert_layout(1.0 / gl.where(seen, l_i, 1.0), o_rows)[:, None]
{store}        tma.store_wait(0)  # the last item's output has left o_smem
        o_smem.reshape([BLOCK_M, HEAD_DIM]).store(o)
        fence_async_shared()
        # rows past Sq are not written
        tma.{tma_store}(o_desc, [batch, q_start, head, 0], o_smem)
        if CAUSAL != 0:
            # the tiles past this warp group's rows, freed unread in order once loaded
            # (each arrival counts toward that tile's phase of its slot)
            for j in range(my_tiles, n_tiles):
                slot = (tile + j) % STAGES
                mbarrier.wait(k_ready.index(slot), ((tile + j) // STAGES) & 1)
                mbarrier.arrive(k_free.index(slot))
                mbarrier.wait(v_ready.index(slot), ((tile + j) // STAGES) & 1)
                mbarrier.arrive(v_free.index(slot))
        tile += n_tiles
    tma.store_wait(0)
"""

KERNEL = """

@gluon.jit
def {name}(
    q_desc, k_desc, v_desc, o_desc, lse_ptr, scale_ptr, seq_q, seq_kv, n_heads, group,
    heads_per_sweep, n_items, qk_scale, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
    HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, CAUSAL: gl.constexpr, HAS_LSE: gl.constexpr,
    CONSUMER_REGS: gl.constexpr, PRODUCER_REGS: gl.constexpr, num_warps: gl.constexpr,
):
    # a program runs a work item a round (round_item) of `n_items` (query blocks of
    # {consumers} * BLOCK_M rows of one batch and head): {consumers} consumer warp groups
    # (the default partition and workers) and a producer warp, which loads the next item's
    # rows and keys while the consumers end the last one
    q_smem = gl.allocate_shared_memory(q_desc.dtype, [{consumers}] + q_desc.block_type.shape,
                                       q_desc.layout)
    o_smem = gl.allocate_shared_memory(o_desc.dtype, [{consumers}] + o_desc.block_type.shape,
                                       o_desc.layout)
    k_ring = gl.allocate_shared_memory(k_desc.dtype, [STAGES] + k_desc.block_type.shape,
                                       k_desc.layout)
    v_ring = gl.allocate_shared_memory(v_desc.dtype, [STAGES] + v_desc.block_type.shape,
                                       v_desc.layout)
    q_ready = gl.allocate_shared_memory(gl.int64, [{consumers}, 1], mbarrier.MBarrierLayout())
    q_free = gl.allocate_shared_memory(gl.int64, [{consumers}, 1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    k_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range({consumers}):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_free.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_free.index(i), count={consumers})  # one arrival from each consumer
        mbarrier.init(v_free.index(i), count={consumers})
    gl.warp_specialize(
        [
{partitions}            (producer, (q_desc, k_desc, v_desc, q_smem, k_ring, v_ring, q_ready, q_free,
                        k_ready, v_ready, k_free, v_free, seq_q, seq_kv, n_heads, group,
                        heads_per_sweep, n_items, BLOCK_M, BLOCK_N, STAGES, {consumers},
                        CAUSAL)),
        ],
        [{worker_warps}1],
        [{worker_regs}PRODUCER_REGS],
    )
"""

# Consumer `{i}` of KERNEL's partitions: each item's query rows from {i} * BLOCK_M.
PARTITION = """            (rows_consumer, (q_desc, o_desc, q_smem.index({i}), o_smem.index({i}),
                             q_ready.index({i}), q_free.index({i}), k_ring, v_ring, k_ready,
                             v_ready, k_free, v_free, lse_ptr, scale_ptr, seq_q, seq_kv,
                             n_heads, heads_per_sweep, n_items, qk_scale, {i} * BLOCK_M,
                             BLOCK_M, BLOCK_N, HEAD_DIM, STAGES, {consumers}, CAUSAL,
                             HAS_LSE)),
"""


def kernel(name: str, consumers: int) -> str:
    """KERNEL with `consumers` consumer warp groups: the default partition, then workers of
    4 warps with CONSUMER_REGS registers each; the producer warp last."""
    return KERNEL.format(
        name=name, consumers=consumers,
        partitions="".join(PARTITION.format(i=i, consumers=consumers) for i in range(consumers)),
        worker_warps="4, " * (consumers - 1), worker_regs="CONSUMER_REGS, " * (consumers - 1),
    )  # fmt: skip


# (preload, store) of each epilogue, on the output `o` (fp32) before it goes to shared
# memory; the quant ones round it to the model dtype first, as the unfused quant reads it
# (on the GPU the fp8 cast saturates to +-448 and keeps NaN: to_fp8).
EPILOGUES = {
    "none": ("", "        o = o.to(o_desc.dtype)  # epilogue: store in the output dtype\n"),
    "static": (
        "    inv_scale = gl.div_rn(1.0, gl.load(scale_ptr))  # static fp8 scale, loaded early\n",
        "        # epilogue: static per-tensor fp8 of the output, q = fp8(clamp(o * (1 / scale)))\n"
        "        o = to_fp8(round_to(o, dtype, False) * inv_scale, False)\n",
    ),
    "static div": (
        "    out_scale = gl.load(scale_ptr)  # static fp8 scale, loaded early\n"
        "    inv_scale = gl.div_rn(1.0, out_scale)\n"
        "    zh, zl = reciprocal_pair(out_scale, inv_scale)  # zh + zl ~ 1 / scale\n"
        "    # the significands of the dtype's values (bf16 or fp16, the dtypes this kernel\n"
        "    # takes), over the warp group's 128 threads\n"
        "    lanes = gl.arange(0, 128, layout=gl.BlockedLayout([1], [32], [4], [0]))\n"
        "    by_pair = pair_is_exact(out_scale, inv_scale, zh, zl, lanes,\n"
        "                            128 if dtype == gl.bfloat16 else 1024)\n",
        "        # epilogue: static per-tensor fp8 of the output, q = fp8(clamp(o / scale)),\n"
        "        # divided correctly rounded as the graph's division: by the reciprocal pair\n"
        "        # where it divides every value of the dtype so, else through div_by\n"
        "        o = round_to(o, dtype, False)\n"
        "        if by_pair:\n"
        "            o = div_by_pair(o, zh, zl)\n"
        "        else:  # (the scale loaded again: fewer registers live over the loop)\n"
        "            out_scale = gl.load(scale_ptr)\n"
        "            o = div_by(o, out_scale, gl.div_rn(1.0, out_scale))\n"
        "        o = to_fp8(o, False)\n",
    ),
}
