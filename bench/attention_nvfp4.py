"""Attention + nvfp4 of the [B*S, H*D] output: irfuse's fused kernel against SDPA (cuDNN)
followed by irfuse's standalone nvfp4 quant (what a graph calling irfuse.ops.nvfp4_quant
on SDPA's output runs), bf16, under CUDA graphs, medians of 3 alternating rounds.

    python bench/attention_nvfp4.py
"""

import torch, triton.testing
import torch.nn.functional as F
from irfuse.lowering.attention import kernel_attention
from irfuse.lowering.runtime import kernel_norm


def bench(fn):
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3


for b, h, s, d, causal in [
    (4, 32, 4096, 128, True),
    (4, 32, 4096, 128, False),
    (8, 16, 1024, 64, True),
    (4, 32, 4096, 64, False),
]:
    q = torch.randn(b, h, s, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn_like(q)
    v = torch.randn_like(q)
    gs = torch.tensor([100.0], device="cuda")
    mode = "top_left" if causal else "none"

    def unfused():
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return kernel_norm(
            o.transpose(1, 2).reshape(b * s, h * d), None, None, gs, 0.0, "quant/none/model/nvfp4"
        )

    fused = lambda: kernel_attention(q, k, v, gs, d**-0.5, mode, "bs_hd", False, "nvfp4")
    plain = lambda: kernel_attention(q, k, v, None, d**-0.5, mode, "bs_hd", False, "none")
    ts = {n: [] for n in ("sdpa+nvfp4", "fused", "kernel_bf16")}
    for _ in range(3):
        for n, f in (("sdpa+nvfp4", unfused), ("fused", fused), ("kernel_bf16", plain)):
            ts[n].append(bench(f))
    m = {n: sorted(t)[1] for n, t in ts.items()}
    print(
        f"B{b} H{h} S{s} D{d} {'causal' if causal else ''}: "
        + ", ".join(f"{n} {t:.1f}us" for n, t in m.items())
        + f"; fused vs SDPA+nvfp4 {m['sdpa+nvfp4'] / m['fused']:.3f}x; epilogue cost {m['fused'] / m['kernel_bf16'] - 1:+.1%}",
        flush=True,
    )
