"""Head-dim-128 (or 64) prefill: irfuse's Gluon kernel against its Triton kernel and
cuDNN, by query length, so that the Gluon kernel's plans (irfuse/lowering/attention_gluon.py)
are measured.

    python bench/prefill_paths.py [--head-dim 128] [--seqs 512 1024 2048 4096] [--rounds 5]
        [--configs 2:240:2:128 ...] [--tokens 16384] [--heads 32] [--no-epilogues]
        [--compile-only]

Each row holds B*S at 16384 query rows (--tokens) over 32 heads (--heads): a 4096-token
prefill of batch 4, cut shorter or longer, causal top-left and not, bf16, no epilogue,
q laid out as its projection leaves it, the output [B, S, H*D]; then the static fp8
epilogue at the longest length. The Gluon columns run it at any length (PLANS' lengths
lifted), one per config (`--configs`: consumer warp groups, their registers, K / V
stages, keys a tile, then optionally s<heads a sweep> (s1: one head at a time) and p1 /
p0 (persistent or a program a work item), else irfuse's choices; default irfuse's
config); `--compile-only` compiles the configs for sm_90 on any machine and prints their
registers, spills and shared memory.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import NamedTuple
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

from irfuse.lowering import attention, attention_gluon  # noqa: E402
from irfuse.lowering.attention import kernel_attention  # noqa: E402

TOKENS, HEADS = 16384, 32


class Variant(NamedTuple):
    config: attention_gluon.GluonConfig
    heads_per_sweep: int | None  # forced (1: one head at a time), else irfuse's choice
    persistent: bool | None  # forced, else irfuse's plan's (attention_gluon.PLANS), or not


def parse_config(text: str) -> Variant:
    """ "consumers:registers:stages:block_n[:s<heads a sweep>][:p<0 or 1>]", e.g.
    2:240:2:128 or 3:160:2:128:s1:p1."""
    numbers, options = text.split(":")[:4], dict((o[0], int(o[1:])) for o in text.split(":")[4:])
    persistent = bool(options["p"]) if "p" in options else None
    return Variant(attention_gluon.GluonConfig(*map(int, numbers)), options.get("s"), persistent)


def label(variant: Variant) -> str:
    options = [] if variant.heads_per_sweep is None else [f"s{variant.heads_per_sweep}"]
    options += [] if variant.persistent is None else [f"p{int(variant.persistent)}"]
    return ":".join(map(str, [*variant.config, *options]))


def irfuse_prefill(variant: Variant | None, mode: str, epilogue: str, d: int, rows: int):
    """kernel_attention on the Gluon path with `variant` at any length, causal or not, or
    (variant None) with it off (q of `rows` query rows)."""
    patches = [mock.patch.object(attention_gluon, "ENABLED", False)]
    if variant is not None:
        causal = mode != "none"
        persistent = variant.persistent
        if persistent is None:  # irfuse's plan's at this length, else not
            planned = attention_gluon.plan(d, causal, rows)
            persistent = planned is not None and planned.persistent
        only = attention_gluon.Plan(1, variant.config, persistent)
        patches = [mock.patch.dict(attention_gluon.PLANS, {(d, causal): (only,)})]
        if variant.heads_per_sweep is not None:
            sweep = variant.heads_per_sweep
            patches.append(mock.patch.object(attention, "heads_per_sweep", lambda *a: sweep))

    def run(q, k, v, scale):
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            return kernel_attention(q, k, v, scale if epilogue != "none" else None, d**-0.5,
                                    mode, "bs_hd", False, epilogue)[0]  # fmt: skip

    return run


def bench_row(
    s: int, d: int, causal: bool, epilogue: str, configs: list, rounds: int, tokens: int,
    heads: int,
) -> list:  # fmt: skip
    b = max(1, tokens // s)
    q, k, v = prefill_inputs(b, heads, s, d)
    scale = torch.tensor([0.02], device="cuda")
    mode = "top_left" if causal else "none"
    cudnn = cudnn_attention(causal)
    candidates = {"cuDNN": lambda q, k, v, scale: cudnn(q, k, v),
                  "Triton": irfuse_prefill(None, mode, epilogue, d, s)}  # fmt: skip
    gluons = [f"Gluon {label(config)}" for config in configs]
    candidates |= {name: irfuse_prefill(config, mode, epilogue, d, s)
                   for name, config in zip(gluons, configs, strict=True)}  # fmt: skip
    # the irfuse paths against each other (the reference ops' own test is the suite's)
    triton_out = candidates["Triton"](q, k, v, scale).float()
    same = [(candidates[name](q, k, v, scale).float() - triton_out).abs().max().item()
            for name in gluons]  # fmt: skip
    times = compare(candidates, rounds, (q, k, v, scale))
    flops = prefill_flops(b, heads, s, d, causal)
    cells = [f"{times[n]:.1f} ({flops / times[n] / 1e6:.0f})" for n in candidates]
    name = f"B{b} H{heads} S{s} D{d}{' causal' if causal else ''}"
    name += "" if epilogue == "none" else f" + {epilogue} fp8"
    row = [name, *cells, f"{times['cuDNN'] / times['Triton']:.3f}x",
           *[f"{times['cuDNN'] / times[n]:.3f}x" for n in gluons],
           *[f"{times['Triton'] / times[n]:.3f}x" for n in gluons],
           " / ".join(f"{x:.3g}" for x in same)]  # fmt: skip
    print(row, flush=True)
    return row


def compile_only(d: int, configs: list) -> None:
    """Each config compiled for sm_90 (causal and not, no epilogue): registers, stack
    (spills) and shared memory, as cuobjdump reads them. Run it without TRITON_INTERPRET."""
    from sass import resources

    for variant in configs:
        for causal in (0, 1):
            compiled = attention_gluon.compile_sm90("none", d, causal, variant.config)
            print(f"D{d} {label(variant)} causal={causal}: {resources(compiled)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--head-dim", type=int, choices=[64, 128], default=128)
    parser.add_argument("--configs", type=parse_config, nargs="+", default=None,
                        help="Gluon configs consumers:registers:stages:block_n (default: "
                        "irfuse's for the head dim)")  # fmt: skip
    parser.add_argument("--tokens", type=int, default=TOKENS, help="B * S of each row")
    parser.add_argument("--heads", type=int, default=HEADS)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--no-epilogues", action="store_true")
    args = parser.parse_args()
    d = args.head_dim
    configs = args.configs or [Variant(attention_gluon.PLANS[d, False][-1].config, None, None)]
    if args.compile_only:
        compile_only(d, configs)
        return
    sizes = (args.rounds, args.tokens, args.heads)
    rows = [bench_row(s, d, causal, "none", configs, *sizes)
            for s in args.seqs for causal in (True, False)]  # fmt: skip
    epilogues = () if args.no_epilogues else ("static", "static div")
    rows += [bench_row(max(args.seqs), d, causal, epilogue, configs, *sizes)
             for epilogue in epilogues for causal in (True, False)]  # fmt: skip
    gluons = [f"Gluon {label(config)}" for config in configs]
    append_results(
        f"head-dim-{d} prefill by query length: irfuse's Gluon kernel vs its Triton kernel vs "
        "cuDNN, bf16, us (TFLOP/s)",
        ["shape", "cuDNN", "irfuse Triton", *gluons, "Triton x cuDNN",
         *[f"{n} x cuDNN" for n in gluons], *[f"{n} x Triton" for n in gluons],
         "max abs(Gluon - Triton)"],
        rows,
        f"bench/prefill_paths.py: B*S = {args.tokens} query rows, {args.heads} heads; q laid "
        "out as its projection leaves it, the output [B, S, H*D]; Gluon configs consumers:"
        "registers:stages:block_n[:s<heads a sweep>][:p<persistent>] (else irfuse's "
        "choices), each at every length (PLANS' lengths lifted); the quant rows' outputs fp8 "
        "(cuDNN's bf16).",
    )  # fmt: skip


if __name__ == "__main__":
    main()
