"""Attention + nvfp4 of the [B*S, H*D] output: irfuse's fused kernel against SDPA (cuDNN)
followed by irfuse's standalone nvfp4 quant (what a graph calling irfuse.ops.nvfp4_quant
on SDPA's output runs), bf16, under CUDA graphs, medians of alternating rounds. Appends
its table to RESULTS.md.

    python bench/attention_nvfp4.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare  # noqa: E402

from irfuse.lowering.attention import kernel_attention  # noqa: E402
from irfuse.lowering.runtime import kernel_norm  # noqa: E402

SHAPES = [(4, 32, 4096, 128, True), (4, 32, 4096, 128, False), (8, 16, 1024, 64, True),
          (4, 32, 4096, 64, False)]  # fmt: skip
NVFP4 = "quant/none/model/nvfp4"


def bench_shape(b: int, h: int, s: int, d: int, causal: bool, rounds: int) -> dict[str, float]:
    # laid out as a model's projections leave them ([B, S, H, D] memory): SDPA's output
    # then views as [B*S, H*D] with no copy (from [B, H, S, D] inputs it is laid out so
    # too, and the reshape copied it, a cost the graph does not pay)
    q, k, v = (torch.randn(b, s, h, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
               for _ in range(3))  # fmt: skip
    global_scale = torch.tensor([100.0], device="cuda")
    mode = "top_left" if causal else "none"

    def unfused() -> object:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        rows = o.transpose(1, 2).reshape(b * s, h * d)
        return kernel_norm(rows, None, None, global_scale, 0.0, NVFP4)

    def fused() -> object:
        return kernel_attention(q, k, v, global_scale, d**-0.5, mode, "bs_hd", False, "nvfp4")

    def kernel_bf16() -> object:
        return kernel_attention(q, k, v, None, d**-0.5, mode, "bs_hd", False, "none")

    return compare({"sdpa+nvfp4": unfused, "fused": fused, "kernel_bf16": kernel_bf16}, rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for b, h, s, d, causal in SHAPES:
        t = bench_shape(b, h, s, d, causal, args.rounds)
        rows.append([
            f"B{b} H{h} S{s} D{d}{' causal' if causal else ''}",
            *(f"{t[name]:.1f}" for name in ("sdpa+nvfp4", "fused", "kernel_bf16")),
            f"{t['sdpa+nvfp4'] / t['fused']:.3f}x",
            f"{t['fused'] / t['kernel_bf16'] - 1:+.1%}",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    header = ["shape", "SDPA + nvfp4 us", "fused us", "kernel alone (bf16 out) us",
              "fused vs SDPA + nvfp4", "epilogue cost"]  # fmt: skip
    notes = ("SDPA + nvfp4: cuDNN's attention, then irfuse's standalone nvfp4 quant of its "
             "[B*S, H*D] output; fused: irfuse's attention kernel with the nvfp4 epilogue; "
             "epilogue cost: fused against the same kernel writing bf16.")  # fmt: skip
    print(append_results("attention + nvfp4 (bf16, q/k/v laid out [B, S, H, D])", header,
                         rows, notes))  # fmt: skip


if __name__ == "__main__":
    main()
