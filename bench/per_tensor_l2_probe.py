"""Probe: do L2 eviction hints lift the dynamic per-tensor fp8 quant? It reads its input
twice: phase 1 (the amax, and a norm's rstd) then phase 2 (the quant), which runs the
rows last first so as to meet in L2 what phase 1 read last. It runs at 48%-62% of a
copy's bandwidth (H100, bench/RESULTS.md): the second read mostly comes from memory. At
4096 x 4096 bf16 (32 MB) the whole input could stay in the H100's 50 MB L2, but phase 2's
fp8 writes (16 MB) pass through it too, and push out rows it has yet to read.

    python bench/per_tensor_l2_probe.py [--forms standalone norm] [--hidden 4096 8192]
        [--tokens 2048 4096 8192 16384]

Candidates, irfuse's launches (runtime.per_tensor_launches) with the kernels' source
edited, kernel alone over rotating inputs, beside Inductor and x.clone():

- `generated`: the kernels as they are;
- `keep`: phase 1 loads with evict_last (L2 keeps the input over other lines);
- `keep+stream`: that, and phase 2 loads with evict_first and stores streaming (`.cs`),
  so that neither what it has read nor what it writes takes the place of what it has
  yet to read.

Each cell: us (x generated, share of a copy's bandwidth: x read once, the output and
its scale written). All must write the same bytes (checked). Appends a table.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, copy_share_row, sizes_parser  # noqa: E402
from quant_schemes import norm_quant_case, quant_torch  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source  # noqa: E402

SPECS = {"standalone": "quant/none/model/per_tensor", "norm": "rms_norm/plain/model/per_tensor"}
X_LOAD = "tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)"
OUT_STORE = "tl.store(out_ptr + row * out_row_stride + cols, "  # a line, ending "mask=mask)"
# (phase 1's load, phase 2's load, phase 2's store): what each candidate adds to them
HINTS = {
    "keep": (', eviction_policy="evict_last"', "", ""),
    "keep+stream": (', eviction_policy="evict_last"', ', eviction_policy="evict_first"',
                    ', cache_modifier=".cs"'),
}  # fmt: skip


def hinted(source: str, load: str, store: str) -> str:
    """`source` with `load` added to its x load's arguments, `store` to its output store's."""
    assert source.count(X_LOAD) == 1, "the probe no longer finds the kernel's x load"
    source = source.replace(X_LOAD, X_LOAD[:-1] + load + ")")
    if store:
        lines = source.splitlines(keepends=True)
        (index,) = [i for i, line in enumerate(lines) if line.lstrip().startswith(OUT_STORE)]
        lines[index] = lines[index].rstrip()[:-1] + store + ")\n"
        source = "".join(lines)
    return source


@functools.cache
def hinted_kernel(spec: KernelSpec, phase: int, hints: str):
    load1, load2, store2 = HINTS[hints]
    load, store = (load1, "") if phase == 1 else (load2, store2)
    return load_kernel(spec.name, hinted(kernel_source(spec), load, store))


def launcher(spec: KernelSpec, hints: str | None = None):
    def run(x, w, s):
        outputs = runtime.allocate_outputs(spec, x, False)
        weight = w if spec.producer != "quant" else None
        launches = runtime.per_tensor_launches(spec, x, None, weight, outputs, 1e-6)
        for phase, (launched, launch) in enumerate(launches, 1):
            kernel = runtime.compiled_kernel(launched)
            kernel = hinted_kernel(launched, phase, hints) if hints else kernel
            kernel[launch.grid](*launch.args, num_warps=launch.num_warps)
        return outputs[0], outputs[2]

    return run


def probe_one(form: str, hidden: int, tokens: int, rounds: int) -> list[str]:
    spec = KernelSpec.decode(SPECS[form])
    (x, w, s), inductor = norm_quant_case("per_tensor", hidden, tokens)  # s: unused
    if form == "standalone":
        inductor = torch.compile(lambda x, w, s: quant_torch("per_tensor", x, s), dynamic=False)
    candidates = {"copy": lambda x, w, s: x.clone(), "inductor": inductor,
                  "generated": launcher(spec)}  # fmt: skip
    candidates |= {name: launcher(spec, name) for name in HINTS}
    expected = candidates["generated"](x, w, s)
    for name in HINTS:
        for got, want in zip(candidates[name](x, w, s), expected, strict=True):
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), (form, name)
    times = compare(candidates, rounds, (x, w, s))
    moved = x.numel() * 2 + sum(t.numel() * t.element_size() for t in expected)
    return copy_share_row(
        [form, str(hidden), str(tokens)],
        times,
        ["generated", *HINTS],
        "generated",
        moved,
        4 * x.numel(),
    )


def main() -> None:
    parser = sizes_parser([4096, 8192], rounds=5)
    parser.set_defaults(tokens=[2048, 4096, 8192, 16384])
    parser.add_argument("--forms", nargs="+", default=list(SPECS), choices=list(SPECS))
    args = parser.parse_args()
    rows = [probe_one(form, h, t, args.rounds) for form in args.forms for h in args.hidden
            for t in args.tokens]  # fmt: skip
    print(append_results(
        "dynamic per-tensor fp8 with L2 eviction hints (probe), kernel alone, bf16, us "
        "(x generated, share of a copy's bandwidth)",
        ["form", "hidden", "T", "copy", "Inductor", "generated", *HINTS], rows,
        notes="bench/per_tensor_l2_probe.py: `keep`: phase 1 loads with evict_last; "
        "`keep+stream`: also phase 2 loads with evict_first and stores streaming (.cs). "
        "`norm`: rms_norm + the quant, no residual.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
