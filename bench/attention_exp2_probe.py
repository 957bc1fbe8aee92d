"""Probe: does the prefill's softmax gain from computing part of its exponentials on the
FMA pipe (a cubic in the fraction, the integer part added to the exponent bits) instead of
all on the SFU (`MUFU.EX2`, 16 a clock per SM on Hopper, against 128 FMAs)?

The head-dim-128 full-tile loop issues 64 MUFU.EX2 a thread per key tile: 1024 SM clocks
per 128x128 tile, as long as each of its two products on the tensor cores, and Triton 3.6
runs the softmax between them rather than beside them (bench/RESULTS.md). Each variant
replaces the full tiles' `tl.exp2` by an inline-PTX block over `pack` elements a thread,
`polys` of them by the cubic (relative error 7.5e-5, below bf16's 2^-9; p is rounded to
bf16 for the P@V product anyway). The masked tiles keep `tl.exp2`.

Times irfuse's prefill (kernel_attention, no epilogue) with each variant against the
generated kernel and cuDNN SDPA on issue 4's shapes, alternating over rounds, and checks
each variant's output against the generated kernel's. `--compile-only` compiles each
variant for sm_90 on a machine without a GPU and counts its SASS instructions.

    python bench/attention_exp2_probe.py [--compile-only] [--rounds 5]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    PREFILL_SHAPES,
    append_results,
    compare,
    cudnn_attention,
    prefill_flops,
    prefill_inputs,
)

from irfuse.kernels import attention as pieces  # noqa: E402
from irfuse.lowering import attention as lowering  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402

# 2^f on [-0.5, 0.5], minimax in relative error (7.5e-5), fp32 hex, c0 first
CUBIC = ("0f3F7FFB4A", "0f3F31798D", "0f3E786EE6", "0f3D61FB53")
CALL = "p = tl.exp2(qk * qk_scale - m_new[:, None])"
VARIANTS = [(4, 0), (8, 1), (4, 1), (8, 3), (2, 1)]  # (pack, polys); (4, 0): asm alone


def exp2_helper(pack: int, polys: int) -> str:
    """A jit function `exp2_mixed` computing 2^x over `pack` elements a thread, the last
    `polys` by the cubic: x clamped at -125 (2^x then stays a normal number), n = rint(x)
    through 1.5 * 2^23 (whose low bits then hold n), f = x - n, 2^x = cubic(f) with n added
    to its exponent field; a NaN x gives NaN (the max that ends it: 2^x > x)."""
    slots = [(o, o + pack) for o in range(pack)]  # ($output, $input) of each element
    lines = [f"ex2.approx.ftz.f32 ${o}, ${i};" for o, i in slots[: pack - polys]]
    c0, c1, c2, c3 = CUBIC
    for o, i in slots[pack - polys :]:
        lines += [
            f"max.f32 x, ${i}, 0fC2FA0000;",
            "add.rn.f32 t, x, 0f4B400000;",
            "sub.rn.f32 n, t, 0f4B400000;",
            "sub.rn.f32 f, x, n;",
            f"fma.rn.f32 p, f, {c3}, {c2};",
            f"fma.rn.f32 p, p, f, {c1};",
            f"fma.rn.f32 p, p, f, {c0};",
            "mov.b32 e, t;",
            "shl.b32 e, e, 23;",
            "mov.b32 b, p;",
            "add.s32 b, b, e;",
            "mov.b32 p, b;",
            f"max.NaN.f32 ${o}, p, ${i};",
        ]
    asm = "{ .reg .f32 x, t, n, f, p; .reg .b32 e, b; " + " ".join(lines) + " }"
    constraints = ",".join(["=r"] * pack + ["r"] * pack)
    return f'''
@triton.jit
def exp2_mixed(x):
    return tl.inline_asm_elementwise(
        "{asm}",
        "{constraints}", [x], dtype=tl.float32, is_pure=True, pack={pack},
    )
'''


def variant_source(epilogue: str, loads: str, pack: int, polys: int, name: str) -> str:
    """The generated prefill, its full tiles' exponentials through exp2_mixed, named
    `name` (the kernel cache loads a kernel by its module's function of that name)."""
    source = lowering.prefill_source(epilogue, loads)
    full = pieces.FULL_SOFTMAX.replace(CALL, CALL.replace("tl.exp2", "exp2_mixed"))
    assert source.count(pieces.FULL_SOFTMAX) == 1 and CALL in pieces.FULL_SOFTMAX
    source = source.replace(pieces.FULL_SOFTMAX, full)
    jit = "\n@triton.jit\ndef {}("
    generated = jit.format(lowering.prefill_name(epilogue, loads))
    assert source.count(generated) == 1
    return source.replace(generated, exp2_helper(pack, polys) + jit.format(name))


@functools.cache
def variant_kernel(epilogue: str, loads: str, pack: int, polys: int):
    name = f"{lowering.prefill_name(epilogue, loads)}_exp2_{pack}_{polys}"
    return load_kernel(name, variant_source(epilogue, loads, pack, polys, name))


def compile_only() -> None:
    from sass import compile_sm90, mix
    from triton.compiler import ASTSource

    consts = dict(HEAD_DIM=128, HEAD_DIM_V=128, BLOCK_D=128, BLOCK_DV=128, BLOCK_M=128,
                  BLOCK_N=128, CAUSAL=0, MASK=0, KEY_MASK=False, HAS_LSE=False,
                  WIDE_OFFSETS=False, SWEEPS=False, INTERPRET=False)  # fmt: skip
    for variant in [None, *VARIANTS]:
        if variant is None:
            fn = lowering.prefill_kernel("none", "tma")
        else:
            fn = variant_kernel("none", "tma", *variant)
        sig = {}
        for p in fn.arg_names:
            if p in consts:
                sig[p] = "constexpr"
            elif p in ("q_ptr", "k_ptr", "v_ptr"):
                sig[p] = "tensordesc<bf16[1, 1, 128, 128]>"
            elif p.endswith("_ptr"):
                sig[p] = "*bf16" if p == "out_ptr" else "*fp32"
            else:
                sig[p] = "fp32" if p in ("sm_scale", "mask_hidden") else "i32"
        compiled = compile_sm90(ASTSource(fn, sig, consts), num_warps=8, num_stages=3)
        print(f"{variant or 'generated'}: {mix(compiled, 8)}")


def bench_shape(b: int, h: int, s: int, d: int, causal: bool, rounds: int) -> list[str]:
    q, k, v = prefill_inputs(b, h, s, d)
    mode = "top_left" if causal else "none"

    def ours(q, k, v, loader=lowering.prefill_kernel):  # loader: the prefill's kernels
        with mock.patch.object(lowering, "prefill_kernel", loader):
            return lowering.kernel_attention(q, k, v, None, d**-0.5, mode, "bs_hd", False,
                                             "none")[0]  # fmt: skip

    cudnn = cudnn_attention(causal)
    candidates = {"cuDNN": cudnn, "generated": ours}
    base = ours(q, k, v).float()
    errors = {}
    for pack, polys in VARIANTS:
        name = f"{polys}/{pack} cubic"
        loader = functools.partial(variant_kernel, pack=pack, polys=polys)
        candidates[name] = functools.partial(ours, loader=loader)
        errors[name] = (candidates[name](q, k, v).float() - base).abs().max().item()
    times = compare(candidates, rounds, (q, k, v))
    flops = prefill_flops(b, h, s, d, causal)
    cells = [f"{times['cuDNN']:.1f} ({flops / times['cuDNN'] / 1e6:.0f})"]
    cells += [f"{times[n]:.1f} ({times['cuDNN'] / times[n]:.3f}x)" for n in candidates
              if n != "cuDNN"]  # fmt: skip
    label = f"B{b} H{h} S{s} D{d}{' causal' if causal else ''}"
    row = [label, *cells, ", ".join(f"{n} {e:.2g}" for n, e in errors.items())]
    print(row, flush=True)
    return row


def on_gpu(rounds: int) -> None:
    rows = [bench_shape(*shape, rounds) for shape in PREFILL_SHAPES]
    header = ["shape", "cuDNN us (TFLOP/s)", "generated (x cuDNN)",
              *[f"{n}/{p} cubic" for p, n in VARIANTS], "max abs(out - generated's)"]  # fmt: skip
    append_results(
        "prefill with part of the full tiles' exponentials on the FMA pipe (probe), bf16, "
        "us (x cuDNN)", header, rows,
        "bench/attention_exp2_probe.py: `k/n cubic`: of each n exponentials a thread, k by a "
        "cubic on the FMA pipe, the rest by MUFU.EX2 (0/4: the inline PTX alone).",
    )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.compile_only:
        compile_only()
    else:
        on_gpu(args.rounds)
