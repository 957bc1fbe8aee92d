"""Head-dim-128 (or 64) prefill: irfuse's Gluon kernel against its Triton kernel and
cuDNN, by query length, so that GLUON_MIN_ROWS (irfuse/lowering/attention_gluon.py) is
measured.

    python bench/prefill_paths.py [--head-dim 128] [--seqs 512 1024 2048 4096] [--rounds 5]

Each row holds B*S at 16384 query rows over 32 heads (a 4096-token prefill of batch 4,
cut shorter or longer), causal top-left and not, bf16, no epilogue, q laid out as its
projection leaves it, the output [B, S, H*D]; then the static fp8 epilogue at the
longest length. The Gluon column runs it at any length (GLUON_MIN_ROWS lifted).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    append_results,
    compare,
    cudnn_attention,
    prefill_flops,
    prefill_inputs,
)

from irfuse.lowering import attention_gluon  # noqa: E402
from irfuse.lowering.attention import kernel_attention  # noqa: E402

TOKENS, HEADS = 16384, 32


def irfuse_prefill(gluon: bool, mode: str, epilogue: str, d: int):
    """kernel_attention on the Gluon path at any length, causal or not, or with it off."""
    patch = {"GLUON_MIN_ROWS": {(d, True): 1, (d, False): 1}} if gluon else {"ENABLED": False}

    def run(q, k, v, scale):
        with mock.patch.multiple(attention_gluon, **patch):
            return kernel_attention(q, k, v, scale if epilogue != "none" else None, d**-0.5,
                                    mode, "bs_hd", False, epilogue)[0]  # fmt: skip

    return run


def bench_row(s: int, d: int, causal: bool, epilogue: str, rounds: int) -> list[str]:
    b = max(1, TOKENS // s)
    q, k, v = prefill_inputs(b, HEADS, s, d)
    scale = torch.tensor([0.02], device="cuda")
    mode = "top_left" if causal else "none"
    cudnn = cudnn_attention(causal)
    candidates = {"cuDNN": lambda q, k, v, scale: cudnn(q, k, v),
                  "Triton": irfuse_prefill(False, mode, epilogue, d),
                  "Gluon": irfuse_prefill(True, mode, epilogue, d)}  # fmt: skip
    # both irfuse paths against each other (the reference ops' own test is the suite's)
    same = (candidates["Gluon"](q, k, v, scale).float()
            - candidates["Triton"](q, k, v, scale).float()).abs().max().item()  # fmt: skip
    times = compare(candidates, rounds, (q, k, v, scale))
    flops = prefill_flops(b, HEADS, s, d, causal)
    cells = [f"{times[n]:.1f} ({flops / times[n] / 1e6:.0f})" for n in candidates]
    label = f"B{b} H{HEADS} S{s} D{d}{' causal' if causal else ''}"
    label += "" if epilogue == "none" else f" + {epilogue} fp8"
    row = [label, *cells, f"{times['cuDNN'] / times['Triton']:.3f}x",
           f"{times['cuDNN'] / times['Gluon']:.3f}x",
           f"{times['Triton'] / times['Gluon']:.3f}x", f"{same:.3g}"]  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--head-dim", type=int, choices=[64, 128], default=128)
    args = parser.parse_args()
    d = args.head_dim
    rows = [bench_row(s, d, causal, "none", args.rounds)
            for s in args.seqs for causal in (True, False)]  # fmt: skip
    rows += [bench_row(max(args.seqs), d, causal, epilogue, args.rounds)
             for epilogue in ("static", "static div") for causal in (True, False)]  # fmt: skip
    append_results(
        f"head-dim-{d} prefill by query length: irfuse's Gluon kernel vs its Triton kernel vs "
        "cuDNN, bf16, us (TFLOP/s)",
        ["shape", "cuDNN", "irfuse Triton", "irfuse Gluon", "Triton x cuDNN", "Gluon x cuDNN",
         "Gluon x Triton", "max abs(Gluon - Triton)"],
        rows,
        "bench/prefill_paths.py: B*S = 16384 query rows, 32 heads; q laid out as its "
        "projection leaves it, the output [B, S, H*D]; the Gluon kernel at every length "
        "(GLUON_MIN_ROWS lifted); the quant rows' outputs fp8 (cuDNN's bf16).",
    )  # fmt: skip


if __name__ == "__main__":
    main()
