"""Shared memory, registers and spills of the split-KV decode kernel for sm_90, compiled on
the CPU (like sass.py: Triton's NVIDIA backend ships ptxas and cuobjdump; no GPU needed).

    python bench/decode_resources.py [--head-dims 128 256] [--block-m 16] [--block-n 64 128]
        [--stages 3] [--mask none|bool|key|fp32] [--wide-offsets]

What split_config's wide-tile rule rests on (twelfth session, Triton 3.9): head dim 256
with 128-key tiles spills 1072 bytes per thread, with 64-key tiles 152. The GPU runs
Triton 3.6, whose figures differ: it lays out more shared memory (head dim 256, 128-key
tiles, 3 stages: 136 KB here, 268 KB on H200, past its 227; lowering's shared_bytes
models 3.6's layout). Launch a config on the GPU before relying on it.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).parent))
from sass import resources as kernel_resources  # noqa: E402

from irfuse.lowering.attention import split_kv_kernel  # noqa: E402

CONSTEXPRS = ("HEAD_DIM", "HEAD_DIM_V", "BLOCK_D", "BLOCK_DV", "BLOCK_M", "BLOCK_N", "CAUSAL",
              "MASK", "KEY_MASK", "SUMMARY", "SUMMARY_BLOCK_N", "WIDE_OFFSETS",
              "INTERPRET")  # fmt: skip
MASKS = {  # --mask: (MASK, KEY_MASK, the mask pointer's type)
    "none": (0, False, "*bf16"),
    "bool": (1, False, "*u8"),
    "key": (1, True, "*u8"),
    "fp32": (2, False, "*fp32"),
}


def signature(fn, mask_type: str) -> dict[str, str]:
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in CONSTEXPRS:
            sig[name] = "constexpr"
        elif name in ("q_ptr", "k_ptr", "v_ptr"):
            sig[name] = "*bf16"
        elif name == "mask_ptr":
            sig[name] = mask_type
        elif name == "mask_tiles_ptr":
            sig[name] = "*i32"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32"
        else:
            sig[name] = "fp32" if name in ("sm_scale", "mask_hidden") else "i32"
    return sig


def resources(
    head_dim: int, block_m: int, block_n: int, stages: int, mask: str, wide: bool = False
) -> str:
    fn = split_kv_kernel()
    kind, key_mask, mask_type = MASKS[mask]
    sig = signature(fn, mask_type)
    tile = triton.next_power_of_2(head_dim)  # as the lowering pads it
    constants = {"HEAD_DIM": head_dim, "HEAD_DIM_V": head_dim, "BLOCK_D": tile,
                 "BLOCK_DV": tile, "BLOCK_M": block_m, "BLOCK_N": block_n, "CAUSAL": 0,
                 "MASK": kind, "KEY_MASK": key_mask, "SUMMARY": False, "SUMMARY_BLOCK_N": 64,
                 "WIDE_OFFSETS": wide, "INTERPRET": False}  # fmt: skip
    names = list(sig)
    aligned = {(names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items() if t[0] == "*"}
    compiled = triton.compile(
        ASTSource(fn, sig, constants, attrs=aligned),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": 4, "num_stages": stages},
    )
    return (
        f"head dim {head_dim}, {block_m}x{block_n} tiles, {stages} stages, mask {mask}"
        f"{', 64-bit offsets' if wide else ''}: {kernel_resources(compiled)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--head-dims", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--block-m", type=int, default=16)
    parser.add_argument("--block-n", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--mask", choices=sorted(MASKS), default="none")
    parser.add_argument("--wide-offsets", action="store_true", help="WIDE_OFFSETS (huge KV)")
    args = parser.parse_args()
    for head_dim in args.head_dims:
        for block_n in args.block_n:
            print(resources(head_dim, args.block_m, block_n, args.stages, args.mask,
                            args.wide_offsets), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
