"""Probe: rms_norm + nvfp4 with each thread holding whole blocks of 16 (the row loaded as
halves of blocks, [BLOCK // 8, 8]: a block's amax takes no shuffle and its scale is
computed once) against the row in memory order (a block over two threads, which both
compute its scale), kernel alone over rotating inputs, beside Inductor, in one process.

    python bench/nvfp4_layout_probe.py [--hidden 4096 7168 8192] [--tokens 4096 16384]
        [--standalone]

The generated kernel takes the halves where quant.WHOLE_BLOCKS holds (rows of 4096
columns); the probe forces one layout or the other at every width. `--standalone` probes
the quant alone (row tiles; the halves where quant.QUANT_WHOLE_BLOCKS holds). In sm_90
SASS (Triton 3.6, bench/sass.py) the halves take 848 instructions a thread against 920
(4096 columns x 4 warps), in 64 registers. The two layouts add the norm's squares in
another order, so a byte may differ where a sum's last bit does; the probe checks that
they agree on at least 99.9% of the bytes. (The thirty-second session's version of this
probe permuted a 1-D row's columns instead: 920 against 960 instructions, 0.99x-1.04x.)
Appends a table.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, sizes_parser  # noqa: E402
from quant_schemes import (  # noqa: E402
    assert_bytes_agree,
    norm_quant_case,
    nvfp4_norm_launcher,
    quant_torch,
)

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source, whole_blocks_of  # noqa: E402

SPECS = {False: KernelSpec.decode("rms_norm/plain/model/nvfp4"),
         True: KernelSpec.decode("quant/none/model/nvfp4")}  # fmt: skip
LAYOUTS = {"memory order": "False", "whole blocks": "True"}


@functools.cache
def forced_kernel(spec: KernelSpec, layout: str):
    """The generated kernel with its layout condition (whole_blocks_of) fixed."""
    source, condition = kernel_source(spec), whole_blocks_of(spec)
    assert source.count(condition) == 2  # the columns and the store
    return load_kernel(spec.name, source.replace(condition, LAYOUTS[layout]))


def probe_one(hidden: int, tokens: int, rounds: int, standalone: bool) -> list[str]:
    spec = SPECS[standalone]
    (x, w, s), compiled = norm_quant_case("nvfp4", hidden, tokens)
    inputs = (x, None if standalone else w, s)
    if standalone:
        compiled = torch.compile(lambda x, _, s: quant_torch("nvfp4", x, s), dynamic=False)
    # the row in one BLOCK (runtime.pieces_of would hold 7168 or 8192 as pieces)
    layouts = {name: nvfp4_norm_launcher(spec, forced_kernel(spec, name)) for name in LAYOUTS}
    candidates = {"inductor": compiled} | layouts
    want = candidates["memory order"](*inputs)
    assert_bytes_agree(candidates["whole blocks"](*inputs), want, (hidden, tokens))
    times = compare(candidates, rounds, inputs)
    old, new = times["memory order"], times["whole blocks"]
    block, warps = runtime.spec_launch_config(spec, tokens, hidden)
    row = [str(hidden), str(tokens), f"{block}x{warps}w", f"{times['inductor']:.2f}",
           f"{old:.2f}", f"{new:.2f}", f"{old / new:.3f}x"]  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    parser = sizes_parser([4096, 7168, 8192], rounds=3)
    parser.add_argument("--standalone", action="store_true", help="the quant alone")
    args = parser.parse_args()
    rows = [probe_one(h, t, args.rounds, args.standalone) for h in args.hidden
            for t in args.tokens]  # fmt: skip
    what = "nvfp4 alone" if args.standalone else "rms_norm + nvfp4"
    print(append_results(
        f"{what}, whole blocks a thread or the row in memory order (probe), kernel "
        "alone, bf16, us",
        ["hidden", "T", "config", "Inductor", "memory order", "whole blocks",
         "whole blocks vs memory order"],
        rows,
        notes="bench/nvfp4_layout_probe.py: the generated kernel with its layout forced; "
        f"irfuse takes the whole blocks where {whole_blocks_of(SPECS[args.standalone])}.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
