"""Triton source for attention: a prefill flash-attention forward and a split-KV decode.

Prefill: one program computes BLOCK_M query rows of one (batch, query head) against the
keys it may see, in BLOCK_N tiles, online softmax in fp32 (base 2). Causal and masked
blocks run last first (the longest); launches of few waves of them run in sweeps over
`heads_per_sweep` heads, block by block across them, so that long blocks do not finish
last. GQA maps query head h to kv head h // GROUP. Causal masks: 0 none, 1 top-left
(PyTorch's is_causal), 2 bottom-right (query i sees keys j <= i + Skv - Sq). An explicit
mask (MASK 1: bool, True = keep; 2: additive float; 3: bool whose hidden keys take the
bias `mask_hidden`, what PyTorch's `where(mask, 0, bias)` makes of a bool mask, read
without materialising it) is read through strides (0 where it broadcasts); a mask that
varies only with batch and key (KEY_MASK: a padding mask) as one row of keys per tile.
The key loop visits the tiles every row sees in full with no mask arithmetic and unmasked
loads, and the others (diagonal, ragged edge, an explicit mask's mixed tiles) masked; an
explicit mask's tile ranges per block come from its summary (MASK_TILE_FLAGS,
MASK_TILES), and tiles no row sees are skipped. Loads go through TMA descriptors built on
the host when the strides allow it (`tma` sources), else through pointers. The output
tile is written through strides ([B, H, S, Dv] or the [B, S, H*Dv] layout the output
projection reads), optionally quantized: static fp8 (elementwise) or nvfp4 (blocks of 16
along a head's Dv).

Decode (few query rows against a long KV): `split_kv` programs each take one kv head
(all GROUP * Sq query rows that read it, so K/V are read once) and one slice of the
keys, writing a normalised partial output and its softmax state (max and sum);
`combine` takes one token row [Hq * Dv] per program, merges the slices and ends with
any row epilogue of irfuse/kernels/quant.py (none, static, per-token, per-group, nvfp4).
Fully masked rows give 0 and lse -inf in both.
"""

# Epilogues: both kernels take static and nvfp4; per_token needs a whole token row (all
# heads), which only the decode path's combine holds.
EPILOGUES = ("none", "static", "static div", "per_token", "per_token in_dtype", "nvfp4")
DECODE_ONLY = ("per_token", "per_token in_dtype")
# Head dims the kernels take: multiples of 16 up to 256. Tiles span the next power of two
# (tl.arange needs one: BLOCK_D, BLOCK_DV); a padded tile's columns past the head dim read
# as zeros (masked pointer loads; TMA fills them) and are never stored. Powers of two
# compile without those masks.
HEAD_DIM_STEP, MAX_HEAD_DIM = 16, 256
HEAD_DIM_RULE = f"multiples of {HEAD_DIM_STEP} up to {MAX_HEAD_DIM}"  # for error messages
# The prefill's unmasked tiles take the row max of the unscaled scores times the scale:
# that is the scaled scores' max only for a scale of at least 0.
NEGATIVE_SCALE = "the kernels' softmax takes scales >= 0"


def takes_head_dim(dim: int) -> bool:
    return HEAD_DIM_STEP <= dim <= MAX_HEAD_DIM and dim % HEAD_DIM_STEP == 0


# The split-KV decode serves up to this many query rows per kv head (Hq/Hkv * Sq).
DECODE_MAX_ROWS = 64


def uses_decode(seq_q: int, heads_q: int, heads_kv: int) -> bool:
    """Whether the split-KV decode kernels serve this shape (the prefill one otherwise)."""
    return heads_q // heads_kv * seq_q <= DECODE_MAX_ROWS


def holds_token_rows(seq_q: int, heads_q: int, heads_kv: int) -> bool:
    """Whether a per-token epilogue (DECODE_ONLY: its scale spans all heads of a token) has
    a kernel at these sizes: static ones (a symbolic size is negative in the IR) that the
    decode kernel serves."""
    return min(seq_q, heads_q, heads_kv) >= 0 and uses_decode(seq_q, heads_q, heads_kv)


