"""Probe: the standalone tiled quants (static, per-group, nvfp4) with their tiles indexed
from a (tiles, rows) grid instead of one flat index divided by the tiles of a row,
kernel alone over rotating inputs, beside Inductor.

    python bench/tile_index_probe.py [--schemes static "per_group 128" nvfp4]
        [--hidden 4096 7168] [--tokens 4096 16384]

The generated kernel's grid is (rows, tiles); so that programs that run together read
adjacent tiles, it reads the grid as one index over the tiles in memory order and divides
it by the tiles of a row (kernels/norm.py TILE_INDEX), before the first load of every
program: in unsigned 32 bits, 24 SASS instructions a thread (64 bits, until the
thirty-second session: ~96). The probe launches the same kernel body on a (tiles, rows)
grid, which starts programs in the same order with no division; CUDA's second grid
dimension holds at most 65535 rows, so the generated kernels cannot take it alone. Writes
the same bytes; appends a table.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, sizes_parser  # noqa: E402
from quant_schemes import quant_torch  # noqa: E402

import irfuse.kernels.norm as norm_pieces  # noqa: E402
import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source  # noqa: E402

GRID_INDEX = (
    "    row = tl.program_id(1).to(tl.int64)  # grid (tiles, rows)\n"
    "    col_start = tl.program_id(0) * BLOCK  # one tile of the row\n"
)


@functools.cache
def probe_kernel(spec: KernelSpec):
    """`spec`'s kernel indexing its tile from a (tiles, rows) grid."""
    source = kernel_source(spec)
    flat = norm_pieces.ROW_TILES_IN_ORDER + norm_pieces.ROW_TILE
    if flat not in source:
        raise SystemExit(f"{spec.encode()}: no flat tile index to replace")
    return load_kernel(spec.name, source.replace(flat, GRID_INDEX))


def launcher(spec: KernelSpec, probe: bool):
    def run(x, s):
        scale = s if spec.quant.split()[0] in ("static", "nvfp4") else None
        outputs = runtime.allocate_outputs(spec, x, False)
        launched, launch = runtime.single_launch(spec, x, None, None, scale, outputs, 1e-6)
        if not probe:
            runtime.run_launch(launched, launch)
        else:
            rows, tiles = launch.grid
            kernel = probe_kernel(launched)
            kernel[(tiles, rows)](*launch.args, num_warps=launch.num_warps)
        return outputs

    return run


def probe_one(scheme: str, hidden: int, tokens: int, rounds: int) -> list[str]:
    spec = KernelSpec.decode(f"quant/none/model/{scheme}")
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([0.05 if scheme == "static" else 100.0], device="cuda")
    torch._dynamo.reset()
    inductor = torch.compile(lambda x, s: quant_torch(scheme, x, s), dynamic=False)
    candidates = {"inductor": inductor, "generated": launcher(spec, False),
                  "probe": launcher(spec, True)}  # fmt: skip
    expected = candidates["generated"](x, s)
    for got, want in zip(candidates["probe"](x, s), expected, strict=True):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), scheme
    times = compare(candidates, rounds, (x, s))
    row = [scheme, str(hidden), str(tokens), f"{times['inductor']:.2f}",
           f"{times['generated']:.2f}", f"{times['probe']:.2f}",
           f"{times['inductor'] / times['generated']:.3f}x",
           f"{times['inductor'] / times['probe']:.3f}x"]  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    parser = sizes_parser([4096, 7168], rounds=3)
    parser.add_argument("--schemes", nargs="+", default=["static", "per_group 128", "nvfp4"])
    args = parser.parse_args()
    rows = [probe_one(scheme, h, t, args.rounds)
            for scheme in args.schemes for h in args.hidden for t in args.tokens]  # fmt: skip
    print(append_results(
        "standalone quants, tiles from a (tiles, rows) grid (probe), kernel alone, bf16, us",
        ["scheme", "hidden", "T", "Inductor", "generated", "probe", "generated vs Inductor",
         "probe vs Inductor"], rows,
        notes="bench/tile_index_probe.py: the generated kernel with its tile read from a "
        "(tiles, rows) grid, not a flat index divided by the tiles of a row.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
