"""Every quant scheme, fused after add + rms_norm and standalone: irfuse vs eager vs
Inductor compiling the same PyTorch expression (bf16 in, ANCHORS.md).

    python bench/quant_schemes.py [--hidden 4096 7168 8192] [--tokens 1 16 256 4096 16384]
        [--schemes per_token ... | none]
        [--standalone | --no-residual | --sandwich [plain] | --post-norm]
        [--keep-value] [--as-written]

irfuse = torch.compile of the model written with torch.ops.irfuse.* (imported and fused
by irfuse's passes; the graph then calls the generated kernel); with --as-written, of the
very PyTorch function Inductor compiles (HF RMSNorm and the quant idiom, raised by
irfuse's passes; the graph's add rounds the sum, so irfuse's fused add does too). GB/s
counts the bytes the fused op must move: inputs read once, outputs and scales written once;
the next column is that as a fraction of x.clone()'s GB/s timed in the same rounds, over
the same rotating inputs (the issue's "% of copy bandwidth").
--sandwich: Gemma's norm, the residual add, the next norm and the quant, as written (both
compile the same PyTorch; irfuse makes one kernel of it, fuse-sandwich-norm); `--sandwich
plain` the same with HF's plain-weight norm (GLM-4's). --post-norm: OLMo 2's norm, the
residual add and the quant of the sum, as written (fuse-norm-add-quant: one kernel).
Schemes "per_token in_dtype", "per_tensor in_dtype" and "per_group 128 in_dtype" are
torchao's per-row, per-tensor and 1x128 quants, which irfuse raises from the graph's
PyTorch in every mode (no torch.ops.irfuse op computes them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
import irfuse.ops as ref  # noqa: E402
from irfuse.ops.quant import e2m1_codes, swizzle_block_scales  # noqa: E402
from irfuse.pipeline import capture_reports  # noqa: E402

FP8 = torch.float8_e4m3fn
SCHEMES = ("per_token", "per_group 128", "per_group 128 col ue8m0", "nvfp4", "static", "per_tensor")
# "none": the norm (or add + norm) with no quant, irfuse's kernel (what a direct
# torch.ops.irfuse.rms_norm call runs) against Inductor's (run it with --schemes none)
NO_QUANT = "none"


def rms_norm_torch(h, weight):
    """RMSNorm as model code writes it (HF style), eps 1e-6."""
    v = h.float()
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
    return weight * v.to(h.dtype)


def gemma_norm_torch(h, weight):
    """Gemma3RMSNorm as model code writes it, eps 1e-6."""
    v = h.float()
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
    return (v * (1.0 + weight.float())).type_as(h)


def olmo2_norm_torch(h, weight):
    """Olmo2RMSNorm as model code writes it (the weight multiplied in fp32), eps 1e-6."""
    v = h.float()
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
    return (weight * v).to(h.dtype)


def post_norm_torch(scheme, x, residual, weight, scale):
    """OLMo 2's post-norm, the residual add, and the next projection's quant of the sum."""
    h = residual + olmo2_norm_torch(x, weight)
    return (*quant_torch(scheme, h, scale), h)


def sandwich_torch(form, scheme, x, residual, w_post, w_pre, scale):
    """A post-attention norm, the residual add, the next norm + quant (Gemma's norms, or
    HF's plain-weight ones)."""
    norm = gemma_norm_torch if form == "gemma" else rms_norm_torch
    h = residual + norm(x, w_post)
    return (*quant_torch(scheme, norm(h, w_pre), scale), h)


def quant_torch(scheme: str, y: torch.Tensor, scale: torch.Tensor):
    """The scheme in plain PyTorch (NUMERICS.md), for eager and Inductor."""
    kind, *flags = scheme.split()
    if kind == NO_QUANT:
        return (y,)
    yf = y.float()
    if kind == "static":
        return (yf / scale).clamp(-448, 448).to(FP8), scale
    if kind == "per_token" and "in_dtype" in flags:  # torchao's: in y's dtype, no floor
        s = (y.abs().amax(-1, keepdim=True) / 448).float()
        return (yf / s).clamp(-448, 448).to(FP8), s
    if kind == "per_tensor" and "in_dtype" in flags:  # torchao's default
        s = (y.abs().amax(dim=(0, 1), keepdim=True) / 448).float()
        return (yf / s).clamp(-448, 448).to(FP8), s
    if kind == "per_group" and "in_dtype" in flags:  # torchao's 1x128, repeated
        t, k = y.shape
        s = (y.view(t, k // 128, 128).abs().amax(-1, keepdim=True) / 448).view(t, -1).float()
        return (yf / s.repeat_interleave(128, dim=-1)).clamp(-448, 448).to(FP8), s
    if kind == "per_token":
        s = (yf.abs().amax(-1, keepdim=True) / 448).clamp(min=1 / (448 * 512))
        return (yf / s).clamp(-448, 448).to(FP8), s
    if kind == "per_tensor":
        s = (yf.abs().amax() / 448).clamp(min=1 / (448 * 512)).reshape(1)
        return (yf / s).clamp(-448, 448).to(FP8), s
    if kind == "per_group":
        t, k = y.shape
        g = yf.view(t, k // 128, 128)
        s = g.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448
        if "ue8m0" in flags:
            s = torch.exp2(torch.ceil(torch.log2(s)))
        q = (g / s).clamp(-448, 448).to(FP8).view(t, k)
        s = s.view(t, k // 128)
        return q, (s.t().contiguous().t() if "col" in flags else s)
    m, n = y.shape
    blocks = yf.view(m, n // 16, 16)
    sf = (scale * blocks.abs().amax(-1, keepdim=True) / 6).clamp(-448, 448).to(FP8)
    sf_f = sf.float()
    inv = torch.where(sf_f != 0, scale / sf_f, torch.zeros_like(sf_f))
    codes = e2m1_codes(blocks * inv).view(m, n)
    return codes[:, 0::2] | (codes[:, 1::2] << 4), swizzle_block_scales(sf.view(m, n // 16))


def quant_irfuse(scheme: str, y: torch.Tensor, scale: torch.Tensor):
    kind, *flags = scheme.split()
    if kind == NO_QUANT:
        return (y,)
    if kind == "static":
        return ref.static_fp8_quant(y, scale), scale
    if "in_dtype" in flags:  # no torch.ops.irfuse form: the graph's, raised
        return quant_torch(scheme, y, scale)
    if kind == "per_token":
        return ref.per_token_fp8_quant(y)
    if kind == "per_tensor":
        return ref.per_tensor_fp8_quant(y)
    if kind == "per_group":
        return ref.per_group_fp8_quant(y, 128, "col" in flags, "ue8m0" in flags)
    return ref.nvfp4_quant(y, scale)


def fused_torch(scheme, x, residual, weight, scale, keep_value=False):
    """add + rms_norm + quant; without a residual, rms_norm + quant; `keep_value`: the
    normalised value is an output too (read unquantized elsewhere)."""
    if residual is None:
        y, residual_out = rms_norm_torch(x, weight), ()
    else:
        h = x + residual
        y, residual_out = rms_norm_torch(h, weight), (h,)
    return (*quant_torch(scheme, y, scale), *residual_out, *((y,) if keep_value else ()))


def fused_irfuse(scheme, x, residual, weight, scale, keep_value=False):
    if residual is None:
        y, residual_out = ref.rms_norm(x, weight, 1e-6), ()
    else:
        y, h = ref.fused_add_rms_norm(x, residual, weight, 1e-6)
        residual_out = (h,)
    return (*quant_irfuse(scheme, y, scale), *residual_out, *((y,) if keep_value else ()))


def norm_quant_case(scheme: str, hidden: int, tokens: int) -> tuple[tuple, Callable]:
    """The norm probes' inputs, bf16 x [tokens, hidden], its weight and a scale (nvfp4's
    global scale, or a per-token upper bound), and their anchor: Inductor's rms_norm +
    the quant of them."""
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([100.0 if scheme == "nvfp4" else 0.05], device="cuda")
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, w, s: fused_torch(scheme, x, None, w, s), dynamic=False)
    return (x, w, s), compiled


def nvfp4_norm_launcher(spec, kernel=None, config: tuple[int, int] | None = None) -> Callable:
    """rms_norm + nvfp4 (x, w, s) -> (codes, scales) by `kernel` (default: `spec`'s own),
    launched as runtime.norm_launch launches `spec` (at `config`): a probe's candidate."""

    def run(x, w, s):
        out, _, scales, _ = runtime.allocate_outputs(spec, x, False)
        launch = runtime.norm_launch(spec, x, None, w, s, out, None, scales.view(torch.uint8),
                                     None, 1e-6, config)  # fmt: skip
        (kernel or runtime.compiled_kernel(spec))[launch.grid](
            *launch.args, num_warps=launch.num_warps
        )
        return out, scales

    return run


def assert_bytes_agree(got: tuple, want: tuple, what: tuple) -> None:
    """Two nvfp4 results (codes, scales) that add a norm's squares in other orders agree
    on at least 99.9% of their bytes (a byte may differ where a sum's last bit does)."""
    for a, b in zip(got, want, strict=True):
        same = (a.view(torch.uint8) == b.view(torch.uint8)).float().mean().item()
        assert same >= 0.999, (*what, same)


NOTES = {
    False: "Inductor compiles the same computation written in plain PyTorch; irfuse "
    "compiles the model written with torch.ops.irfuse.* (fused by its passes).",
    True: "Inductor and irfuse compile the same PyTorch function (irfuse raises its norm "
    "and quant idioms and fuses them).",
}


def out_bytes(scheme: str, t: int, k: int) -> int:
    kind = scheme.split()[0]
    if kind == NO_QUANT:
        return t * k * 2
    if kind == "nvfp4":
        return t * k // 2 + t * k // 16
    scales = {"static": 0, "per_tensor": 4, "per_token": t * 4}.get(kind, t * k // 128 * 4)
    return t * k + scales


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 4096, 16384])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES))
    producer = parser.add_mutually_exclusive_group()
    producer.add_argument("--standalone", action="store_true", help="quant alone, no norm")
    producer.add_argument("--no-residual", action="store_true", help="rms_norm + quant, no add")
    producer.add_argument(
        "--sandwich",
        nargs="?",
        const="gemma",
        choices=["gemma", "plain"],
        help="a norm + add + norm + quant, as written (Gemma's norm, or HF's plain one)",
    )
    producer.add_argument(
        "--post-norm", action="store_true", help="a norm + add + quant of the sum, as written"
    )
    parser.add_argument(
        "--keep-value", action="store_true", help="the normalised value is an output too"
    )
    parser.add_argument(
        "--as-written", action="store_true",
        help="irfuse compiles the same PyTorch as Inductor (raised), not torch.ops.irfuse.*",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.keep_value and (args.standalone or args.sandwich or args.post_norm):
        parser.error("--keep-value needs an add and a norm (not --standalone, --sandwich or "
                     "--post-norm)")  # fmt: skip
    # no irfuse-op form of these
    args.as_written = args.as_written or args.sandwich is not None or args.post_norm
    if NO_QUANT in args.schemes and (args.standalone or args.keep_value):
        parser.error("scheme none is a norm alone (not --standalone or --keep-value)")
    torch._dynamo.config.cache_size_limit = 256
    # every compile runs irfuse's pass (a cache hit would leave no report to check)
    torch._inductor.config.fx_graph_cache = False
    rows, raw = [], []
    for scheme in args.schemes:
        for hidden in args.hidden:
            for tokens in args.tokens:
                times = bench_one(
                    scheme, hidden, tokens, args.standalone, args.no_residual,
                    args.keep_value, args.rounds, args.as_written, args.sandwich,
                    args.post_norm,
                )  # fmt: skip
                if times is None:
                    print(f"{scheme}, hidden {hidden}, {tokens} tokens: no row, irfuse makes "
                          "no kernel of it in this form (Inductor's code would be timed)",
                          flush=True)  # fmt: skip
                    continue
                # x read, output written; a norm also reads its weight, an add the
                # residual, writing the sum
                moved = out_bytes(scheme, tokens, hidden) + tokens * hidden * 2
                if not args.standalone:
                    moved += hidden * 2 + (0 if args.no_residual else tokens * hidden * 4)
                    moved += tokens * hidden * 2 if args.keep_value else 0
                    moved += hidden * 2 if args.sandwich else 0  # the second weight
                gbs = moved / (times["irfuse"] * 1e-6) / 1e9
                copy_gbs = tokens * hidden * 4 / (times["copy"] * 1e-6) / 1e9  # bf16 x.clone()
                raw.append({"scheme": scheme, "hidden": hidden, "tokens": tokens, "us": times})
                rows.append([
                    scheme, str(hidden), str(tokens), f"{times['eager']:.2f}",
                    f"{times['inductor']:.2f}", f"{times['irfuse']:.2f}", f"{gbs:.0f}",
                    f"{gbs / copy_gbs:.0%}", f"{times['inductor'] / times['irfuse']:.3f}x",
                ])  # fmt: skip
                print(rows[-1], flush=True)
    what = "quant alone" if args.standalone else "add + rms_norm + quant"
    what = "rms_norm + quant" if args.no_residual and not args.standalone else what
    if args.sandwich:
        what = f"{args.sandwich} sandwich: rms_norm + add + rms_norm + quant"
    if args.post_norm:
        what = "post-norm (OLMo 2's): rms_norm + add + quant of the sum"
    what += " (the normalised value kept as an output too)" if args.keep_value else ""
    what += " (both compile the same PyTorch)" if args.as_written else ""
    text = append_results(
        f"{what}, every scheme (bf16 in), us, median of alternating rounds",
        ["scheme", "hidden", "T", "eager", "Inductor", "irfuse", "irfuse GB/s",
         "of x.clone()'s GB/s", "irfuse vs Inductor"],
        rows,
        notes=NOTES[args.as_written],
        raw=raw, json_path=args.json,
    )  # fmt: skip
    print(text)


def bench_one(
    scheme: str,
    hidden: int,
    tokens: int,
    standalone: bool,
    no_residual: bool,
    keep_value: bool,
    rounds: int,
    as_written: bool = False,
    sandwich: str | None = None,
    post_norm: bool = False,
) -> dict[str, float] | None:
    """Times of every candidate; None where irfuse runs none of its kernels."""
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    r = None if no_residual or standalone else torch.randn_like(x)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([0.05 if scheme == "static" else 100.0], device="cuda")
    inputs = (x, r, w, s, torch.randn_like(w) if sandwich else None)  # w2: a sandwich's
    # functions of the inputs, timed over rotating copies of them (common.compare)
    if sandwich:
        torch_fn = lambda x, r, w, s, w2: sandwich_torch(sandwich, scheme, x, r, w, w2, s)  # noqa: E731
        irfuse_fn = torch_fn
    elif post_norm:
        torch_fn = lambda x, r, w, s, w2: post_norm_torch(scheme, x, r, w, s)  # noqa: E731
        irfuse_fn = torch_fn
    elif standalone:
        torch_fn = lambda x, r, w, s, w2: quant_torch(scheme, x, s)  # noqa: E731
        irfuse_fn = lambda x, r, w, s, w2: quant_irfuse(scheme, x, s)  # noqa: E731
    else:
        torch_fn = lambda x, r, w, s, w2: fused_torch(scheme, x, r, w, s, keep_value)  # noqa: E731
        irfuse_fn = lambda x, r, w, s, w2: fused_irfuse(scheme, x, r, w, s, keep_value)  # noqa: E731
    torch._dynamo.reset()  # static shapes for every size: no automatic-dynamic recompiles
    inductor = torch.compile(torch_fn, dynamic=False)
    irfuse_model = torch_fn if as_written else irfuse_fn
    compiled = torch.compile(irfuse_model, backend="irfuse", dynamic=False)
    with capture_reports() as reports:
        got = compiled(*inputs)
    if not any(report.launches for report in reports):
        # nothing of irfuse's runs (a lone quant written in PyTorch, or nvfp4 as written,
        # is left to Inductor): the "irfuse" column would time Inductor's code
        return None
    expected = irfuse_model(*inputs)
    check(scheme, got, expected, sandwich is not None or post_norm)
    if keep_value:
        torch.testing.assert_close(got[-1], expected[-1])
    copy = lambda x, r, w, s, w2: x.clone()  # noqa: E731  # the bandwidth the kernels aim at
    candidates = {"eager": torch_fn, "inductor": inductor, "irfuse": compiled, "copy": copy}
    return compare(candidates, rounds, inputs)


def check(scheme: str, got, expected, sum_of_a_norm: bool = False) -> None:
    """The compiled irfuse output matches the reference ops (one fp8/fp4 step at most; a
    quant of a norm's sum (a sandwich's, a post-norm's) also a 64th of its row's largest
    value: the norm's bf16 output may be a step away from eager's, a step the residual add
    carries whole into a small sum)."""
    q, q_ref = got[0], expected[0]
    if scheme == NO_QUANT:
        torch.testing.assert_close(q, q_ref)
        return
    if scheme == "nvfp4":
        m, n = q.shape[0], q.shape[1] * 2
        gs = torch.tensor([100.0], device=q.device)
        a, b = (ref.nvfp4_dequant(out[0], out[1], gs, m, n) for out in (got, expected))
        span = b.abs().amax(-1, keepdim=True).clamp(min=1e-6)
        torch.testing.assert_close(a / span, b / span, atol=0.3, rtol=0.3)
        return
    a, b = q.float(), q_ref.float()
    step = torch.exp2(torch.floor(torch.log2(b.abs().clamp(min=2**-6))) - 3)
    if sum_of_a_norm:
        step = step + b.abs().amax(-1, keepdim=True) * 2**-6
    assert bool(((a - b).abs() <= step).all()), f"{scheme}: more than one fp8 step apart"


if __name__ == "__main__":
    main()