# CUDA's limits on a grid's y and z dimensions, and on its x: the decode and mask
# summary grids are 1-D (their (batch, head) counts pass 65535 in large batches), as is
# the prefill's when it has more (batch, head)s than a y dimension holds.
MAX_GRID_YZ = 65535
MAX_GRID_X = 2**31 - 1


PREFILL_SIGNATURE = """
@triton.jit
def {name}(
    q_ptr, k_ptr, v_ptr, mask_ptr, mask_tiles_ptr, scale_ptr, out_ptr, lse_ptr, scale_out_ptr,
    sm_scale, mask_hidden, seq_q, seq_kv, group, heads_per_sweep,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs, stride_mb, stride_mh, stride_mq, stride_mk, mask_heads,
    stride_ob, stride_oh, stride_os, n_heads, out_rows_per_batch,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, KEY_MASK: tl.constexpr,
    HAS_LSE: tl.constexpr, WIDE_OFFSETS: tl.constexpr, SWEEPS: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    if SWEEPS:  # a grid of programs in sweeps over `heads_per_sweep` (batch, head)s, block
        # by block, each block of all of a sweep's heads together (their keys and values
        # stay in L2)
        n_blocks = tl.cdiv(seq_q, BLOCK_M)
        program = tl.program_id(0)
        sweep_start = program // (heads_per_sweep * n_blocks) * heads_per_sweep
        sweep_heads = tl.minimum(heads_per_sweep, tl.num_programs(0) // n_blocks - sweep_start)
        in_sweep = program - sweep_start * n_blocks
        start_m = in_sweep // sweep_heads
        batch_head = sweep_start + in_sweep % sweep_heads
    else:  # a grid of (blocks, heads): one head's blocks at a time
        n_blocks = tl.num_programs(0)
        start_m = tl.program_id(0)
        batch_head = tl.program_id(1)
    if CAUSAL != 0 or MASK != 0:  # causal blocks (and what a 4-D mask usually is, causal
        # with padding) grow with their index: the longest first, or they finish last
        start_m = n_blocks - 1 - start_m
    # divided in 32 bits (a grid index fits; a 64-bit division is a ~100-instruction call),
    # then widened for the offsets
    batch = (batch_head // n_heads).to(tl.int64)
    head = (batch_head % n_heads).to(tl.int64)
    batch_head = batch_head.to(tl.int64)
    kv_head = head // group
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    if WIDE_OFFSETS:  # row * stride reaches 2^31 elements in one (batch, head): 64-bit
        offs_m = offs_m.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
    row_ok = offs_m < seq_q
{head_cols}    mask_rows = (mask_ptr + batch * stride_mb + head * stride_mh
                 + offs_m.to(tl.int64) * stride_mq)
"""

# The head-dim columns of the tiles, and which of the output's are stored.
HEAD_COLS = """    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    padded = BLOCK_D != HEAD_DIM or BLOCK_DV != HEAD_DIM_V  # compiled out when not
    store_ok = row_ok[:, None]
    if BLOCK_DV != HEAD_DIM_V:
        store_ok = store_ok & (offs_dv < HEAD_DIM_V)[None, :]
"""

# q's rows (`row_ok`) at `q_ptrs`: its columns past a padded head dim read as 0.
Q_ROWS_LOAD = """    if BLOCK_D != HEAD_DIM:
        q = tl.load(q_ptrs, mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :], other=0.0)
    else:
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
"""

Q_LOAD = {
    "pointer": """
    q_base = q_ptr + batch * stride_qb + head * stride_qh
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh
    q_ptrs = q_base + offs_m[:, None] * stride_qs + offs_d[None, :]
"""
    + Q_ROWS_LOAD,
    "tma": """
    # q_ptr, k_ptr, v_ptr are TMA descriptors built on the host over [B, H, S, D] (blocks
    # [1, 1, rows, BLOCK_D]): rows past a sequence's end and columns past a padded head
    # dim read as zero
    q_desc, k_desc, v_desc = q_ptr, k_ptr, v_ptr
    batch32, kv_head32 = batch.to(tl.int32), kv_head.to(tl.int32)
    q = q_desc.load([batch32, head.to(tl.int32), start_m * BLOCK_M, 0]).reshape(BLOCK_M,
                                                                                BLOCK_D)
""",
}

