"""Attention + static fp8 output quant: cuDNN SDPA vs irfuse's Triton attention, bf16.

    python bench/attention.py [--rounds 5] [--only I ...] [--per-token] [--padding-mask]
        [--causal-mask] [--static-cache] [--dynamic] [--padded]

Candidates, timed in one process under CUDA graphs, alternating over rounds (medians):
SDPA alone (the backend it picked, read from its kernels' names: cuDNN by default on
H100/H200 where it takes the shape), irfuse's kernel alone (bf16 out; with a mask and no
--static-cache, as a direct call: no mask summary computed ahead), the same with the Gluon
prefill off (the Triton kernel: where the Gluon one does not run, the same), the block
(SDPA -> [B,S,H*D] -> fp8 quant) compiled by Inductor, by irfuse with attention=irfuse
(fused kernel) and by irfuse with attention=auto (its measured choice). --dynamic
compiles the blocks with the batch and key count dynamic (mark_dynamic), as a decode
step over a growing KV cache is compiled once.
q is laid out as a model's projection leaves it, [B, S, H, D] in memory; k, v as a KV
cache holds them, [B, H, S, D].
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare  # noqa: E402

from irfuse.lowering import attention_gluon, autotune  # noqa: E402
from irfuse.lowering.attention import kernel_attention  # noqa: E402
from irfuse.pipeline import capture_reports  # noqa: E402

SHAPES = [  # (B, Hq, Hkv, Sq, Skv, D, causal); --only I selects (of the list in use)
    (4, 32, 32, 4096, 4096, 128, True),
    (4, 32, 32, 4096, 4096, 128, False),
    (1, 32, 32, 16384, 16384, 128, True),
    (8, 16, 16, 1024, 1024, 64, True),
    (4, 32, 32, 4096, 4096, 64, False),
    (32, 32, 8, 1, 4096, 128, False),  # decode
    (4, 32, 8, 1024, 1024, 128, True),  # beyond the shapes: a short GQA prefill
    (4, 16, 8, 4096, 4096, 256, True),  # beyond them too: head dim 256 (Gemma-style)
]
DECODE_SHAPES = [  # --per-token
    (32, 32, 8, 1, 4096, 128, False),
    (8, 32, 8, 1, 16384, 128, False),
    (64, 32, 8, 1, 1024, 128, False),
    (32, 32, 8, 4, 4096, 128, False),  # 4 query tokens (speculative decode)
]
PADDED_SHAPES = [  # --padded: head dims short of a power of two (tiles of 128)
    (4, 32, 32, 4096, 4096, 96, True),  # Phi-3-mini's heads
    (8, 32, 32, 1024, 1024, 80, True),  # Phi-2's
    (32, 32, 32, 1, 4096, 96, False),  # decode
]
MASKED_SHAPES = [  # --padding-mask: a bool [B, 1, 1, Skv] mask, no causal
    (4, 32, 32, 4096, 4096, 128, False),
    (8, 16, 16, 1024, 1024, 64, False),
    (4, 32, 32, 4096, 4096, 64, False),
    (32, 32, 8, 1, 4096, 128, False),
]


STATIC_CACHE_SHAPES = [  # --static-cache: decode against a partly filled [B, 1, 1, Skv] cache
    (32, 32, 8, 1, 4096, 128, False),
    (8, 32, 8, 1, 16384, 128, False),
]


CAUSAL_MASK_SHAPES = [  # --causal-mask: a bool [B, 1, S, S] causal + padding mask
    (4, 32, 32, 4096, 4096, 128, False),
    (8, 16, 16, 1024, 1024, 64, False),
    (4, 32, 32, 4096, 4096, 64, False),
]


def causal_padded_mask(b: int, s: int) -> torch.Tensor:
    """What a model passes for a right-padded batch: causal, and every other sequence's
    last 10% of keys masked (every query still sees key 0)."""
    keep = torch.ones(s, s, dtype=torch.bool, device="cuda").tril().expand(b, 1, s, s).clone()
    keep[1::2, ..., s * 9 // 10 :] = False
    return keep


def padding_mask(b: int, skv: int) -> torch.Tensor:
    """Every other sequence padded: its last 10% of keys masked."""
    keep = torch.ones(b, 1, 1, skv, dtype=torch.bool, device="cuda")
    keep[1::2, ..., skv * 9 // 10 :] = False
    return keep


def static_cache_mask(b: int, skv: int) -> torch.Tensor:
    """A static KV cache of Skv slots filled to different lengths, from Skv/8 to Skv/2
    (31% on average): the mask hides the unfilled slots."""
    keep = torch.zeros(b, 1, 1, skv, dtype=torch.bool, device="cuda")
    for i in range(b):
        keep[i, ..., : skv // 8 + skv * 3 // 8 * i // max(b - 1, 1)] = True
    return keep


def _no_host(*_: object) -> bool:
    return False


def calibrated_scale(q, k, v, causal: bool) -> torch.Tensor:
    """A static fp8 scale as calibration gives one: the attention output's amax / 448."""
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    return (o.float().abs().amax() / 448).reshape(1)


