"""PTX of generated norm kernels compiled for an H100 (sm_90), on any machine: Triton
compiles down to PTX without a GPU. Run as a script (`python -m tests.sm90_ptx
SPEC:DTYPE[:BLOCK:WARPS[:aligned[:PIECES[:ROWS[:full]]]]] ...`: JSON {arg: ptx} on
stdout) in a process without TRITON_INTERPRET, under which Triton's own library functions
(tl.sum's combine) are interpreter wrappers the compiler rejects."""

from __future__ import annotations

import dataclasses
import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from irfuse.lowering.kernel_cache import load_kernel
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source

SM90 = GPUTarget("cuda", 90, 32)
CONSTEXPRS = {"BLOCK": 8192, "HAS_SCALE": False, "INTERPRET": False}
NUM_WARPS = 16


def ptx(
    spec_text: str, dtype: str, block: str = "", warps: str = "", aligned: str = "",
    pieces: str = "", rows: str = "", full: str = "",
) -> str:  # fmt: skip
    """The PTX of kernel_norm's kernel `spec_text` on `dtype` rows (fp8 out, or nvfp4's
    bytes), a program of `block` columns (8192) and `warps` warps (NUM_WARPS); `aligned`:
    with its pointers and integers divisible by 16, as a launch on aligned rows specialises
    them (then its loads vectorise); `pieces`: the kernel holding a row in that many
    pieces of `block` columns (runtime.pieces_of); `rows`: that many rows a program
    (runtime.rows_per_program_of); `full`: n_cols as BLOCK (runtime.full_block_of)."""
    spec = dataclasses.replace(
        KernelSpec.decode(spec_text), pieces=int(pieces or 0), rows_per_program=int(rows or 0),
        full_block=bool(full),
    )  # fmt: skip
    kernel = load_kernel(spec.name, kernel_source(spec))
    signature = {}
    nvfp4 = spec.quant == "nvfp4"
    for name in kernel.arg_names:
        fp32_pointer = name in ("scale_ptr", "scale_out_ptr") or (
            name == "weight_ptr" and spec.weight_mode == "gemma"
        )
        if name in CONSTEXPRS:
            signature[name] = "constexpr"
        elif nvfp4 and name in ("out_ptr", "scale_out_ptr"):  # packed codes, e4m3 bytes
            signature[name] = "*u8"
        elif fp32_pointer:
            signature[name] = "*fp32"
        elif name == "out_ptr" and spec.quant != "none":
            signature[name] = "*fp8e4nv"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}"
        else:
            signature[name] = "fp32" if name in ("eps", "x_eps") else "i32"
    constexprs = {**CONSTEXPRS, "BLOCK": int(block or CONSTEXPRS["BLOCK"])}
    options = {"num_warps": int(warps or NUM_WARPS)}
    names = list(signature)
    divisible = [(names.index(name),) for name, kind in signature.items()
                 if aligned and (kind.startswith("*") or kind == "i32")]  # fmt: skip
    attrs = {arg: [["tt.divisibility", 16]] for arg in divisible}
    source = ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=SM90, options=options).asm["ptx"]


if __name__ == "__main__":
    json.dump({arg: ptx(*arg.split(":")) for arg in sys.argv[1:]}, sys.stdout)