# After q is loaded: scores in base 2; key j is visible to query i when j <= i + offset
# (causal) and j < kv_end.
SCORES_SETUP = """
    model_dtype = q.dtype  # what a quant epilogue rounds the output to first
    if INTERPRET:  # the interpreter's tl.dot is wrong on bf16 (TOOLCHAIN.md)
        q = q.to(tl.float32)
    # float arguments in fp32 (Inductor's wrapper passes them as fp64)
    qk_scale = tl.cast(sm_scale, tl.float32) * 1.4426950408889634  # softmax in base 2
    mask_hidden = tl.cast(mask_hidden, tl.float32)
    offset = 0
    if CAUSAL == 2:
        offset = seq_kv - seq_q
"""

# Keys [start, end) are visited: [full_start, full_end) in full tiles with no mask, the
# rest in masked tiles (diagonal, ragged edge, an explicit mask's mixed tiles).
PREFILL_SETUP = """    start = 0
    full_start = 0
    full_end = seq_kv // BLOCK_N * BLOCK_N  # tiles without a ragged edge
    end = seq_kv
    if CAUSAL != 0:  # tiles every row of the block sees in full, then the diagonal ones
        full_end = tl.minimum(full_end, tl.maximum(start_m * BLOCK_M + offset + 1, 0)
                              // BLOCK_N * BLOCK_N)
        end = tl.minimum(seq_kv, (start_m + 1) * BLOCK_M + offset)
    if MASK != 0:  # the mask's tile ranges for this block (mask_tiles): no row sees keys
        # outside [start, end), every row sees [full_start, full_end) in full
        tiles = mask_tiles_ptr + ((batch * mask_heads + head % mask_heads)
                                  * n_blocks + start_m) * 4
        start = tl.load(tiles) * BLOCK_N
        full_start = tl.load(tiles + 1) * BLOCK_N
        full_end = tl.load(tiles + 2) * BLOCK_N
        end = tl.minimum(tl.load(tiles + 3) * BLOCK_N, seq_kv)
    query_pos = offs_m  # what the causal mask compares keys with
    kv_end = seq_kv
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
"""

KV_LOAD = {
    ("pointer", False): """
        if padded:  # the columns past a head dim read as 0
            k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None],
                        mask=(offs_d < HEAD_DIM)[:, None], other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_dv[None, :],
                        mask=(offs_dv < HEAD_DIM_V)[None, :], other=0.0)
        else:
            k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None])
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_dv[None, :])
""",
    ("pointer", True): """
        col_ok = cols < kv_end
        if padded:  # the columns past a head dim read as 0
            k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None],
                        mask=col_ok[None, :] & (offs_d < HEAD_DIM)[:, None], other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_dv[None, :],
                        mask=col_ok[:, None] & (offs_dv < HEAD_DIM_V)[None, :], other=0.0)
        else:
            k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None],
                        mask=col_ok[None, :], other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_dv[None, :],
                        mask=col_ok[:, None], other=0.0)
""",
    ("tma", False): """
        k = tl.trans(k_desc.load([batch32, kv_head32, start_n, 0]).reshape(BLOCK_N, BLOCK_D))
        v = v_desc.load([batch32, kv_head32, start_n, 0]).reshape(BLOCK_N, BLOCK_DV)
""",
}
KV_LOAD["tma", True] = KV_LOAD["tma", False]  # zero past seq_kv

KEY_LOOP = """
    # {stage}
    for start_n in range({start}, {stop}, BLOCK_N):
        cols = start_n + offs_n
{loads}        if INTERPRET:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, k, out_dtype=tl.float32)
{softmax}        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
        m_i = m_new
"""

# the scale is applied inside exp2's argument (one fused multiply-add per score)
FULL_SOFTMAX = """        m_new = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.exp2(qk * qk_scale - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
"""

