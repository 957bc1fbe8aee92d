"""How `attention="auto"` times its candidates against how the benchmarks time them: the
fused kernel, SDPA + irfuse's quant and SDPA alone (irfuse/lowering/autotune.py's
_candidates), timed by auto's own time_candidates (best of 3 short timings) before and
after the benchmark's compare (median of alternating rounds), on one signature each.

    python bench/auto_timing.py [--rounds 5]

Beside them, bench/attention.py's SDPA + quant block compiled by Inductor and by irfuse
keeping SDPA. Probe: it says whether auto's measurement is the benchmark's, where the
thirty-fifth session saw auto measure SDPA + quant below SDPA alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from attention import block  # noqa: E402
from common import append_results, compare  # noqa: E402

from irfuse.lowering import autotune  # noqa: E402

SHAPES = [  # (B, Hq, Hkv, S, D, causal): issue 4's with auto's closest calls
    (4, 32, 32, 4096, 128, True),
    (8, 16, 16, 1024, 64, True),
    (4, 32, 8, 1024, 128, True),
]


def signature(b: int, hq: int, hkv: int, s: int, d: int, causal: bool) -> dict[str, object]:
    return dict(batch=b, heads_q=hq, heads_kv=hkv, seq_q=s, seq_kv=s, head_dim=d,
                head_dim_v=d, dtype="bfloat16", scale=d**-0.5,
                causal="top_left" if causal else "none", mask="none")  # fmt: skip


def blocks(sig: dict[str, object], causal: bool) -> dict[str, Callable[[], object]]:
    """bench/attention.py's block (SDPA, then static fp8 of the [B, S, H*D] output)
    compiled by Inductor and by irfuse keeping SDPA, on auto's example inputs."""
    inputs = autotune.example_inputs(sig)
    scale = torch.tensor([0.02], device="cuda")
    inductor = torch.compile(block, dynamic=False)
    kept = torch.compile(block, backend="irfuse", dynamic=False, options={"attention": "sdpa"})
    return {
        "Inductor block": lambda: inductor(*next(inputs), scale, causal),
        "irfuse sdpa block": lambda: kept(*next(inputs), scale, causal),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for shape in SHAPES:
        b, hq, hkv, s, d, causal = shape
        sig = signature(*shape)
        before = autotune.time_candidates("static", sig)
        times = compare(autotune._candidates("static", sig) | blocks(sig, causal), args.rounds)
        after = autotune.time_candidates("static", sig)
        rows.append([
            f"B{b} H{hq}/{hkv} S{s} D{d}{' causal' if causal else ''}",
            *(f"{ours:.1f} / {theirs:.1f} ({theirs / ours:.3f}x)" for ours, theirs in
              (before, after, (times["fused"], times["sdpa"]))),
            f"{times['sdpa alone']:.1f}", f"{times['Inductor block']:.1f}",
            f"{times['irfuse sdpa block']:.1f}",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    append_results(
        "attention=auto's timing vs the benchmarks': fused / SDPA + static fp8 quant, us",
        ["shape", "auto's timing, first", "auto's timing, after", "compare (medians)",
         "SDPA alone (compare)", "SDPA + quant, Inductor's block", "irfuse's, SDPA kept"],
        rows,
        "bench/auto_timing.py: the candidates of irfuse/lowering/autotune.py (q as its "
        "projection leaves it, k and v as a cache holds them, rotating copies), timed by "
        "auto's time_candidates (best of 3 timings of 20 ms, the fused and unfused in "
        "turn) before and after bench/common.compare (median of alternating rounds of 50 "
        "ms). The blocks: bench/attention.py's SDPA + static fp8 quant compiled by Inductor "
        "and by irfuse with attention='sdpa' (SDPA + irfuse's quant: what auto's unfused "
        "candidate stands for), on the same inputs.",
    )  # fmt: skip


if __name__ == "__main__":
    main()
