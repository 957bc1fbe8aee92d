"""Probe: does Triton 3.6's warp specialization (on-device TMA descriptors, as it takes
them on Hopper) lift a non-causal head-dim-128 prefill toward cuDNN? A minimal forward
(no epilogue, no mask), timed beside cuDNN SDPA and irfuse's own prefill on the same
inputs. `--compile-only` compiles each variant for sm_90 on a machine without a GPU.

    python bench/attention_ws_probe.py [--compile-only]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys

import torch
import triton
import triton.language as tl


@triton.jit
def fwd(q_ptr, k_ptr, v_ptr, out_ptr, qk_scale, N_CTX, HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr):  # fmt: skip
    # q, k, v, out: [B*H*N_CTX, HEAD_DIM] rows (contiguous [B, H, S, D]); qk_scale has log2(e)
    start_m = tl.program_id(0)
    rows = tl.num_programs(1) * N_CTX
    desc_q = tl.make_tensor_descriptor(q_ptr, [rows, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_M, HEAD_DIM])
    desc_k = tl.make_tensor_descriptor(k_ptr, [rows, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_N, HEAD_DIM])
    desc_v = tl.make_tensor_descriptor(v_ptr, [rows, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_N, HEAD_DIM])
    desc_o = tl.make_tensor_descriptor(
        out_ptr, [rows, HEAD_DIM], [HEAD_DIM, 1], [BLOCK_M, HEAD_DIM]
    )
    head_start = tl.program_id(1) * N_CTX
    q_row = head_start + start_m * BLOCK_M
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    q = desc_q.load([q_row, 0])
    for start_n in tl.range(0, N_CTX, BLOCK_N, warp_specialize=WS):
        k = desc_k.load([head_start + start_n, 0])
        qk = tl.dot(q, k.T)
        m_ij = tl.maximum(m_i, tl.max(qk, 1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = desc_v.load([head_start + start_n, 0])
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_ij
    desc_o.store([q_row, 0], (acc / l_i[:, None]).to(out_ptr.dtype.element_ty))


VARIANTS = [  # (BLOCK_M, BLOCK_N, warps, stages, warp_specialize): those that specialize
    # (4 warps: Triton adds a producer warp group and splits the rows over two consumer
    # ones) and fit in 227 KB of shared memory (sm_90 compiles, 2026-12-06)
    (128, 128, 8, 3, False),  # irfuse's head-dim-128 tiles, without specialization
    (128, 128, 4, 2, True),
    (128, 64, 4, 2, True),
    (128, 64, 4, 3, True),
    (128, 64, 4, 4, True),
]


def name(variant: tuple) -> str:
    bm, bn, warps, stages, ws = variant
    return f"{bm}x{bn}/{warps}w/{stages}s ws={ws}"


def compile_only() -> None:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "out_ptr": "*bf16",
           "qk_scale": "fp32", "N_CTX": "i32", "HEAD_DIM": "constexpr",
           "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "WS": "constexpr"}  # fmt: skip
    for variant in VARIANTS:
        bm, bn, warps, stages, ws = variant
        consts = {"HEAD_DIM": 128, "BLOCK_M": bm, "BLOCK_N": bn, "WS": ws}
        options = {"num_warps": warps, "num_stages": stages}
        try:
            compiled = triton.compile(
                ASTSource(fwd, sig, consts), target=GPUTarget("cuda", 90, 32), options=options
            )
        except Exception as error:  # noqa: BLE001 (a probe: report and go on)
            print(f"{name(variant)}: {type(error).__name__}: {str(error).strip()[-300:]}")
            continue
        specialized = "ttg.warp_specialize" in compiled.asm["ttgir"]
        print(f"{name(variant)}: shared {compiled.metadata.shared} B, warps "
              f"{compiled.metadata.num_warps}, warp-specialized {specialized}")  # fmt: skip


def time_us(fn) -> float:
    """Median of 5 do_bench medians (L2 flushed between calls), us."""
    medians = [triton.testing.do_bench(fn, warmup=25, rep=200) for _ in range(5)]
    return statistics.median(medians) * 1e3


def launch(variant: tuple, q, k, v, out) -> None:
    bm, bn, warps, stages, ws = variant
    b, h, s, d = q.shape
    fwd[(triton.cdiv(s, bm), b * h)](q, k, v, out, d**-0.5 * 1.4426950408889634, s,
                                     HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, WS=ws,
                                     num_warps=warps, num_stages=stages)  # fmt: skip


def on_gpu(shapes: list[tuple[int, int, int, int]]) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from irfuse.lowering.attention import kernel_attention

    # on-device descriptors need a scratch allocation per launch
    triton.set_allocator(lambda size, _, __: torch.empty(size, dtype=torch.int8, device="cuda"))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__)
    for b, h, s, d in shapes:
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4 * b * h * s * s * d
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            ref = sdpa(q, k, v)
            cudnn = time_us(functools.partial(sdpa, q, k, v))
        print(f"B{b} H{h} S{s} D{d} non-causal: cuDNN {cudnn:.1f} us "
              f"({flops / cudnn / 1e6:.0f} TFLOP/s)")  # fmt: skip
        args = (q, k, v, None, d**-0.5, "none", "bhsd", False, "none")
        ours = time_us(functools.partial(kernel_attention, *args))
        print(f"  irfuse kernel_attention: {ours:.1f} us, {cudnn / ours:.3f}x cuDNN")
        out = torch.empty_like(q)
        for variant in VARIANTS:
            run = functools.partial(launch, variant, q, k, v, out)
            try:
                run()
            except Exception as error:  # noqa: BLE001
                print(f"  {name(variant)}: {type(error).__name__}: {str(error).strip()[-200:]}")
                continue
            err = (out.float() - ref.float()).abs().max().item()
            t = time_us(run)
            print(f"  {name(variant)}: {t:.1f} us, {cudnn / t:.3f}x cuDNN, max |err| {err:.3g}")
            sys.stdout.flush()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile-only", action="store_true")
    if parser.parse_args().compile_only:
        compile_only()
    else:
        on_gpu([(4, 32, 4096, 128), (4, 32, 4096, 64)])