MASKED_SOFTMAX = """        visible = cols[None, :] < kv_end
        if CAUSAL != 0:
            visible = visible & (cols[None, :] <= query_pos[:, None] + offset)
        if (MASK == 1 or MASK == 3) and KEY_MASK and CAUSAL == 0:  # a bool padding mask: a
            # bias per key in the scale's multiply-add, not a select over the whole tile
            keys = tl.load(mask_ptr + batch * stride_mb + cols.to(tl.int64) * stride_mk,
                           mask=cols < kv_end, other=0)
            hidden_bias = float("-inf")
            if MASK == 3:  # its hidden keys biased by mask_hidden, in base 2, kept finite
                hidden_bias = tl.maximum(mask_hidden * 1.4426950408889634, -3.4028234663852886e38)
            key_bias = tl.where(keys != 0, 0.0, hidden_bias)
            qk = qk * qk_scale + tl.where(cols < kv_end, key_bias, float("-inf"))[None, :]
        else:
            qk = qk * qk_scale
            if MASK != 0:  # the explicit mask's tile
                if KEY_MASK:  # a padding mask: one row of keys, the same for every query
                    keys = tl.load(mask_ptr + batch * stride_mb + cols.to(tl.int64) * stride_mk,
                                   mask=cols < kv_end, other=0)
                    tile = tl.expand_dims(keys, 0)
                else:
                    tile = tl.load(mask_rows[:, None] + cols.to(tl.int64)[None, :] * stride_mk,
                                   mask=row_ok[:, None] & visible, other=0)
                if MASK == 1:
                    visible = visible & (tile != 0)
                else:  # additive, in base 2 like the scores; finite biases stay finite (a row
                    # masked everywhere by a dtype-min bias then averages, as in the reference)
                    if MASK == 3:  # bool, its hidden keys biased by mask_hidden
                        bias = tl.where(tile != 0, 0.0, mask_hidden)
                    else:
                        bias = tile.to(tl.float32)
                    qk += tl.where(bias == float("-inf"), bias,
                                   tl.maximum(bias * 1.4426950408889634, -3.4028234663852886e38))
            qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that see nothing yet
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
"""

PREFILL_FINISH = """
    seen = l_i > 0
    # a reciprocal a row, then a multiply an element (a division an element also issues
    # its predicated rescale for huge divisors: an instruction more)
    acc = acc * (1.0 / tl.where(seen, l_i, 1.0))[:, None]
    if HAS_LSE:
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                       float("-inf"))
        tl.store(lse_ptr + batch_head * seq_q + offs_m, lse, mask=row_ok)
    out_tile = out_ptr + batch * stride_ob + head * stride_oh
    out_ptrs = out_tile + offs_m[:, None] * stride_os + offs_dv[None, :]
"""

PREFILL_PRELOAD = {
    "none": "",
    "static": "    inv_scale = tl.math.div_rn(1.0, tl.load(scale_ptr))  # static fp8 scale\n",
    "static div": "    out_scale = tl.load(scale_ptr)  # static fp8 scale\n"
    "    inv_scale = tl.math.div_rn(1.0, out_scale)\n",
    "nvfp4": "    global_scale = tl.load(scale_ptr)  # nvfp4 global scale\n",
}

