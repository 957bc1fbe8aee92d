"""Probe: rms_norm + a quant without a residual, each program running several rows with
the next row's load in flight while it computes one, against the generated kernel (a
program a row), kernel alone over rotating inputs, beside Inductor, in one process.

    python bench/norm_rows_probe.py [--schemes nvfp4 per_token] [--rows 2 4 8]
        [--hidden 4096 7168 8192] [--tokens 4096 16384]

The generated kernel loads its row, then computes; at 4 programs (8192 columns) to 8 an
SM, all of them may be computing while no load is in flight. rms_norm + nvfp4 runs about
as many instructions as its bytes take to move (bench/RESULTS.md), so overlapping the
two could take it from their sum towards the larger. Each probe program runs `R` rows in
a loop and loads row i + 1 before it computes row i (16 registers more at 32 columns a
thread; ptxas takes about 127). Also the generated kernel compiled with maxnreg=56, which
fits it without spilling (9 programs of 128 threads an SM instead of 8). Token counts
must divide by R. Every candidate must write the generated kernel's bytes. Rows run in
one BLOCK, as the probe found them (rms_norm + nvfp4 at 7168 and 8192 columns now runs
in pieces: bench/nvfp4_pieces_probe.py). Appends a table.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, sizes_parser  # noqa: E402
from quant_schemes import fused_torch  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source  # noqa: E402

FIRST_ROW = "    row = tl.program_id(0).to(tl.int64)\n"
LOAD = ("    v = widened(tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0), "
        "INTERPRET)\n")  # fmt: skip
BODY = "    # rms_norm over the row"
LOOP = """    x_next = tl.load(x_ptr + first * x_row_stride + cols, mask=mask, other=0.0)
    for i in range({rows}):
        row = first + i
        x_row = x_next
        # the next row's load in flight while this one computes
        x_next = tl.load(x_ptr + (row + 1) * x_row_stride + cols, mask=mask & (i + 1 < {rows}),
                         other=0.0)
        v = widened(x_row, INTERPRET)
"""


def probe_source(spec: KernelSpec, rows: int) -> str:
    """The generated kernel's source with `rows` rows a program, each row's successor
    loaded before the row computes."""
    source = kernel_source(spec)
    assert FIRST_ROW in source and LOAD in source and BODY in source
    head, body = source.replace(LOAD, "").split(BODY, 1)
    body = "\n".join("    " + line if line else line for line in (BODY + body).split("\n"))
    head = head.replace(FIRST_ROW, f"    first = tl.program_id(0).to(tl.int64) * {rows}\n")
    return head + LOOP.format(rows=rows) + body


@functools.cache
def probe_kernel(spec: KernelSpec, rows: int):
    return load_kernel(spec.name, probe_source(spec, rows))


def launcher(spec: KernelSpec, rows: int, maxnreg: int | None = None):
    def run(x, w, s):
        outputs = runtime.allocate_outputs(spec, x, False)
        config = runtime.spec_launch_config(spec, *x.shape)  # the row in one BLOCK, not pieces
        _, launch = runtime.single_launch(spec, x, None, w, s, outputs, 1e-6, config=config)
        if maxnreg:  # the generated kernel, its registers capped
            kernel = runtime.compiled_kernel(spec)
            kernel[launch.grid](*launch.args, num_warps=launch.num_warps, maxnreg=maxnreg)
        elif rows == 1:
            runtime.run_launch(spec, launch)
        else:
            grid = (launch.grid[0] // rows, *launch.grid[1:])
            probe_kernel(spec, rows)[grid](*launch.args, num_warps=launch.num_warps)
        return outputs[0], outputs[2]

    return run


def probe_one(scheme: str, hidden: int, tokens: int, rows: list[int], rounds: int) -> list[str]:
    spec = KernelSpec.decode(f"rms_norm/plain/model/{scheme}")
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([100.0 if scheme == "nvfp4" else 0.05], device="cuda")
    torch._dynamo.reset()
    inductor = torch.compile(lambda x, w, s: fused_torch(scheme, x, None, w, s), dynamic=False)
    candidates = {"inductor": inductor, "generated": launcher(spec, 1)}
    candidates |= {f"{r} rows": launcher(spec, r) for r in rows}
    candidates["56 registers"] = launcher(spec, 1, maxnreg=56)
    expected = candidates["generated"](x, w, s)
    for name in [*(f"{r} rows" for r in rows), "56 registers"]:
        got = candidates[name](x, w, s)
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (scheme, name)
    times = compare(candidates, rounds, (x, w, s))
    row = [scheme, str(hidden), str(tokens), f"{times['inductor']:.2f}",
           f"{times['generated']:.2f}"]  # fmt: skip
    row += [
        f"{times[n]:.2f} ({times['generated'] / times[n]:.3f}x)"
        for n in [*(f"{r} rows" for r in rows), "56 registers"]
    ]
    print(row, flush=True)
    return row


def main() -> None:
    parser = sizes_parser([4096, 7168, 8192], rounds=3)
    parser.add_argument("--schemes", nargs="+", default=["nvfp4", "per_token"])
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 4, 8])
    args = parser.parse_args()
    rows = [probe_one(sc, h, t, args.rows, args.rounds) for sc in args.schemes
            for h in args.hidden for t in args.tokens]  # fmt: skip
    print(append_results(
        "rms_norm + quant, rows a program with the next row's load in flight (probe), "
        "kernel alone, bf16, us (x generated)",
        ["scheme", "hidden", "T", "Inductor", "generated", *(f"{r} rows" for r in args.rows),
         "generated, 56 registers"],
        rows,
        notes="bench/norm_rows_probe.py: the generated kernel runs a program a row; `R rows` "
        "runs R rows a program, loading row i + 1 before computing row i; `56 registers`: "
        "the generated kernel compiled with maxnreg=56.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
