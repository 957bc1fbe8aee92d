"""Probe: rms_norm + a quant without a residual, its rows streamed through shared memory
by persistent programs, against the generated kernel (a program a row), kernel alone over
rotating inputs, beside Inductor and a copy of x, in one process.

    python bench/norm_stream_probe.py [--schemes nvfp4 per_token] [--hidden 4096]
        [--tokens 1024 4096 16384] [--stages 2 3] [--warps 4 8]

From 4096 rows these kernels move their bytes at a copy's bandwidth, but each launch
costs a few microseconds more than a copy's (bench/RESULTS.md, forty-fourth session): a
program loads its row, then computes it (about as many instructions as the bytes take to
move), so programs that start together load together and compute together, and memory
idles while they do. Each candidate program here loops over rows (row p, p + grid, ...)
in `tl.range(..., num_stages=S)`: Triton 3.6 issues the loads of the next S - 1 rows as
cp.async copies into shared memory while it computes one, in the registers of one row.
The weight and the scale are loaded once a program. The grid is as many programs as the
GPU holds at once (the compiled kernel's registers and shared memory). Every candidate
must write the generated kernel's bytes (at other warps, which sum the squares in
another order, 99.9% of them). Appends a table.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, copy_share_row, sizes_parser  # noqa: E402
from quant_schemes import assert_bytes_agree, norm_quant_case  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source  # noqa: E402

FIRST_ROW = "    row = tl.program_id(0).to(tl.int64)\n"
LOAD = "    v = widened(tl.load(x_ptr + row * x_row_stride + cols"
NORM = "    # rms_norm over the row"
PARAMS = "INTERPRET: tl.constexpr,\n):\n"
LOOP = (
    "    for row_index in tl.range(tl.program_id(0), n_rows, tl.num_programs(0),\n"
    "                              num_stages=STAGES):\n"
    "        row = row_index.to(tl.int64)\n"
)
SM_REGISTERS, SM_WARPS, SM_PROGRAMS = 65536, 64, 32


def stream_source(spec: KernelSpec) -> str:
    """The generated kernel's source with its rows in a pipelined loop: the row load in
    the loop, what the kernel loads early (weight, scale) before it."""
    source = kernel_source(spec)
    assert all(source.count(s) == 1 for s in (FIRST_ROW, LOAD, NORM, PARAMS)), spec
    source = source.replace(PARAMS, PARAMS.replace(",\n)", ", n_rows, STAGES: tl.constexpr,\n)"))
    head, body = source.replace(FIRST_ROW, "").split(LOAD)
    load, body = (LOAD + body).split("\n", 1)
    early, body = body.split(NORM)
    lines = f"{load}\n\n{NORM}{body}".split("\n")
    body = "\n".join("    " + line if line else line for line in lines)
    return head + early.strip("\n") + "\n" + LOOP + body


@functools.cache
def stream_kernel(spec: KernelSpec):
    return load_kernel(spec.name, stream_source(spec))


def resident_programs(compiled, num_warps: int) -> int:
    """Programs of `compiled` an SM holds at once (registers, warps, shared memory)."""
    per_warp = -(-compiled.n_regs // 8) * 8 * 32
    by_registers = SM_REGISTERS // per_warp // num_warps
    limit = runtime.shared_memory_limit(torch.device("cuda"))
    by_shared = limit // max(compiled.metadata.shared + 1024, 1)
    return max(1, min(by_registers, SM_WARPS // num_warps, by_shared, SM_PROGRAMS))


def launcher(spec: KernelSpec, stages: int = 0, warps: int = 0):
    """The generated kernel (stages 0), or its rows streamed at `stages`, `warps`."""
    grid_of: dict[int, tuple[int]] = {}

    def run(x, w, s):
        outputs = runtime.allocate_outputs(spec, x, False)
        block, generated_warps = runtime.spec_launch_config(spec, *x.shape)
        config = (block, warps or generated_warps)
        _, launch = runtime.single_launch(spec, x, None, w, s, outputs, 1e-6, config=config)
        if not stages:
            runtime.run_launch(spec, launch)
            return outputs[0], outputs[2]
        n_rows = x.shape[0]
        kernel = stream_kernel(spec)
        if n_rows not in grid_of:  # first call: one program, to read its resources
            compiled = kernel[(1,)](*launch.args, n_rows, stages, num_warps=launch.num_warps)
            slots = resident_programs(compiled, launch.num_warps) * runtime.sm_count(x.device)
            grid_of[n_rows] = (min(n_rows, slots),)
        kernel[grid_of[n_rows]](*launch.args, n_rows, stages, num_warps=launch.num_warps)
        return outputs[0], outputs[2]

    return run


def probe_one(scheme, hidden, tokens, stages, warps, rounds) -> list[str]:
    spec = KernelSpec.decode(f"rms_norm/plain/model/{scheme}")
    (x, w, s), inductor = norm_quant_case(scheme, hidden, tokens)
    streamed = [(st, wp) for st in stages for wp in warps]
    names = [f"S{st} {wp}w" for st, wp in streamed]
    candidates = {"copy": lambda x, w, s: x.clone(), "inductor": inductor,
                  "generated": launcher(spec)}  # fmt: skip
    candidates |= {n: launcher(spec, st, wp) for n, (st, wp) in zip(names, streamed, strict=True)}
    expected = candidates["generated"](x, w, s)
    same_warps = runtime.spec_launch_config(spec, tokens, hidden)[1]
    for name, (_, wp) in zip(names, streamed, strict=True):
        got = candidates[name](x, w, s)
        if wp == same_warps:
            for a, b in zip(got, expected, strict=True):
                assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (scheme, name)
        else:  # the squares summed in another order
            assert_bytes_agree(got, expected, (scheme, name))
    times = compare(candidates, rounds, (x, w, s))
    moved = x.numel() * 2 + sum(t.numel() * t.element_size() for t in expected)
    return copy_share_row(
        [scheme, str(hidden), str(tokens)],
        times,
        ["generated", *names],
        "generated",
        moved,
        4 * x.numel(),
    )


def main() -> None:
    parser = sizes_parser([4096], rounds=5)
    parser.add_argument("--schemes", nargs="+", default=["nvfp4", "per_token"])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    rows = [probe_one(sc, h, t, args.stages, args.warps, args.rounds) for sc in args.schemes
            for h in args.hidden for t in args.tokens]  # fmt: skip
    names = [f"S{st} {wp}w" for st in args.stages for wp in args.warps]
    print(append_results(
        "rms_norm + quant, rows streamed through shared memory by persistent programs "
        "(probe), kernel alone, bf16, us (x generated, share of a copy's bandwidth)",
        ["scheme", "hidden", "T", "x.clone()", "Inductor", "generated", *names],
        rows,
        notes="bench/norm_stream_probe.py: the generated kernel runs a program a row; `Sn "
        "kw`: persistent programs of k warps, as many as the GPU holds, each looping over "
        "rows in tl.range(num_stages=n) (the next n - 1 rows' loads in flight as cp.async "
        "copies into shared memory), weight and scale loaded once a program.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