PREFILL_EPILOGUE = {
    "none": """
    # epilogue: store in the output dtype
    if INTERPRET:  # the interpreter's cast to bf16 truncates; round_to rounds to nearest
        acc = round_to(acc, out_ptr.dtype.element_ty, INTERPRET)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=store_ok)
""",
    "static": """
    # epilogue: static per-tensor fp8 of the output, q = fp8(clamp(o * (1 / scale)))
    o = round_to(acc, model_dtype, INTERPRET)  # what the unfused quant would read
    tl.store(out_ptrs, to_fp8(o * inv_scale, INTERPRET), mask=store_ok)
""",
    "static div": """
    # epilogue: static per-tensor fp8 of the output, q = fp8(clamp(o / scale)), divided
    # correctly rounded as the graph's division: by the reciprocal pair where it divides
    # every value of the dtype so, else through div_by. The check runs over bf16's 128
    # significands on one warp's lanes (4 turns a lane, no barrier: 1.3% over a multiply
    # on B8 H16 S1024 D64 causal, div_by 3.1%-3.3%) and over fp16's 1024 on 128 lanes, 8
    # turns and a barrier (2.1%-3.0%, div_by 4.3%, one warp's 32 turns 6.4%-6.8%; H100)
    o = round_to(acc, model_dtype, INTERPRET)  # what the unfused quant would read
    zh, zl = reciprocal_pair(out_scale, inv_scale)
    significands: tl.constexpr = 128 if model_dtype == tl.bfloat16 else 1024
    lanes: tl.constexpr = 32 if model_dtype == tl.bfloat16 else 128
    if pair_is_exact(out_scale, inv_scale, zh, zl, tl.arange(0, lanes), significands):
        o = div_by_pair(o, zh, zl)
    else:
        o = div_by(o, out_scale, inv_scale)
    tl.store(out_ptrs, to_fp8(o, INTERPRET), mask=store_ok)
""",
    "nvfp4": """
    # epilogue: nvfp4 of the [B*Sq, Hq*Dv] output (blocks of 16 never straddle heads):
    # packed e2m1 pairs at byte h*Dv/2 + d/2 of the token's row, block scales swizzled
    o = round_to(acc, model_dtype, INTERPRET)  # what the unfused quant would read
    packed, sf = nvfp4_blocks(tl.reshape(o, (BLOCK_M * (BLOCK_DV // 16), 16)), global_scale,
                              INTERPRET)
    pairs = tl.arange(0, BLOCK_DV // 2)
    blocks = tl.arange(0, BLOCK_DV // 16)
    out_rows = batch * out_rows_per_batch + offs_m
    byte_ptrs = out_tile + offs_m[:, None] * stride_os + pairs[None, :]
    pairs_ok = row_ok[:, None]
    blocks_ok = row_ok[:, None]
    if BLOCK_DV != HEAD_DIM_V:  # a padded tile's blocks past the head dim are not stored
        pairs_ok = pairs_ok & (pairs < HEAD_DIM_V // 2)[None, :]
        blocks_ok = blocks_ok & (blocks < HEAD_DIM_V // 16)[None, :]
    tl.store(byte_ptrs, tl.reshape(packed, (BLOCK_M, BLOCK_DV // 2)), mask=pairs_ok)
    k = head * (HEAD_DIM_V // 16) + blocks
    sf_offsets = nvfp4_scale_offset(out_rows[:, None], k[None, :], n_heads * HEAD_DIM_V)
    tl.store(scale_out_ptr + sf_offsets, tl.reshape(sf, (BLOCK_M, BLOCK_DV // 16)),
             mask=blocks_ok)
""",
}

