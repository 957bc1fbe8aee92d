"""Probe: nvfp4's codes packed eight at a time (`e2m1_bytes`, prmt gathers) against the
previous packing (a sign an element, a byte a pair, as the interpreter still runs it),
kernel alone over rotating inputs, beside Inductor, in one process.

    python bench/nvfp4_pack_probe.py [--forms norm standalone] [--hidden 4096 7168 8192]
        [--tokens 4096 16384]

`norm` is rms_norm + nvfp4 without a residual (rms_norm/plain/model/nvfp4), `standalone`
the quant alone (quant/none/model/nvfp4); both at the launch config irfuse picks for a
row in one BLOCK (rms_norm + nvfp4 at 7168 and 8192 columns now runs in pieces). In
sm_90 SASS (Triton 3.6, bench/sass.py) the gathers take 920 instructions a thread
against 952 (norm, 4096 columns x 4 warps, and 8192 x 8) and 760 against 792 (standalone,
2048 x 2), in the same 64 and 56 registers. (Gathering the signs with the indices, after
both were computed, took 928 and 768 in 72 registers: commit 6ecf06b.) Both candidates
must write the same bytes. Appends a table.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, sizes_parser  # noqa: E402
from quant_schemes import fused_torch, quant_torch  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source  # noqa: E402

SPECS = {"norm": "rms_norm/plain/model/nvfp4", "standalone": "quant/none/model/nvfp4"}
GATHERED = "    if INTERPRET:\n        code = e2m1_code(e)"
PREVIOUS = "    if True:  # the previous packing, on the GPU too\n        code = e2m1_code(e)"


@functools.cache
def previous_kernel(spec: KernelSpec):
    source = kernel_source(spec)
    assert GATHERED in source
    return load_kernel(spec.name, source.replace(GATHERED, PREVIOUS))


def launcher(spec: KernelSpec, previous: bool):
    def run(x, w, s):
        outputs = runtime.allocate_outputs(spec, x, False)
        weight = w if spec.producer != "quant" else None
        config = runtime.spec_launch_config(spec, *x.shape)  # the row in one BLOCK, not pieces
        _, launch = runtime.single_launch(spec, x, None, weight, s, outputs, 1e-6, config=config)
        kernel = previous_kernel(spec) if previous else runtime.compiled_kernel(spec)
        kernel[launch.grid](*launch.args, num_warps=launch.num_warps)
        return outputs[0], outputs[2]

    return run


def probe_one(form: str, hidden: int, tokens: int, rounds: int) -> list[str]:
    spec = KernelSpec.decode(SPECS[form])
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([100.0], device="cuda")
    torch._dynamo.reset()
    if form == "norm":
        compiled = torch.compile(lambda x, w, s: fused_torch("nvfp4", x, None, w, s), dynamic=False)
    else:
        compiled = torch.compile(lambda x, w, s: quant_torch("nvfp4", x, s), dynamic=False)
    candidates = {"inductor": compiled, "gathered": launcher(spec, False),
                  "previous": launcher(spec, True)}  # fmt: skip
    gathered, previous = candidates["gathered"](x, w, s), candidates["previous"](x, w, s)
    for got, want in zip(gathered, previous, strict=True):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), form
    times = compare(candidates, rounds, (x, w, s))
    row = [form, str(hidden), str(tokens), f"{times['inductor']:.2f}", f"{times['previous']:.2f}",
           f"{times['gathered']:.2f}", f"{times['previous'] / times['gathered']:.3f}x"]  # fmt: skip
    print(row, flush=True)
    return row


def main() -> None:
    parser = sizes_parser([4096, 7168, 8192], rounds=3)
    parser.add_argument("--forms", nargs="+", choices=list(SPECS), default=list(SPECS))
    args = parser.parse_args()
    rows = [probe_one(f, h, t, args.rounds) for f in args.forms for h in args.hidden
            for t in args.tokens]  # fmt: skip
    print(append_results(
        "nvfp4's codes gathered eight at a time (probe), kernel alone, bf16, us",
        ["form", "hidden", "T", "Inductor", "previous", "gathered", "gathered vs previous"],
        rows,
        notes="bench/nvfp4_pack_probe.py: `previous` packs a sign an element and a byte a "
        "pair; `gathered` (irfuse's kernels now) eight codes at a time by prmt.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
