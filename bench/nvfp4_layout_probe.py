"""Probe: rms_norm + nvfp4 with each thread holding whole blocks of 16, against the
generated kernel, kernel alone over rotating inputs, beside Inductor.

    python bench/nvfp4_layout_probe.py [--hidden 4096 7168] [--tokens 4096 16384]

The generated kernel reads a row as Triton lays a 1-D load out, 8 columns a thread, so a
block of 16 spans two threads: its amax takes a shuffle, and both threads compute its
scale (the e4m3 rounding and a division). The probe permutes the columns each thread
loads, so that pass r of thread t reads half r % 2 of block t + T * (r // 2) (T threads,
R = BLOCK / (8 T) passes): each block's 16 values sit in one thread, at the cost of loads
and stores that cover a 32-byte sector in two instructions instead of one. In sm_90 SASS
(bench/sass.py) the probe runs 920 instructions a thread against 960 at 4096 x 4 warps;
nvfp4 without a residual is bound by its instructions (bench/RESULTS.md). The norm's sum
of squares adds up in another order, so 1 byte in 1000 may differ. Appends a table.
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

SPEC = KernelSpec.decode("rms_norm/plain/model/nvfp4")
COLUMNS = "    cols = col_start + tl.arange(0, BLOCK)\n"
EPILOGUE = "    # epilogue: nvfp4"


def probe_source(threads: int, passes: int) -> str:
    """The generated kernel's source with its columns permuted and its epilogue on whole
    blocks, for `threads` threads of `passes` loads of 8 columns."""
    source = kernel_source(SPEC)
    blocks = passes // 2  # each thread's blocks
    columns = f"""    # pass r of thread t: 8 columns of block t + T * (r // 2), its half r % 2
    p = tl.arange(0, BLOCK)
    r = p // {8 * threads}
    block = ((p // 8) % {threads}) + (r // 2) * {threads}
    cols = col_start + block * 16 + (r % 2) * 8 + p % 8
"""
    epilogue = f"""    # epilogue: nvfp4, each block's 16 values in one thread
    v4 = tl.reshape(v, ({blocks}, 2, {threads}, 8))
    amax = amax_of(amax_of(v4, 3), 1)
    sf = to_fp8(div_by(global_scale * amax, 6.0, 0.16666666666666666), INTERPRET)
    sf_value = sf.to(tl.float32)
    if INTERPRET:
        sf_value = tl.where((sf.to(tl.uint8, bitcast=True) & 0x7F) == 0x7F, float("nan"), sf_value)
    safe = tl.where(sf_value != 0, sf_value, 1.0)
    inv = tl.where(sf_value != 0, tl.math.div_rn(global_scale, safe), 0.0)
    e = v4 * inv[:, None, :, None]
    if INTERPRET:
        e = tl.where(e != e, float("nan"), e)
    code = e2m1_code(e)
    shifts = (tl.arange(0, 2) * 4)[None, None, None, None, :]
    pairs = tl.reshape(code, ({blocks}, 2, {threads}, 4, 2)) << shifts
    packed = tl.sum(pairs, axis=4).to(tl.uint8)
    m = tl.arange(0, {blocks})[:, None, None, None]
    half = tl.arange(0, 2)[None, :, None, None]
    t = tl.arange(0, {threads})[None, None, :, None]
    quad = tl.arange(0, 4)[None, None, None, :]
    byte = col_start // 2 + (t + m * {threads}) * 8 + half * 4 + quad
    tl.store(out_ptr + row * out_row_stride + byte, packed, mask=byte < n_cols // 2)
    k = col_start // 16 + tl.arange(0, {blocks})[:, None] * {threads} + tl.arange(0, {threads})
    tl.store(scale_out_ptr + nvfp4_scale_offset(row, k, n_cols), sf.to(tl.uint8, bitcast=True),
             mask=k < n_cols // 16)
"""
    assert COLUMNS in source and EPILOGUE in source
    return (
        source.replace(COLUMNS, columns)[: source.replace(COLUMNS, columns).index(EPILOGUE)]
        + epilogue
    )


@functools.cache
def probe_kernel(threads: int, passes: int):
    return load_kernel(SPEC.name, probe_source(threads, passes))


def launcher(probe: bool):
    def run(x, r, w, s):
        outputs = runtime.allocate_outputs(SPEC, x, False)
        spec, launch = runtime.single_launch(SPEC, x, None, w, s, outputs, 1e-6)
        if not probe:
            runtime.run_launch(spec, launch)
            return outputs
        block = launch.args[-3]
        threads = 32 * launch.num_warps
        passes = block // (8 * threads)
        if passes < 2 or passes % 2:
            raise SystemExit(f"{block} columns x {launch.num_warps} warps: no whole blocks")
        kernel = probe_kernel(threads, passes)
        kernel[launch.grid](*launch.args, num_warps=launch.num_warps)
        return outputs

    return run


def probe_one(hidden: int, tokens: int, rounds: int) -> list[str]:
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([100.0], device="cuda")
    torch._dynamo.reset()
    inductor = torch.compile(lambda x, r, w, s: fused_torch("nvfp4", x, None, w, s), dynamic=False)
    candidates = {"inductor": inductor, "generated": launcher(False), "probe": launcher(True)}
    expected = candidates["generated"](x, None, w, s)
    for got, want in zip(candidates["probe"](x, None, w, s), expected, strict=True):
        differ = int((got.view(torch.uint8) != want.view(torch.uint8)).sum())
        assert differ <= got.numel() // 1000, differ
    times = compare(candidates, rounds, (x, None, w, s))
    row = [str(hidden), str(tokens), f"{times['inductor']:.2f}", f"{times['generated']:.2f}",
           f"{times['probe']:.2f}", f"{times['generated'] / times['probe']:.3f}x"]  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    parser = sizes_parser([4096, 7168], rounds=3)
    args = parser.parse_args()
    rows = [probe_one(h, t, args.rounds) for h in args.hidden for t in args.tokens]
    print(append_results(
        "rms_norm + nvfp4, whole blocks a thread (probe), kernel alone, bf16, us",
        ["hidden", "T", "Inductor", "generated", "probe", "probe vs generated"], rows,
        notes="bench/nvfp4_layout_probe.py: the generated kernel's columns permuted so that "
        "each thread holds whole blocks of 16.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
