"""Probe: is the standalone static fp8 quant's last 0.2%-1.3% against Inductor its tiled
form? The generated kernel runs on a (rows, tiles) grid: a tile index divided by the tiles
of a row, 64-bit row offsets, masked loads and stores. Inductor's kernel of the same
PyTorch is flat: one index over the whole contiguous tensor in 32 bits, unmasked where
the block divides it. The probe is that flat form written by hand with the generated
kernel's arithmetic (x times the correctly rounded 1 / scale, saturating fp8 cast), at
the generated kernel's tile and warps, timed beside both, kernel alone over rotating
inputs. It writes the same bytes (checked). Beside it, `one row`: the generated kernel
itself over the tensor viewed as one row (its tile index and masks kept), where the
row's tiles fit the grid's y axis (65535).

    python bench/static_flat_probe.py [--hidden 4096 7168 8192] [--tokens 4096 16384]
        [--show-inductor] [--configs 512x8 2048x8]

On an H100 (forty-sixth session) the flat kernel ran 0.978x-0.996x Inductor, below the
generated one (0.987x-0.997x): Inductor's kernel of the same form is faster than this
one. `--show-inductor` prints its source (its hints and config are the next lead). It is the
same arithmetic (but a division), flat and unmasked, autotuned between two configs: 1024
columns on 4 warps (the generated kernel's) and 512 on 8. `--configs TILExWARPS ...` times
the generated kernel at those (and any other) tiles and warps beside the rest.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import triton
import triton.language as tl
from torch._inductor.utils import run_and_get_code

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, sizes_parser  # noqa: E402
from quant_schemes import quant_torch  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec  # noqa: E402


@triton.jit
def static_flat(x_ptr, scale_ptr, out_ptr, n, BLOCK: tl.constexpr, EVEN: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # 32-bit: n < 2^31
    inv_scale = tl.math.div_rn(1.0, tl.load(scale_ptr))
    if EVEN:  # the block divides the tensor: no masks
        x = tl.load(x_ptr + offs).to(tl.float32)
        tl.store(out_ptr + offs, (x * inv_scale).to(tl.float8e4nv))
    else:
        x = tl.load(x_ptr + offs, mask=offs < n, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (x * inv_scale).to(tl.float8e4nv), mask=offs < n)


GRID_Y_MAX = 65535  # CUDA's limit on a grid's y (and z) size


def generated(spec: KernelSpec, config: tuple[int, int] | None = None, one_row: bool = False):
    """The generated kernel, or (`one_row`) the same kernel over the tensor viewed as one
    row, at `config` (the tile and warps it takes for the tensor's own rows): flat but for
    the kernel's tile arithmetic and masks."""

    def run(x, s):
        x2 = x.view(1, -1) if one_row else x
        outputs = runtime.allocate_outputs(spec, x2, False)
        launched, launch = runtime.single_launch(
            spec, x2, None, None, s, outputs, 1e-6, config=config
        )
        runtime.run_launch(launched, launch)
        return outputs[0].view(x.shape)

    return run


def flat(block: int, num_warps: int):
    def run(x, s):
        out = torch.empty(x.shape, device=x.device, dtype=torch.float8_e4m3fn)
        n = x.numel()
        static_flat[(triton.cdiv(n, block),)](x, s, out, n, BLOCK=block, EVEN=n % block == 0,
                                              num_warps=num_warps)  # fmt: skip
        return out

    return run


def probe_one(
    hidden: int, tokens: int, rounds: int, show_inductor: bool, configs: list[str]
) -> list[str]:
    spec = KernelSpec.decode("quant/none/model/static")
    block, num_warps = runtime.spec_launch_config(spec, tokens, hidden)
    x = torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16)
    s = torch.tensor([0.05], device="cuda")
    torch._dynamo.reset()
    inductor = torch.compile(lambda x, s: quant_torch("static", x, s), dynamic=False)
    candidates = {"inductor": inductor, "generated": generated(spec),
                  "one row": generated(spec, (block, num_warps), one_row=True),
                  "flat": flat(block, num_warps)}  # fmt: skip
    for config in configs:  # the generated kernel at other tiles and warps
        tile, warps = map(int, config.split("x"))
        candidates[config] = generated(spec, (tile, warps))
    if x.numel() // block > GRID_Y_MAX:  # one row's tiles go down the grid's y axis
        del candidates["one row"]
    if show_inductor:  # its kernel's source and launch config, for what the flat one lacks
        print(run_and_get_code(inductor, x, s)[1][0], flush=True)
    want = candidates["generated"](x, s).view(torch.uint8)
    for name in candidates.keys() - {"inductor", "generated"}:
        assert torch.equal(candidates[name](x, s).view(torch.uint8), want), name
    times = compare(candidates, rounds, (x, s))
    names = ("inductor", "generated", "one row", "flat", *configs)
    row = [str(hidden), str(tokens), f"{block}x{num_warps}w"]
    row += [f"{times[name]:.2f}" if name in times else "-" for name in names]
    row += [f"{times['inductor'] / times[n]:.3f}x" if n in times else "-" for n in names[1:]]
    print(row, flush=True)
    return row


def main() -> None:
    parser = sizes_parser([4096, 7168, 8192], rounds=5)
    parser.add_argument("--show-inductor", action="store_true", help="print its wrapper")
    parser.add_argument("--configs", nargs="*", default=[], help="TILExWARPS, e.g. 512x8")
    args = parser.parse_args()
    rows = [probe_one(h, t, args.rounds, args.show_inductor, args.configs)
            for h in args.hidden for t in args.tokens]  # fmt: skip
    vs = [f"{name} vs Inductor" for name in ("generated", "one row", "flat", *args.configs)]
    print(append_results(
        "standalone static fp8, flat like Inductor's (probe), kernel alone, bf16, us",
        ["hidden", "T", "tile x warps", "Inductor", "generated", "one row", "flat",
         *args.configs, *vs], rows,
        notes="bench/static_flat_probe.py: `one row`: the generated kernel over the tensor "
        "viewed as one row; `flat`: its arithmetic in Inductor's flat form (one 32-bit "
        "index, no masks where the block divides the tensor); both at the generated "
        "kernel's tile and warps; `TxW`: the generated kernel at tile T, W warps.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
