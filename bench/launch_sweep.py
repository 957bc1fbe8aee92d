"""Launch configs of one norm / quant kernel side by side: the generated kernel alone at
each (tile columns, num_warps), against Inductor's kernel of the same PyTorch and the
config irfuse picks (how runtime.launch_config's tables are chosen).

    python bench/launch_sweep.py --form standalone|norm|add --schemes static per_token nvfp4
        [--hidden 4096 7168] [--tokens 4096 16384] [--tiles 1024 2048 4096] [--warps 2 4 8 16]

`--form standalone` is the quant alone (quant/none/model/SCHEME), `norm` rms_norm + the
quant with no residual (rms_norm/plain/model/SCHEME, what `torch.ops.irfuse.rms_norm`
then a quant fuse to), `add` add + rms_norm + the quant (fused_add_rms_norm/plain/model/
SCHEME, from `torch.ops.irfuse.fused_add_rms_norm`). A tile only applies to kernels that
tile rows (runtime.ROW_TILES); the others take whole rows and only their warps vary.
Every candidate runs over rotating inputs (common.compare). Appends a table to RESULTS.md:
each time as a ratio to Inductor's (above 1: faster than Inductor), the best config
marked.

    python bench/launch_sweep.py --form norm --schemes "per_group 128" \
        --divisions DIV_BY DIV_BY_BOUNDED

`--divisions` compares, instead of configs, the kernel at irfuse's config with each form
of `div_by` (irfuse/kernels/quant.py: the same bits, compiled differently) in place of
the one the kernel takes.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch._inductor.config

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare  # noqa: E402
from quant_schemes import fused_torch, quant_torch  # noqa: E402

import irfuse.kernels.quant as quant_pieces  # noqa: E402
import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source  # noqa: E402

DIVISIONS = ("DIV_BY", "DIV_BY_BOUNDED")

# each form's kernel spec, but for its scheme
PRODUCERS = {
    "standalone": "quant/none/model",
    "norm": "rms_norm/plain/model",
    "add": "fused_add_rms_norm/plain/model",
}


@functools.cache
def with_division(spec: KernelSpec, division: str):
    """`spec`'s kernel compiled with quant.`division` as its div_by."""
    source = kernel_source(spec)
    taken = [form for form in DIVISIONS if getattr(quant_pieces, form) in source]
    if len(taken) != 1:
        raise SystemExit(f"{spec.encode()}: no single div_by to replace ({taken})")
    source = source.replace(getattr(quant_pieces, taken[0]), getattr(quant_pieces, division))
    return load_kernel(spec.name, source)


def kernel_at(
    spec: KernelSpec, config: tuple[int, int] | None, division: str | None = None
) -> Callable[..., object]:
    """The kernel of `spec` launched directly, at `config` (block, num_warps) or, with
    None, at irfuse's choice (what kernel_norm runs); with `division`, compiled with
    that form of div_by."""

    def run(x, r, w, s):
        weight = None if spec.producer == "quant" else w
        scale = s if spec.quant.split()[0] in ("static", "nvfp4") else None
        outputs = runtime.allocate_outputs(spec, x, r is not None)
        launched, launch = runtime.single_launch(
            spec, x, r, weight, scale, outputs, 1e-6, config=config
        )
        if division is None:
            runtime.run_launch(launched, launch)
        else:
            kernel = with_division(launched, division)
            kernel[launch.grid](*launch.args, num_warps=launch.num_warps)
        return outputs

    return run


def configs(spec: KernelSpec, hidden: int, tiles: list[int], warps: list[int]):
    """(block, num_warps) pairs: tiles x warps for a kernel that tiles rows, whole rows
    (the next power of two of `hidden`) x warps for the others."""
    whole_row = runtime.next_power_of_2(hidden)
    blocks = [t for t in tiles if t <= whole_row] if spec.row_tiles else [whole_row]
    return [(b, w) for b in blocks for w in warps if w * 32 <= b]


def sweep_one(form: str, scheme: str, hidden: int, tokens: int, args) -> list[str]:
    spec_text = f"{PRODUCERS[form]}/{scheme}"
    spec = KernelSpec.decode(spec_text)
    # a per-tensor quant has two launches; a two-pass kernel's own warps are norm_launch's
    if spec.per_tensor or runtime.runs_two_pass(spec, tokens, hidden):
        raise SystemExit(f"{spec_text} at {tokens} x {hidden}: not swept (two launches, or "
                         "two-pass warps that launch_config does not give)")  # fmt: skip
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x) if form == "add" else None
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([0.05 if scheme == "static" else 100.0], device="cuda")
    if form == "standalone":
        torch_fn = lambda x, r, w, s: quant_torch(scheme, x, s)  # noqa: E731
    else:
        torch_fn = lambda x, r, w, s: fused_torch(scheme, x, r, w, s)  # noqa: E731
    torch._dynamo.reset()
    candidates = {"inductor": torch.compile(torch_fn, dynamic=False), "irfuse's": kernel_at(
        spec, None)}  # fmt: skip
    chosen = runtime.spec_launch_config(spec, tokens, hidden)
    if args.divisions:
        for division in args.divisions:
            candidates[division] = kernel_at(spec, None, division)
    else:
        for block, num_warps in configs(spec, hidden, args.tiles, args.warps):
            candidates[f"{block}x{num_warps}w"] = kernel_at(spec, (block, num_warps))
    # every config computes what irfuse's choice does: the same bytes for a quant alone; a
    # norm's sum of squares adds up in an order that follows the warps, so a rare rstd,
    # and the fp8 byte or scale of that row, may be a step off (the forms of div_by: the
    # same bytes, at the same config)
    exact = form == "standalone" or args.divisions
    expected = candidates["irfuse's"](x, r, w, s)
    for name, fn in candidates.items():
        if name != "inductor":
            for got, want in zip(fn(x, r, w, s), expected, strict=True):
                differ = int((got.view(torch.uint8) != want.view(torch.uint8)).sum())
                assert differ <= (0 if exact else got.numel() // 1000), name
    times = compare(candidates, args.rounds, (x, r, w, s))
    ratios = {name: times["inductor"] / t for name, t in times.items() if name != "inductor"}
    best = max((n for n in ratios if n != "irfuse's"), key=ratios.get)
    cells = [f"{n} {r:.3f}x" + (" **best**" if n == best else "") for n, r in ratios.items()]
    row = [form, scheme, str(hidden), str(tokens), f"{chosen[0]}x{chosen[1]}w",
           f"{times['inductor']:.2f}", "; ".join(cells)]  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--form", choices=list(PRODUCERS), required=True)
    parser.add_argument("--schemes", nargs="+", default=["static"])
    parser.add_argument("--hidden", type=int, nargs="+", default=[4096, 7168])
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument("--tiles", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--warps", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--divisions", nargs="+", choices=DIVISIONS, default=[])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch._dynamo.config.cache_size_limit = 256
    rows = [
        sweep_one(args.form, scheme, hidden, tokens, args)
        for scheme in args.schemes
        for hidden in args.hidden
        for tokens in args.tokens
    ]
    what = "forms of div_by" if args.divisions else "launch configs"
    print(append_results(
        f"{what}, {args.form} (kernel alone, bf16), each x Inductor's time",
        ["form", "scheme", "hidden", "T", "irfuse's config", "Inductor us",
         "candidate: x Inductor"],
        rows,
        notes="Tile columns x warps; irfuse's = the config launch_config picks, with the "
        "div_by the kernel takes (quant.epilogue).",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
