"""What the static fp8 epilogue costs irfuse's attention, and what else the fused block
runs: the kernel alone with a bf16 output and with the fp8 one (times 1 / scale, and
divided by the scale correctly rounded: "static div", what the block's division fuses
to), bench/attention.py's block compiled by irfuse (attention="irfuse") and by Inductor,
and cuDNN SDPA alone, on the same inputs (timed as bench/attention.py times them); then
the GPU kernels each block launches, from the profiler. The scale is calibrated (the
output's amax / 448), as a checkpoint's is.

    python bench/epilogue_cost.py [--rounds 5] [--only I ...] [--dtype bfloat16|float16]

Probe: on an H200, B8 H16 S1024 D64 causal ran 62.3 us as the kernel alone and 65.2 us
as the fused block (thirty-sixth session), where the fp8 output writes half the bytes of
the bf16 one; in the eighth session the block ran 61.0 us beside a 62.2 us kernel.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from attention import block, calibrated_scale  # noqa: E402
from common import append_results, compare  # noqa: E402

from irfuse.lowering.attention import kernel_attention  # noqa: E402

SHAPES = [  # (B, H, S, D, causal); --only I selects
    (8, 16, 1024, 64, True),
    (4, 32, 4096, 128, True),
]


def kernels(fn, calls: int = 10) -> str:
    """The GPU kernels one call of `fn` launches: name (shortened) and mean us."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = collections.defaultdict(float)
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name[:48]] += event.device_time / calls
    return "; ".join(f"{name} {us:.1f}" for name, us in totals.items())


def measure(b: int, h: int, s: int, d: int, causal: bool, rounds: int,
            dtype: torch.dtype) -> list[str]:  # fmt: skip
    """The shape's row: the candidates' medians, then each block's kernels."""
    torch._dynamo.reset()
    q = torch.randn(b, s, h, d, device="cuda", dtype=dtype).transpose(1, 2)
    k = torch.randn(b, h, s, d, device="cuda", dtype=dtype)
    v = torch.randn_like(k)
    scale = calibrated_scale(q, k, v, causal)
    mode = "top_left" if causal else "none"
    inductor = torch.compile(block, dynamic=False)
    fused = torch.compile(block, backend="irfuse", dynamic=False,
                          options={"attention": "irfuse"})  # fmt: skip
    candidates = {
        "cuDNN": lambda q, k, v, s: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
        "kernel, 16-bit out": lambda q, k, v, s: kernel_attention(
            q, k, v, None, d**-0.5, mode, "bs_hd", False, "none"),
        "kernel, fp8 out": lambda q, k, v, s: kernel_attention(
            q, k, v, s, d**-0.5, mode, "bs_hd", False, "static"),
        "kernel, fp8 out, divided": lambda q, k, v, s: kernel_attention(
            q, k, v, s, d**-0.5, mode, "bs_hd", False, "static div"),
        "irfuse block": lambda q, k, v, s: fused(q, k, v, s, causal),
        "Inductor block": lambda q, k, v, s: inductor(q, k, v, s, causal),
    }  # fmt: skip
    times = compare(candidates, rounds, (q, k, v, scale))
    name = f"B{b} H{h} S{s} D{d}{' causal' if causal else ''} (scale {scale.item():.4g})"
    row = [name, *(f"{t:.1f}" for t in times.values()),
           kernels(lambda: fused(q, k, v, scale, causal)),
           kernels(lambda: inductor(q, k, v, scale, causal))]  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", type=int, nargs="+", default=None,
                        help="indices into SHAPES")  # fmt: skip
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    shapes = [SHAPES[i] for i in args.only] if args.only else SHAPES
    rows = [measure(*shape, args.rounds, dtype) for shape in shapes]
    short = {"bfloat16": "bf16", "float16": "fp16"}[args.dtype]
    append_results(
        f"attention's static fp8 epilogue: the kernel alone and in the fused block, {short} "
        "in, us",
        ["shape", "cuDNN", f"kernel, {short} out", "kernel, fp8 out", "kernel, fp8 out, divided",
         "irfuse block",
         "Inductor block", "irfuse block's kernels (us)", "Inductor block's kernels (us)"],
        rows,
        "bench/epilogue_cost.py: q laid out as its projection leaves it, k and v as a cache "
        "holds them, rotating copies, medians of alternating rounds under CUDA graphs; the "
        "kernels from the profiler (outside CUDA graphs), mean us a call.",
    )  # fmt: skip


if __name__ == "__main__":
    main()
