"""Probe: rms_norm + a quant without a residual with several rows a program, each row's
successor loaded while it computes (kernel_spec._rows_body, which irfuse launches where
runtime.rows_per_program_of says), against a program a row, kernel alone over rotating
inputs, beside Inductor, in one process.

    python bench/norm_rows_probe.py [--schemes nvfp4 per_token] [--rows 4 8 16]
        [--warps 8] [--hidden 4096] [--tokens 4096 8192 16384]

A program a row loads its row, then computes it: programs that start together load
together, then compute together. R rows a program hold the next row's load in flight
while one computes (about 120 registers against 64-72, so half the programs an SM).
The last program runs what is left of R rows. Every candidate at a program a row's warps
must write its bytes; one at other warps (irfuse runs several rows on runtime.ROWS_WARPS)
adds a row's squares in another order, so a byte may differ where a sum's last bit does
(at most 0.1%). Rows that irfuse holds in pieces (rms_norm + nvfp4 at 7168 or 8192
columns: runtime.pieces_of) are held in pieces a row a program, in one BLOCK at R rows
(several rows in pieces ran 0.75x-0.87x a row a program, forty-sixth session, and are no
longer built).
(The forty-first session's version of this probe built the loop by editing the
generated source, and also timed the kernel at maxnreg=56: no change.) Appends a table.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, sizes_parser  # noqa: E402
from quant_schemes import assert_bytes_agree, norm_quant_case  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec  # noqa: E402


def config_of(spec: KernelSpec, rows: int, warps: int | None, x: torch.Tensor):
    """(the spec, its (BLOCK, warps)) of `spec`'s kernel over `x` at `rows` rows a program
    (0: a row a program, in pieces where irfuse holds such rows in pieces:
    runtime.pieces_of) and `warps` warps (None: irfuse's for that form)."""
    pieces = 0 if rows else runtime.pieces_of(spec, x.shape[1], x.dtype)
    spec_of_x = dataclasses.replace(spec, pieces=pieces, rows_per_program=rows)
    block, irfuse_warps = runtime.spec_launch_config(spec_of_x, *x.shape)
    return spec_of_x, (block, warps or irfuse_warps)


def launcher(spec: KernelSpec, rows: int, warps: int | None):
    """`spec`'s kernel at `rows` rows a program and `warps` warps (config_of)."""

    def run(x, w, s):
        spec_of_x, config = config_of(spec, rows, warps, x)  # a config keeps `rows`
        outputs = runtime.allocate_outputs(spec_of_x, x, False)
        launched, launch = runtime.single_launch(
            spec_of_x, x, None, w, s, outputs, 1e-6, config=config
        )
        runtime.run_launch(launched, launch)
        return outputs[0], outputs[2]

    return run


def candidate_names(rows: list[int], warps: list[int]) -> dict[str, tuple[int, int | None]]:
    """Each candidate's column name and (rows a program, warps), but a row a program at
    irfuse's warps (the baseline)."""
    names = {}
    for r in [0, *rows]:
        for w in [None, *warps]:
            if (r, w) != (0, None):
                names[f"{f'{r} rows' if r else 'a row'}{f' {w}w' if w else ''}"] = (r, w)
    return names


def probe_one(
    scheme: str, hidden: int, tokens: int, names: dict[str, tuple[int, int | None]], rounds: int
) -> list[str]:
    spec = KernelSpec.decode(f"rms_norm/plain/model/{scheme}")
    (x, w, s), inductor = norm_quant_case(scheme, hidden, tokens)
    candidates = {"inductor": inductor, "a row": launcher(spec, 0, None)}
    candidates |= {name: launcher(spec, r, warps) for name, (r, warps) in names.items()}
    expected = candidates["a row"](x, w, s)
    a_row_warps = config_of(spec, 0, None, x)[1][1]
    for name, (rows, warps) in names.items():
        got = candidates[name](x, w, s)
        if config_of(spec, rows, warps, x)[1][1] == a_row_warps:
            for a, b in zip(got, expected, strict=True):
                assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (scheme, name)
        else:  # other warps add a row's squares in another order
            assert_bytes_agree(got, expected, (scheme, name))
    times = compare(candidates, rounds, (x, w, s))
    row = [scheme, str(hidden), str(tokens), f"{times['inductor']:.2f}", f"{times['a row']:.2f}"]
    row += [f"{times[n]:.2f} ({times['a row'] / times[n]:.3f}x)" for n in names]
    print(row, flush=True)
    return row


def main() -> None:
    parser = sizes_parser([4096], rounds=5)
    parser.add_argument("--schemes", nargs="+", default=["nvfp4", "per_token"])
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--warps", type=int, nargs="*", default=[])
    args = parser.parse_args()
    names = candidate_names(args.rows, args.warps)
    rows = [probe_one(sc, h, t, names, args.rounds) for sc in args.schemes
            for h in args.hidden for t in args.tokens]  # fmt: skip
    print(append_results(
        "rms_norm + quant, rows a program with the next row's load in flight (probe), "
        "kernel alone, bf16, us (x a row a program)",
        ["scheme", "hidden", "T", "Inductor", "a row a program", *names],
        rows,
        notes="bench/norm_rows_probe.py: `R rows`: the generated kernel at R rows a program "
        "(kernel_spec._rows_body), loading row i + 1 before computing row i; `W w`: at W "
        "warps (else irfuse's).",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
