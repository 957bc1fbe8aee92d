"""Host time per call: compiled blocks where the GPU work is a few microseconds.

    python bench/host_time.py [--calls 2000] [--rounds 3]

Every other benchmark here replays kernels from CUDA graphs, which hides what a call
costs the host. This one times back-to-back calls with one synchronisation at the end
(median of alternating rounds), for blocks whose GPU work is small, so the figure is
the host's: the dispatcher, the runtime op's Python, the Triton launch, Inductor's
wrapper, dynamo's guards. Blocks: add + HF RMSNorm (module eps) + static fp8 at 16
tokens, hidden 4096, compiled static, with `dynamic=True` (which makes the module's eps
and the hidden size symbolic too), with `reduce-overhead`, and with only the token count
marked dynamic (as a recompile's automatic dynamic shapes make it); add + `F.rms_norm` +
dynamic per-tensor fp8 (two kernels), compiled static; and the norm through
`torch.ops.irfuse.kernel_norm` alone. Also a decode step's attention + static fp8 (one
query token per sequence, GQA), by Inductor (SDPA and its quant) and by irfuse with the
fused kernel forced. irfuse's rows launch its kernels from Inductor's wrapper (the default
`graph_launch="all"`), or, where a row says `graph_launch=static`, through its runtime ops
wherever that mode does (an eps read at run time, a symbolic token count, two launches,
the attention: `kernel_norm`, `kernel_attention`).
On a CPU machine (with TRITON_INTERPRET=1) it runs the interpreter at hidden 64: a smoke
run whose numbers mean nothing, and it appends no table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import append_results  # noqa: E402

from tests import models  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
KERNEL = "fused_add_rms_norm/plain/model/static/rounded_sum"


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def host_us(fns: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, float]:
    """Median over rounds of the mean wall time per call (us), candidates alternating."""
    for fn in fns.values():  # compiles, warms up caches and CUDA graphs
        for _ in range(3):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            _sync()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            _sync()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    torch._inductor.config.fx_graph_cache = False  # every compile runs irfuse's pass
    # every candidate compiles the block's forward: past the default limit of 8 compiled
    # graphs per function, dynamo would run the later candidates eagerly
    torch._dynamo.config.cache_size_limit = 64
    hidden = 4096 if CUDA else 64
    block = models.AddNormQuant(hidden).to(DEVICE, torch.bfloat16)
    x = torch.randn(args.tokens, hidden, device=DEVICE, dtype=torch.bfloat16)
    scale = torch.tensor([0.05], device=DEVICE)
    fns: dict[str, Callable[[], object]] = {}
    weight = block.norm.weight.detach()
    static, dynamic = {"dynamic": False}, {"dynamic": True}
    graphs = {"dynamic": False, "mode": "reduce-overhead"}
    runtime_ops = {"options": {"graph_launch": "static"}}  # the default before "all"
    x_marked = x.clone()  # its token count marked dynamic (dim 0 only, unlike dynamic=True)
    torch._dynamo.mark_dynamic(x_marked, 0)
    candidates = [  # (label, backend, compile kwargs, x)
        ("inductor, static", "inductor", static, x),
        ("inductor, dynamic=True", "inductor", dynamic, x),
        ("inductor, reduce-overhead", "inductor", graphs, x),
        ("irfuse, static", "irfuse", static, x),
        ("irfuse, dynamic=True", "irfuse", dynamic, x),
        ("irfuse, dynamic=True, graph_launch=static", "irfuse", {**dynamic, **runtime_ops}, x),
        ("irfuse, reduce-overhead", "irfuse", graphs, x),
        ("inductor, token count marked dynamic", "inductor", {}, x_marked),
        ("irfuse, token count marked dynamic", "irfuse", {}, x_marked),
        ("irfuse, token count marked dynamic, graph_launch=static", "irfuse", runtime_ops,
         x_marked),
    ]  # fmt: skip
    for label, backend, kwargs, x_in in candidates:
        if "mode" in kwargs and not CUDA:
            continue
        compiled = torch.compile(block, backend=backend, **kwargs)
        fns[label] = lambda c=compiled, x_in=x_in: c(x_in, x_in, scale)
    per_tensor = "add + rms_norm + per-tensor fp8 (two kernels), static"
    for label, backend, options in (
        ("inductor", "inductor", None),
        ("irfuse", "irfuse", None),
        ("irfuse, graph_launch=static", "irfuse", {"graph_launch": "static"}),
    ):
        compiled = torch.compile(_add_norm_per_tensor_quant, backend=backend, options=options)
        fns[f"{label}, {per_tensor}"] = lambda c=compiled: c(x, x, weight)
    fns["torch.ops.irfuse.kernel_norm alone"] = lambda: torch.ops.irfuse.kernel_norm(
        x, x, weight, scale, 1e-6, KERNEL
    )
    fns["torch.add(x, x), for scale"] = lambda: torch.add(x, x)
    fns.update(_attention_candidates(args.tokens))
    with torch.no_grad():
        results = host_us(fns, args.calls if CUDA else 3, args.rounds if CUDA else 1)
    rows = [[name, f"{us:.1f}"] for name, us in results.items()]
    for row in rows:
        print(" | ".join(row))
    if CUDA:
        append_results(
            f"Host time per call: add + LlamaRMSNorm + static fp8, T={args.tokens}, "
            f"hidden {hidden}, bf16; decode attention + static fp8, batch {args.tokens}, "
            f"Hq 32 / Hkv 8, 1024 keys, D 128 (back-to-back calls, one sync)",
            ["candidate", "us / call"],
            rows,
        )


def _add_norm_per_tensor_quant(x, residual, weight):
    """Residual add, F.rms_norm and a dynamic per-tensor fp8 quant, as PyTorch code."""
    h = x + residual
    y = F.rms_norm(h, (h.shape[-1],), weight, 1e-6).float()
    s = (y.abs().amax() / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (y / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s, h


def _decode_attention_quant(q, k, v, scale):
    """One decode step's attention (GQA) and the fp8 quant before o_proj."""
    b, h, s, d = q.shape
    o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return models.static_quant(o.transpose(1, 2).reshape(b, s, h * d), scale)


def _attention_candidates(batch: int) -> dict[str, Callable[[], object]]:
    """The decode attention block compiled static by Inductor (SDPA + its quant) and by
    irfuse with the fused kernel forced (from Inductor's wrapper, or through
    kernel_attention with graph_launch=static)."""
    heads, kv_heads, keys, dim = (32, 8, 1024, 128) if CUDA else (4, 2, 16, 16)
    q = torch.randn(batch, heads, 1, dim, device=DEVICE, dtype=torch.bfloat16)
    k = torch.randn(batch, kv_heads, keys, dim, device=DEVICE, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    scale = torch.tensor([0.05], device=DEVICE)
    candidates = {}
    fused = {"attention": "irfuse"}
    block = "decode attention + quant"
    for label, backend, options in (
        (f"inductor, {block}", "inductor", None),
        (f"irfuse, {block} (fused)", "irfuse", fused),
        (f"irfuse, {block} (fused), graph_launch=static", "irfuse",
         {**fused, "graph_launch": "static"}),
    ):  # fmt: skip
        compiled = torch.compile(_decode_attention_quant, backend=backend, options=options)
        candidates[label] = lambda c=compiled: c(q, k, v, scale)
    return candidates


if __name__ == "__main__":
    main()
