"""Probe: rms_norm + nvfp4 over rows of 3 to 8 pieces of 1024 columns held as pieces
(kernel_spec.pieces_body, 4 warps) against the row in one BLOCK (7168 padded to 8192
lanes), kernel alone over rotating inputs, beside Inductor, in one process. Also the
one-BLOCK kernel with its block scales stored by the threads that hold them
(quant.NVFP4_SCALES_IN_PLACE, which the pieces take) instead of by tl.store.

    python bench/nvfp4_pieces_probe.py [--hidden 4096 5120 7168 8192] [--tokens 4096 16384]

Every candidate runs at every width and row count given (irfuse takes the pieces where
runtime.pieces_of says). sm_90 SASS (Triton 3.6, bench/sass.py), instructions a thread:
7168 columns in one BLOCK (8 warps) 920 for 28 columns, in pieces 1400 for 56 (96
registers); 8192 in one BLOCK 920 for 32, in pieces 1552 for 64 (120 registers). The two
add the norm's squares in another order, so a byte may differ where a sum's last bit
does; the probe checks that they agree on at least 99.9% of the bytes. Appends a table.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import append_results, compare, sizes_parser  # noqa: E402
from quant_schemes import assert_bytes_agree, norm_quant_case, nvfp4_norm_launcher  # noqa: E402

import irfuse.lowering.runtime as runtime  # noqa: E402
from irfuse.kernels import quant as quant_pieces  # noqa: E402
from irfuse.lowering.kernel_cache import load_kernel  # noqa: E402
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source  # noqa: E402

SPEC = KernelSpec.decode("rms_norm/plain/model/nvfp4")


@functools.cache
def scales_in_place_kernel():
    """The one-BLOCK kernel with its scales stored as the pieces store them."""
    source = kernel_source(SPEC)
    assert source.count(quant_pieces.NVFP4_SCALES_STORE) == 1
    source = source.replace(quant_pieces.NVFP4_SCALES_STORE, quant_pieces.NVFP4_SCALES_IN_PLACE)
    imports = "import triton.language as tl\n"
    return load_kernel(SPEC.name, source.replace(imports, imports + quant_pieces.STORE_IN_PLACE))


def probe_one(hidden: int, tokens: int, rounds: int) -> list[str]:
    inputs, compiled = norm_quant_case("nvfp4", hidden, tokens)
    candidates = {
        "inductor": compiled,
        "one block": nvfp4_norm_launcher(SPEC),
        "in place": nvfp4_norm_launcher(SPEC, scales_in_place_kernel()),
    }
    pieces = hidden // runtime.PIECE_COLS
    if hidden == pieces * runtime.PIECE_COLS and 2 < pieces <= 8:
        candidates["pieces"] = nvfp4_norm_launcher(dataclasses.replace(SPEC, pieces=pieces))
    if hidden % 2048 == 0 and 2 < hidden // 2048 <= 4:
        wide = dataclasses.replace(SPEC, pieces=hidden // 2048)
        candidates["pieces of 2048"] = nvfp4_norm_launcher(wide, config=(2048, 8))
    want = candidates["one block"](*inputs)
    for name in candidates.keys() - {"inductor", "one block"}:
        assert_bytes_agree(candidates[name](*inputs), want, (name, hidden, tokens))
    times = compare(candidates, rounds, inputs)
    old = times["one block"]
    block, warps = runtime.spec_launch_config(SPEC, tokens, hidden)
    row = [str(hidden), str(tokens), f"{block}x{warps}w", f"{times['inductor']:.2f}",
           f"{old:.2f}", f"{times['in place']:.2f} ({old / times['in place']:.3f}x)"]  # fmt: skip
    for name in ("pieces", "pieces of 2048"):
        new = times.get(name)
        row.append(f"{new:.2f} ({old / new:.3f}x)" if new else "-")
    print(row, flush=True)
    return row


def main() -> None:
    args = sizes_parser([4096, 5120, 7168, 8192], rounds=3).parse_args()
    rows = [probe_one(h, t, args.rounds) for h in args.hidden for t in args.tokens]
    print(append_results(
        "rms_norm + nvfp4, the row in pieces of 1024 columns or in one BLOCK (probe), kernel "
        "alone, bf16, us",
        ["hidden", "T", "one BLOCK's config", "Inductor", "one BLOCK",
         "scales in place (x one BLOCK)", "pieces, 1024 x 4w (x one BLOCK)",
         "pieces, 2048 x 8w (x one BLOCK)"],
        rows,
        notes="bench/nvfp4_pieces_probe.py: `scales in place`: the one-BLOCK kernel with "
        "quant.NVFP4_SCALES_IN_PLACE; `pieces`: kernel_spec.pieces_body, which irfuse "
        "runs where runtime.pieces_of says.",
    ))  # fmt: skip


if __name__ == "__main__":
    main()
