"""add + rms_norm + static fp8 quant: irfuse vs eager vs Inductor (bf16, ANCHORS.md).

    python bench/norm_quant.py [--hidden 4096 7168 8192] [--tokens 1 16 256 4096 16384]

GB/s counts bytes moved: x, residual read; residual_out, q written; the weight once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare  # noqa: E402

import irfuse as irfuse_module  # noqa: E402
from irfuse.lowering.runtime import decode, kernel_norm  # noqa: E402

# The kernel the irfuse graph of add_rms_norm_quant runs (checked against its report): the
# sum rounded to bf16 as the graph rounds it, divided by the scale as the graph divides
ADD_NORM_STATIC = "fused_add_rms_norm/fp32/model/static div/rounded_sum"


def add_rms_norm_quant(x, residual, weight, scale):
    h = x + residual
    y = F.rms_norm(h, (h.shape[-1],), weight, 1e-6)
    return (y.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn), h


def check_fp8(q: torch.Tensor, q_ref: torch.Tensor) -> float:
    """Assert equality up to one e4m3 step; return the fraction of values that differ."""
    a, b = q.float(), q_ref.float()
    step = torch.exp2(torch.floor(torch.log2(b.abs().clamp(min=2**-6))) - 3)
    assert bool(((a - b).abs() <= step).all()), "irfuse and Inductor differ by > 1 fp8 step"
    return (a != b).float().mean().item()


def bench_one(hidden: int, tokens: int, inductor, irfuse, rounds: int) -> dict[str, float]:
    torch._dynamo.reset()
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([0.05], device="cuda")
    q_ref, h_ref = inductor(x, r, w, s)
    q, h = irfuse(x, r, w, s)
    assert torch.equal(h, h_ref)
    q_eager, _ = add_rms_norm_quant(x, r, w, s)
    report = irfuse_module.explain(add_rms_norm_quant, x, r, w, s)
    assert report.kernels == [decode(ADD_NORM_STATIC).name], (report.kernels, ADD_NORM_STATIC)
    print(
        f"hidden {hidden} T {tokens}: fp8 values differing by one step: "
        f"irfuse vs Inductor {check_fp8(q, q_ref):.2e}, "
        f"Inductor vs eager {check_fp8(q_ref, q_eager):.2e}",
        flush=True,
    )
    kernel = lambda x, r, w, s: kernel_norm(x, r, w, s, 1e-6, ADD_NORM_STATIC)  # noqa: E731
    candidates = {"eager": add_rms_norm_quant, "inductor": inductor, "irfuse": irfuse}
    return compare({**candidates, "kernel": kernel}, rounds, (x, r, w, s))


def sweep_warps(hidden: int, tokens_list: list[int], rounds: int) -> None:
    """Time the generated kernel alone at each num_warps (how launch_config was chosen)."""
    for tokens in tokens_list:
        times = _sweep_one(hidden, tokens, rounds)
        print(
            f"sweep hidden {hidden} T {tokens}: "
            + ", ".join(f"{k} {v:.2f}us" for k, v in times.items()),
            flush=True,
        )


def _sweep_one(hidden: int, tokens: int, rounds: int) -> dict[str, float]:
    from irfuse.lowering.runtime import launch_config, norm_launch, run_launch

    spec = decode(ADD_NORM_STATIC)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    r, res_out = torch.randn_like(x), torch.empty_like(x)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([0.05], device="cuda")
    out = torch.empty(x.shape, device="cuda", dtype=torch.float8_e4m3fn)
    no_scales = torch.empty(0, device="cuda")

    block = launch_config(tokens, hidden)[0]

    def launch(warps: int):
        def run(x, r, w, s, out, res_out):
            args = (x, r, w, s, out, res_out, no_scales, None, 1e-6, (block, warps))
            run_launch(spec, norm_launch(spec, *args))

        return run

    candidates = {f"{w} warps": launch(w) for w in (2, 4, 8, 16, 32)}
    return compare(candidates, rounds, (x, r, w, s, out, res_out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 4096, 16384])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sweep", action="store_true", help="only sweep num_warps")
    args = parser.parse_args()
    if args.sweep:
        for hidden in args.hidden:
            sweep_warps(hidden, args.tokens, args.rounds)
        return

    inductor = torch.compile(add_rms_norm_quant, dynamic=False)
    irfuse = torch.compile(add_rms_norm_quant, backend="irfuse", dynamic=False)
    rows, raw = [], []
    for hidden in args.hidden:
        for tokens in args.tokens:
            times = bench_one(hidden, tokens, inductor, irfuse, args.rounds)
            moved = tokens * hidden * (2 + 2 + 2 + 1) + hidden * 2
            gbs = {k: moved / (t * 1e-6) / 1e9 for k, t in times.items()}
            raw.append({"hidden": hidden, "tokens": tokens, "us": times, "GB/s": gbs})
            rows.append(
                [
                    str(hidden),
                    str(tokens),
                    f"{times['eager']:.2f}",
                    f"{times['inductor']:.2f}",
                    f"{times['irfuse']:.2f}",
                    f"{times['kernel']:.2f}",
                    f"{gbs['irfuse']:.0f}",
                    f"{times['inductor'] / times['irfuse']:.3f}x",
                ]
            )
            print(rows[-1], flush=True)
    text = append_results(
        "add + rms_norm + static fp8 quant (bf16), us, median of alternating rounds",
        [
            "hidden",
            "T",
            "eager",
            "Inductor",
            "irfuse",
            "irfuse kernel alone",
            "irfuse GB/s",
            "irfuse vs Inductor",
        ],
        rows,
        notes="irfuse = torch.compile(backend='irfuse'); 'kernel alone' = the generated kernel "
        "called directly. All timed under CUDA graphs.",
        raw=raw,
        json_path=args.json,
    )
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
    main()