def block(q, k, v, scale, causal: bool, mask=None):
    b, h, s, d = q.shape
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=h != k.shape[1]
    )
    o = o.transpose(1, 2).reshape(b, s, h * d)
    return (o.float() / scale).clamp(-448, 448).to(torch.float8_e4m3fn)


def per_token_block(q, k, v, scale, causal: bool, mask=None):
    """The decode form: the [B*S, H*D] rows quantized per token (scale unused)."""
    b, h, s, d = q.shape
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=h != k.shape[1]
    )
    xf = o.transpose(1, 2).reshape(b * s, h * d).float()
    s8 = (xf.abs().amax(dim=-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s8).clamp(-448, 448).to(torch.float8_e4m3fn), s8


# SDPA's backends, told apart by the kernels they launch
SDPA_KERNELS = (("cudnn", "cuDNN"), ("flash", "flash"), ("fmha", "efficient"))


def sdpa_backend(sdpa) -> str:
    """Which backend SDPA ran in one call of `sdpa` (from its GPU kernels' names)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        sdpa()
        torch.cuda.synchronize()
    names = " ".join(event.name for event in prof.events()).lower()
    return next((backend for key, backend in SDPA_KERNELS if key in names), "math")


def attention_fused(reports) -> bool:
    return any(report.fused.get("fuse-attention-quant") for report in reports)


def triton_prefill(*args):
    """kernel_attention with the Gluon prefill off (irfuse/lowering/attention_gluon.py)."""
    with mock.patch.object(attention_gluon, "ENABLED", False):
        return kernel_attention(*args)


def bench_shape(
    shape, rounds: int, block=block, masked: str | None = None, dynamic: bool = False
) -> tuple[dict[str, float], str, str]:
    b, hq, hkv, sq, skv, d, causal = shape
    torch._dynamo.reset()
    # laid out as a model leaves them (as attention=auto times them): q as its projection
    # does ([B, S, H, D] memory, viewed [B, H, S, D]), so that SDPA's output (which follows
    # q's layout) views as [B, S, H*D] with no copy and Inductor's quant reads it
    # contiguous; k and v as a KV cache holds them ([B, H, S, D] memory; HF's DynamicCache
    # copies a prefill's too)
    q = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    k = torch.randn(b, hkv, skv, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    s = calibrated_scale(q, k, v, causal)
    mask = {None: lambda: None, "padding": lambda: padding_mask(b, skv),
            "causal": lambda: causal_padded_mask(b, sq),
            "static": lambda: static_cache_mask(b, skv)}[masked]()  # fmt: skip
    # a static cache's kernel row reads the summary a model computes once for its layers
    summary = (torch.ops.irfuse.kernel_attention_mask_summary(q, k, mask)
               if masked == "static" else None)  # fmt: skip
    mode = "top_left" if causal else "none"
    if dynamic:  # batch and key count
        for t, dims in ((q, (0,)), (k, (0, 2)), (v, (0, 2)), (mask, (0, 3))):
            for dim in dims if t is not None else ():
                torch._dynamo.mark_dynamic(t, dim)
    static = None if dynamic else False
    inductor = torch.compile(block, dynamic=static)
    fused = torch.compile(block, backend="irfuse", dynamic=static,
                          options={"attention": "irfuse", "fx_graph_cache": False})  # fmt: skip
    # Inductor's cache off: the pass runs and reports. The blocks are timed replayed from
    # CUDA graphs, where the host pays no launches: auto decides as it does under them.
    with capture_reports() as reports, mock.patch.object(autotune, "host_pays", _no_host):
        auto = torch.compile(block, backend="irfuse", dynamic=static,
                             options={"fx_graph_cache": False})  # fmt: skip
        auto(q, k, v, s, causal, mask)
    choice = "fused" if attention_fused(reports) else "sdpa"
    for report in reports:  # why auto kept SDPA
        for rejected in report.rejected:
            if rejected["pass"] == "fuse-attention-quant":
                print("auto:", rejected["reason"], flush=True)
    with capture_reports() as fused_reports:
        got = fused(q, k, v, s, causal, mask)
    if not attention_fused(fused_reports):
        # the "irfuse fused" column would time the unfused graph
        reasons = [r["reason"] for report in fused_reports for r in report.rejected]
        raise SystemExit(f"attention='irfuse' did not fuse {shape}: {reasons}")
    expected = block(q, k, v, s, causal, mask)
    if block is per_token_block:
        expected, got = expected[0].float() * expected[1], got[0].float() * got[1]
    else:
        expected, got = expected.float() * s, got.float() * s
    span = expected.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)
    torch.testing.assert_close(got / span, expected / span, atol=0.1, rtol=0.1)

    def sdpa(q, k, v, s, m):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=m, is_causal=causal, enable_gqa=hq != hkv)  # fmt: skip

    # over rotating copies of the inputs (common.compare): each layer reads its own
    times = compare({
        "sdpa": sdpa,
        "irfuse_kernel": lambda q, k, v, s, m: kernel_attention(
            q, k, v, None, d**-0.5, mode, "bs_hd", False, "none", m, summary),
        "triton_kernel": lambda q, k, v, s, m: triton_prefill(
            q, k, v, None, d**-0.5, mode, "bs_hd", False, "none", m, summary),
        "inductor_block": lambda q, k, v, s, m: inductor(q, k, v, s, causal, m),
        "irfuse_fused_block": lambda q, k, v, s, m: fused(q, k, v, s, causal, m),
        "irfuse_auto_block": lambda q, k, v, s, m: auto(q, k, v, s, causal, m),
    }, rounds, (q, k, v, s, mask))  # fmt: skip
    return times, choice, sdpa_backend(lambda: sdpa(q, k, v, s, mask))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--only", type=int, nargs="+", default=None, help="indices into the shape list"
    )
    shape_list = parser.add_mutually_exclusive_group()  # each picks its own shapes
    shape_list.add_argument("--per-token", action="store_true", help="decode + per-token fp8")
    shape_list.add_argument("--padding-mask", action="store_true", help="a bool padding mask")
    shape_list.add_argument("--causal-mask", action="store_true", help="a bool causal 4-D mask")
    shape_list.add_argument(
        "--static-cache", action="store_true", help="decode, a partly filled static KV cache"
    )
    shape_list.add_argument("--padded", action="store_true", help="head dims 80 and 96")
    parser.add_argument("--dynamic", action="store_true", help="batch and key count dynamic")
    args = parser.parse_args()
    rows, raw = [], []
    masked = "padding" if args.padding_mask else "causal" if args.causal_mask else None
    masked = "static" if args.static_cache else masked
    shapes = DECODE_SHAPES if args.per_token else PADDED_SHAPES if args.padded else SHAPES
    if masked:
        shapes = {"padding": MASKED_SHAPES, "causal": CAUSAL_MASK_SHAPES,
                  "static": STATIC_CACHE_SHAPES}[masked]  # fmt: skip
    shapes = [shapes[i] for i in args.only] if args.only else shapes
    for shape in shapes:
        b, hq, hkv, sq, skv, d, causal = shape
        times, choice, backend = bench_shape(
            shape, args.rounds, per_token_block if args.per_token else block, masked, args.dynamic
        )
        flops = 4 * b * hq * sq * skv * d / (2 if causal or masked == "causal" else 1)
        tflops = {k: flops / (t * 1e-6) / 1e12 for k, t in times.items()}
        raw.append({"shape": shape, "us": times, "TFLOP/s": tflops, "auto": choice,
                    "sdpa": backend})  # fmt: skip
        name = f"B{b} H{hq}/{hkv} S{sq}x{skv} D{d}{' causal' if causal else ''}"
        rows.append([
            name, f"{times['sdpa']:.1f} ({tflops['sdpa']:.0f}) {backend}",
            f"{times['irfuse_kernel']:.1f} ({tflops['irfuse_kernel']:.0f})",
            f"{times['sdpa'] / times['irfuse_kernel']:.3f}x",
            f"{times['sdpa'] / times['triton_kernel']:.3f}x",
            f"{times['inductor_block']:.1f}", f"{times['irfuse_fused_block']:.1f}",
            f"{times['irfuse_auto_block']:.1f} ({choice})",
            f"{times['inductor_block'] / times['irfuse_auto_block']:.3f}x",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    what = (
        "per-token fp8 of the [B*S,H*D] rows"
        if args.per_token
        else "static fp8 of the [B,S,H*D] output, divided by a calibrated scale (amax / 448)"
    )
    if masked == "padding":
        what += "; a bool padding mask [B,1,1,Skv], SDPA runs its masked backend"
    if masked == "causal":
        what += "; a bool causal + padding mask [B,1,S,S] (flops counted causal)"
    if masked == "static":
        what += (
            "; a static KV cache filled from Skv/8 to Skv/2, a bool [B,1,1,Skv] mask (flops "
            "counted over every slot); the kernel row reads a mask summary computed once, the "
            "blocks compute theirs per call"
        )
    if args.dynamic:
        what += "; batch and key count dynamic (mark_dynamic), compiled once"
    if args.padded:
        what += "; head dims 80 / 96 on tiles of 128 (flops counted at the real head dim)"
    text = append_results(
        f"attention (+ {what}), bf16, us (TFLOP/s)",
        ["shape", "SDPA (its backend)", "irfuse kernel",
         "kernel vs SDPA", "Triton kernel vs SDPA", "SDPA+quant (Inductor)", "irfuse fused",
         "irfuse auto (choice)", "auto vs Inductor"],
        rows,
        notes="decode rows count flops the same way (Sq = 1).",
        raw=raw, json_path=args.json,
    )  # fmt: skip
    print(text)


if __name__ == "__main__":
    main()
