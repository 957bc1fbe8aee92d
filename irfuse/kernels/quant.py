"""Triton source for quantization epilogues.

An epilogue is a pair: a preload, emitted with the kernel's first loads so that its
latency overlaps theirs (it matters for a handful of rows), and a store, which takes `v`
(fp32, already rounded to the producer's output dtype, one row per program: `row`,
`cols`, `mask`) to `out_ptr`. Exactly NUMERICS.md.
"""

# Rounds fp32 onto the e4m3 grid (RNE) so that the interpreter's fp32->fp8 cast, which
# is wrong for subnormals and mantissa carries (TOOLCHAIN.md), sees exact values. On the
# GPU the hardware cast already is RNE and the helper is compiled out.
ROUND_TO_E4M3 = """
@triton.jit
def round_to_e4m3(v):
    bits = v.to(tl.uint32, bitcast=True)
    sign = bits & 0x80000000
    magnitude = bits & 0x7FFFFFFF
    normal = (magnitude + 0x7FFFF + ((magnitude >> 20) & 1)) & 0xFFF00000
    absolute = magnitude.to(tl.float32, bitcast=True)
    subnormal = ((absolute + 16384.0) - 16384.0).to(tl.uint32, bitcast=True)
    rounded = tl.where(absolute >= 0.015625, normal, subnormal)
    return tl.where(v != v, v, (rounded | sign).to(tl.float32, bitcast=True))  # keep NaN
"""

EPILOGUE_NONE = """
    # epilogue: store in the output dtype
    tl.store(out_ptr + row * out_row_stride + cols, v.to(out_ptr.dtype.element_ty), mask=mask)
"""

PRELOAD_STATIC_FP8 = """
    inv_scale = tl.math.div_rn(1.0, tl.load(scale_ptr))  # static fp8 scale, loaded early
"""

EPILOGUE_STATIC_FP8 = """
    # epilogue: static per-tensor fp8, q = fp8(clamp(v * (1 / scale), -448, 448))
    q = tl.clamp(v * inv_scale, -448.0, 448.0, propagate_nan=tl.PropagateNan.ALL)
    if INTERPRET:
        q = round_to_e4m3(q)
    tl.store(out_ptr + row * out_row_stride + cols, q.to(tl.float8e4nv), mask=mask)
"""

EPILOGUES = {"none": ("", EPILOGUE_NONE), "static": (PRELOAD_STATIC_FP8, EPILOGUE_STATIC_FP8)}
