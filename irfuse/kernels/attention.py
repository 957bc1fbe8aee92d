"""Triton source for the attention forward (flash attention, online softmax in fp32).

One program computes BLOCK_M query rows of one (batch, query head) against all the keys
it may see, in BLOCK_N tiles; GQA maps query head h to kv head h // GROUP. Causal masks:
0 none, 1 top-left (PyTorch's is_causal), 2 bottom-right (query i sees keys
j <= i + Skv - Sq). The output tile is written through strides, so the same kernel writes
[B, H, S, Dv] or the [B, S, H*Dv] layout the output projection reads; the epilogue may
quantize it (static fp8, elementwise). Fully masked rows give 0 and lse -inf.
"""

SIGNATURE = """
@triton.jit
def {name}(
    q_ptr, k_ptr, v_ptr, scale_ptr, out_ptr, lse_ptr,
    sm_scale, seq_q, seq_kv, group,
    stride_qb, stride_qh, stride_qs, stride_kb, stride_kh, stride_ks,
    stride_vb, stride_vh, stride_vs, stride_ob, stride_oh, stride_os,
    n_heads,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, HAS_LSE: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    start_m = tl.program_id(0)
    batch_head = tl.program_id(1).to(tl.int64)
    batch = batch_head // n_heads
    head = batch_head % n_heads
    kv_head = head // group
    offs_m = start_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_dv = tl.arange(0, HEAD_DIM_V)
    row_ok = offs_m < seq_q
"""

BODY = """
    q_tile = q_ptr + batch * stride_qb + head * stride_qh
    q = tl.load(q_tile + offs_m[:, None] * stride_qs + offs_d[None, :], mask=row_ok[:, None],
                other=0.0)
    k_base = k_ptr + batch * stride_kb + kv_head * stride_kh
    v_base = v_ptr + batch * stride_vb + kv_head * stride_vh
    if INTERPRET:  # the interpreter's tl.dot is wrong on bf16 (TOOLCHAIN.md)
        q = q.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634  # softmax in base 2
    # keys this block may see: key j <= query i + offset under a causal mask
    offset = 0
    if CAUSAL == 2:
        offset = seq_kv - seq_q
    hi = seq_kv
    if CAUSAL != 0:
        hi = tl.minimum(seq_kv, (start_m + 1) * BLOCK_M + offset)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_V], tl.float32)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < seq_kv
        k = tl.load(k_base + cols[None, :] * stride_ks + offs_d[:, None], mask=col_ok[None, :],
                    other=0.0)
        v = tl.load(v_base + cols[:, None] * stride_vs + offs_dv[None, :], mask=col_ok[:, None],
                    other=0.0)
        if INTERPRET:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        qk = tl.dot(q, k, out_dtype=tl.float32) * qk_scale
        visible = col_ok[None, :]
        if CAUSAL != 0:
            visible = visible & (cols[None, :] <= offs_m[:, None] + offset)
        qk = tl.where(visible, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, out_dtype=tl.float32)
        m_i = m_new
    seen = l_i > 0
    acc = acc / tl.where(seen, l_i, 1.0)[:, None]
    if HAS_LSE:
        lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                       float("-inf"))
        tl.store(lse_ptr + batch_head * seq_q + offs_m, lse, mask=row_ok)
    out_tile = out_ptr + batch * stride_ob + head * stride_oh
    out_ptrs = out_tile + offs_m[:, None] * stride_os + offs_dv[None, :]
"""

PRELOAD = {
    "none": "",
    "static": "    inv_scale = tl.math.div_rn(1.0, tl.load(scale_ptr))  # static fp8 scale\n",
}

EPILOGUE = {
    "none": """
    # epilogue: store in the output dtype
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
""",
    "static": """
    # epilogue: static per-tensor fp8 of the [B, S, H*Dv] output, q = fp8(clamp(o / scale))
    o = round_to(acc, q_ptr.dtype.element_ty, INTERPRET)  # what the unfused quant would read
    tl.store(out_ptrs, to_fp8(o * inv_scale, INTERPRET), mask=row_ok[:, None])
""",
}