# An explicit mask's tile summary, for the prefill kernel's key ranges, per block of
# BLOCK_M query rows and (batch, mask head), in tiles: [start, end), the tiles some row
# sees, and [full_start, full_end), the longest run of tiles every row sees in full (bool
# True, or an additive 0) and without a ragged edge (the first of equal runs). The full
# run is computed without the mask, tiles outside [start, end) are not visited. Rows past
# seq_q see everything and nothing.
# Hidden keys: bool False; additive -inf, and biases at or below HIDDEN_BIAS (what PyTorch
# turns a bool mask into for cuDNN, -65536, or a dtype's min). Next to a key of bias at
# least ANCHOR_BIAS, 2^14 above, such a key's weight is below 2^-23000 of it (scaled
# logits apart by less than ~16000): 0 in fp32, so skipping it changes nothing. A block
# with a row that has finite hidden keys and no such anchor visits every tile (that row
# weighs all its keys by their scores, as the reference does).
# Two kernels: MASK_TILE_FLAGS reads each (block, key tile) of the mask in a program of
# its own (the whole mask in parallel; one program per block scanning its tiles in turn
# was latency-bound) and stores a flag byte per tile (and, for an additive mask, per row:
# whether it has an anchor, a finite hidden key); MASK_TILES scans a block's flags.
HIDDEN_BIAS, ANCHOR_BIAS = -32768.0, -16384.0
TILE_SEEN, TILE_NOT_FULL = 1, 2  # the flag bits
ROW_ANCHORED, ROW_FINITE_HIDDEN = 1, 2  # the row bits
MASK_TILE_FLAGS = f"""
@triton.jit
def maximum_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def {{name}}(
    mask_ptr, flags_ptr, row_bits_ptr, mask_hidden, seq_q, seq_kv, mask_heads,
    stride_mb, stride_mh, stride_mq, stride_mk,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr,
):
    # a 1-D grid (CUDA's y and z dims hold at most 65535 programs), in the order of a
    # (key tile, block, batch x mask head) grid: the key tile fastest
    n_tiles = tl.cdiv(seq_kv, BLOCK_N)
    n_blocks = tl.cdiv(seq_q, BLOCK_M)
    program = tl.program_id(0)
    tile = program % n_tiles
    start_m = program // n_tiles % n_blocks
    batch_head = (program // n_tiles // n_blocks).to(tl.int64)
    batch = batch_head // mask_heads
    head = batch_head % mask_heads
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < seq_q
    cols = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < seq_kv
    inside = row_ok[:, None] & col_ok[None, :]
    rows = mask_ptr + batch * stride_mb + head * stride_mh + offs_m.to(tl.int64) * stride_mq
    ptrs = rows[:, None] + cols.to(tl.int64)[None, :] * stride_mk
    # reductions over the tile rather than per-key flags: the kernel is bound by its
    # instructions per key, not by reading the mask
    if MASK == 1:  # bool (bytes 0 / 1), True = keep
        keep = tl.load(ptrs, mask=inside, other=0)
        some = tl.max(keep) != 0
        full = tl.min(tl.where(row_ok[:, None], keep, 1)) != 0
    else:  # additive: 0 leaves a score as it is
        if MASK == 3:  # bool, its hidden keys biased by mask_hidden
            keep = tl.load(ptrs, mask=inside, other=0)
            hidden = tl.cast(mask_hidden, tl.float32)  # (Inductor passes floats as fp64)
            bias = tl.where(inside, tl.where(keep != 0, 0.0, hidden), float("-inf"))
        else:
            bias = tl.load(ptrs, mask=inside, other=float("-inf")).to(tl.float32)
        row_max = tl.max(bias, axis=1)  # NaN biases count as hidden, as in the reference
        some = tl.max(row_max) > {HIDDEN_BIAS}
        # |bias| of 0 everywhere: a NaN bias (kept by the reduction) is not full
        largest = tl.reduce(tl.where(row_ok[:, None], tl.abs(bias), 0.0), None, maximum_nan)
        full = largest == 0
        anchored = row_max >= {ANCHOR_BIAS}
        finite = tl.min(tl.where(bias > float("-inf"), bias, float("inf")), axis=1) <= {HIDDEN_BIAS}
        # [batch_head, tile, row]: a block's rows of one tile are contiguous
        bits = anchored.to(tl.int32) * {ROW_ANCHORED} + finite.to(tl.int32) * {ROW_FINITE_HIDDEN}
        tl.store(row_bits_ptr + (batch_head * n_tiles + tile) * seq_q + offs_m,
                 bits.to(tl.int8), mask=row_ok)
    full = full & ((tile + 1) * BLOCK_N <= seq_kv)  # no ragged edge
    flag = some.to(tl.int32) * {TILE_SEEN} + (~full).to(tl.int32) * {TILE_NOT_FULL}
    tl.store(flags_ptr + (batch_head * n_blocks + start_m) * n_tiles + tile, flag.to(tl.int8))
"""

