"""Probe: what taking n_cols as the constant BLOCK (KernelSpec.full_block) gains over rows
of exactly BLOCK columns. The kernel then drops its masks and folds what it computes from
n_cols (the mean's division, nvfp4's scale offsets): in sm_90 SASS (bench/sass.py),
rms_norm + nvfp4 at 4096 columns on 4 warps takes 792 instructions a thread against 848,
in the same 64 registers, and it is bound by its instructions.

    python bench/full_block_probe.py [--schemes nvfp4 per_token static] [--add]
        [--hidden 4096 8192] [--tokens 1024 4096 16384]

rms_norm (`--add`: add + rms_norm) + each quant, kernel alone over rotating inputs,
irfuse's launch (runtime.single_launch: several rows a program where it takes them)
with the kernel that reads n_cols and with the one that takes it as BLOCK, beside
Inductor and x.clone(). Both must write the same bytes (checked). Each cell: us (x the
kernel reading n_cols, share of a copy's bandwidth). Appends a table.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, copy_share_row, sizes_parser  # noqa: E402
from quant_schemes import fused_torch  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec  # noqa: E402

CANDIDATES = {"reads n_cols": False, "n_cols as BLOCK": True}


def launcher(spec: KernelSpec, full_block: bool):
    def run(x, r, w, s):
        outputs = runtime.allocate_outputs(spec, x, r is not None)
        launched, launch = runtime.single_launch(spec, x, r, w, s, outputs, 1e-6)
        assert launched.full_block, "irfuse no longer takes n_cols as BLOCK here"
        runtime.run_launch(dataclasses.replace(launched, full_block=full_block), launch)
        return tuple(t for t in outputs if t.numel())

    return run


def probe_one(scheme: str, add: bool, hidden: int, tokens: int, rounds: int) -> list[str]:
    producer = "fused_add_rms_norm" if add else "rms_norm"
    spec = KernelSpec(producer, "plain", scheme)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    r = torch.randn_like(x) if add else None
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([100.0 if scheme == "nvfp4" else 0.05], device="cuda")
    s = None if scheme == "per_token" else s  # no upper bound
    torch._dynamo.reset()
    inductor = torch.compile(lambda x, r, w, s: fused_torch(scheme, x, r, w, s), dynamic=False)
    candidates = {"copy": lambda x, r, w, s: x.clone(), "inductor": inductor}
    candidates |= {name: launcher(spec, full) for name, full in CANDIDATES.items()}
    expected = candidates["reads n_cols"](x, r, w, s)
    for got, want in zip(candidates["n_cols as BLOCK"](x, r, w, s), expected, strict=True):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), (scheme, hidden)
    times = compare(candidates, rounds, (x, r, w, s))
    # x (and the residual) read, the outputs (the quant's, its scales, the sum) written
    moved = x.numel() * (4 if add else 2) + sum(t.numel() * t.element_size() for t in expected)
    return copy_share_row(
        [scheme, str(hidden), str(tokens)],
        times,
        list(CANDIDATES),
        "reads n_cols",
        moved,
        4 * x.numel(),
    )


def main() -> None:
    parser = sizes_parser([4096, 8192], rounds=5)
    parser.set_defaults(tokens=[1024, 4096, 16384])
    parser.add_argument("--schemes", nargs="+", default=["nvfp4", "per_token", "static"])
    parser.add_argument("--add", action="store_true", help="add + rms_norm + the quant")
    args = parser.parse_args()
    rows = [probe_one(scheme, args.add, h, t, args.rounds) for scheme in args.schemes
            for h in args.hidden for t in args.tokens]  # fmt: skip
    what = "add + rms_norm" if args.add else "rms_norm"
    print(append_results(
        f"{what} + quant, n_cols as BLOCK (probe), kernel alone, bf16, us (x the kernel "
        "reading n_cols, share of a copy's bandwidth)",
        ["scheme", "hidden", "T", "copy", "Inductor", *CANDIDATES], rows,
        notes="bench/full_block_probe.py: `n_cols as BLOCK`: KernelSpec.full_block, the "
        "kernel irfuse launches over rows of exactly BLOCK columns.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