# Chunks of tiles MASK_TILES scans at once: the flags, and the row bits [BLOCK_M, chunk].
FLAG_CHUNK, ROW_BITS_CHUNK = 256, 32
MASK_TILES = f"""
@triton.jit
def maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def {{name}}(
    flags_ptr, row_bits_ptr, tiles_ptr, seq_q, n_tiles,
    BLOCK_M: tl.constexpr, MASK: tl.constexpr,
):
    # a 1-D grid in the order of a (block, batch x mask head) one
    n_blocks = tl.cdiv(seq_q, BLOCK_M)
    start_m = tl.program_id(0) % n_blocks
    batch_head = (tl.program_id(0) // n_blocks).to(tl.int64)
    flags = flags_ptr + (batch_head * n_blocks + start_m) * n_tiles
    start = n_tiles
    end = 0
    full_start = 0
    full_end = 0
    run_start = 0  # the first tile of the run of full tiles that the last tile ended
    for first in range(0, n_tiles, {FLAG_CHUNK}):
        tiles = first + tl.arange(0, {FLAG_CHUNK})
        flag = tl.load(flags + tiles, mask=tiles < n_tiles, other={TILE_NOT_FULL})
        seen = (flag & {TILE_SEEN}) != 0
        start = tl.minimum(start, tl.min(tl.where(seen, tiles, n_tiles)))
        end = tl.maximum(end, tl.max(tl.where(seen, tiles + 1, 0)))
        # each tile's run of full tiles starts after the last tile that is not full
        after_break = tl.where((flag & {TILE_NOT_FULL}) != 0, tiles + 1, 0)
        runs = tl.maximum(tl.associative_scan(after_break, 0, maximum), run_start)
        lengths = tiles + 1 - runs  # 0 where a tile is not full
        longest = tl.max(lengths)
        longer = longest > full_end - full_start  # the first of equal runs stays
        run_end = tl.min(tl.where(lengths == longest, tiles + 1, n_tiles + 1))
        full_start = tl.where(longer, run_end - longest, full_start)
        full_end = tl.where(longer, run_end, full_end)
        run_start = tl.max(runs)
    start = tl.where(end > 0, start, 0)  # no key seen: nothing to visit
    if MASK >= 2:  # a row with finite hidden keys and no anchor: visit every tile
        offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = offs_m < seq_q
        anchored = tl.zeros([BLOCK_M], tl.int32)
        finite = tl.zeros([BLOCK_M], tl.int32)
        for first in range(0, n_tiles, {ROW_BITS_CHUNK}):
            tiles = first + tl.arange(0, {ROW_BITS_CHUNK})
            ptrs = row_bits_ptr + (batch_head * n_tiles + tiles[None, :]) * seq_q + offs_m[:, None]
            bits = tl.load(ptrs, mask=row_ok[:, None] & (tiles < n_tiles)[None, :], other=0)
            anchored = tl.maximum(anchored, tl.max(bits & {ROW_ANCHORED}, axis=1))
            finite = tl.maximum(finite, tl.max(bits & {ROW_FINITE_HIDDEN}, axis=1))
        unanchored = (anchored == 0) & (finite != 0)
        if tl.max(unanchored.to(tl.int32)) != 0:
            start = 0
            end = n_tiles
    no_run = full_end == full_start
    full_start = tl.where(no_run, end, full_start)  # no full tile: all masked
    full_end = tl.where(no_run, end, full_end)
    summary = tiles_ptr + (batch_head * n_blocks + start_m) * 4
    tl.store(summary, start)
    tl.store(summary + 1, full_start)
    tl.store(summary + 2, full_end)
    tl.store(summary + 3, end)
"""

SPLIT_KV_HEAD = """
@triton.jit
def {name}(
    q_ptr, k_ptr, v_ptr, mask_ptr, mask_tiles_ptr, part_ptr, part_state_ptr,
    sm_scale, mask_hidden, seq_q, seq_kv, group, split_len, num_splits,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs, stride_mb, stride_mh, stride_mq, stride_mk, mask_heads,
    n_kv_heads,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, MASK: tl.constexpr, KEY_MASK: tl.constexpr,
    SUMMARY: tl.constexpr, SUMMARY_BLOCK_N: tl.constexpr, WIDE_OFFSETS: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    # rows r < group * seq_q: query head kv_head * group + r // seq_q, token r % seq_q
    # a 1-D grid in the order of a (split, batch x kv head) one
    split = tl.program_id(0) % num_splits
    batch_kv = (tl.program_id(0) // num_splits).to(tl.int64)
    batch = batch_kv // n_kv_heads
    kv_head = batch_kv % n_kv_heads
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < group * seq_q
    q_head = kv_head * group + rows // seq_q
    token = rows % seq_q
    offs_n = tl.arange(0, BLOCK_N)
    if WIDE_OFFSETS:  # key * stride (or a query's) reaches 2^31 elements: 64-bit
        q_head = q_head.to(tl.int64)
        token = token.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
{head_cols}    q_rows = q_ptr + batch * stride_qb + q_head * stride_qh + token * stride_qs
    q_ptrs = q_rows[:, None] + offs_d[None, :]
{q_load}    mask_rows = (mask_ptr + batch * stride_mb + q_head.to(tl.int64) * stride_mh
                 + token.to(tl.int64) * stride_mq)
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh
"""

# Slices split the keys some row sees: all of them, or with a mask summary (SUMMARY) the
# union of its ranges over the program's mask heads (one block of query rows, tiles of
# SUMMARY_BLOCK_N keys), so that no slice visits the keys a padding mask or an unfilled static
# cache hides, and every slice does an even share of the rest.
SPLIT_KV_KEYS = """
    first_key = 0
    last_key = seq_kv
    if SUMMARY:
        n_heads = tl.where(mask_heads == 1, 1, group)
        first_key = seq_kv
        last_key = 0
        for i in range(n_heads):
            tiles = mask_tiles_ptr + (batch * mask_heads + (kv_head * group + i) % mask_heads) * 4
            first_key = tl.minimum(first_key, tl.load(tiles) * SUMMARY_BLOCK_N)
            last_key = tl.maximum(last_key,
                                  tl.minimum(tl.load(tiles + 3) * SUMMARY_BLOCK_N, seq_kv))
        split_len = tl.cdiv(tl.cdiv(tl.maximum(last_key - first_key, 0), num_splits),
                            BLOCK_N) * BLOCK_N
    start = first_key + split * split_len
    query_pos = token  # what the causal mask compares keys with
    kv_end = tl.minimum(start + split_len, last_key)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
"""

SPLIT_KV_STORE = """
    # partial [B, Hq, Sq, splits, Dv], normalised, and its softmax state [..., 2]: the max
    # (base 2; -inf if empty) and the sum, apart (m + log2(l) loses l next to a huge |m|)
    seen = l_i > 0
    slot = ((batch * n_kv_heads * group + q_head) * seq_q + token) * num_splits + split
    tl.store(part_ptr + slot[:, None] * HEAD_DIM_V + offs_dv[None, :],
             acc / tl.where(seen, l_i, 1.0)[:, None], mask=store_ok)
    tl.store(part_state_ptr + slot * 2, m_i, mask=row_ok)
    tl.store(part_state_ptr + slot * 2 + 1, l_i, mask=row_ok)
"""

COMBINE = """
@triton.jit
def {name}(
    part_ptr, part_state_ptr, lse_ptr, scale_ptr, out_ptr, scale_out_ptr,
    n_heads, seq_q, num_splits, n_cols, out_row_stride, scale_out_row_stride,
    scale_out_col_stride,
    HEAD_DIM_V: tl.constexpr, BLOCK: tl.constexpr, MODEL_DTYPE: tl.constexpr,
    HAS_LSE: tl.constexpr, HAS_SCALE: tl.constexpr, INTERPRET: tl.constexpr,
):
    # one token row: column c is head c // Dv, element c % Dv
    row = tl.program_id(0).to(tl.int64)
    batch = row // seq_q
    token = row % seq_q
    col_start = 0  # the whole row
    cols = col_start + tl.arange(0, BLOCK)
    mask = cols < n_cols
    head = cols // HEAD_DIM_V
    slot = ((batch * n_heads + head) * seq_q + token) * num_splits
{preload}    m = tl.full([BLOCK], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK], tl.float32)
    for split in range(num_splits):  # merge the slices' softmax states (base 2)
        m_split = tl.load(part_state_ptr + (slot + split) * 2, mask=mask, other=float("-inf"))
        l_split = tl.load(part_state_ptr + (slot + split) * 2 + 1, mask=mask, other=0.0)
        part = tl.load(part_ptr + (slot + split) * HEAD_DIM_V + cols % HEAD_DIM_V, mask=mask,
                       other=0.0)
        m_new = tl.maximum(m, m_split)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m - m_safe)
        weight = l_split * tl.exp2(m_split - m_safe)
        acc = acc * alpha + weight * part
        total = total * alpha + weight
        m = m_new
    seen = total > 0
    v = round_to(acc / tl.where(seen, total, 1.0), MODEL_DTYPE, INTERPRET)
    if HAS_LSE:
        lse = tl.where(seen, (m + tl.log2(tl.where(seen, total, 1.0))) * 0.6931471805599453,
                       float("-inf"))
        first = mask & (cols % HEAD_DIM_V == 0)
        tl.store(lse_ptr + (batch * n_heads + head) * seq_q + token, lse, mask=first)
"""
