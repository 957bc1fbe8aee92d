"""PTX of generated norm kernels compiled for an H100 (sm_90), on any machine: Triton
compiles down to PTX without a GPU. Run as a script (`python -m tests.sm90_ptx SPEC:DTYPE
...`: JSON {arg: ptx} on stdout) in a process without TRITON_INTERPRET, under which Triton's
own library functions (tl.sum's combine) are interpreter wrappers the compiler rejects."""

from __future__ import annotations

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


def ptx(spec_text: str, dtype: str) -> str:
    """The PTX of kernel_norm's kernel `spec_text` on `dtype` rows of 8192 (fp8 out)."""
    spec = KernelSpec.decode(spec_text)
    kernel = load_kernel(spec.name, kernel_source(spec))
    signature = {}
    for name in kernel.arg_names:
        fp32_pointer = name in ("scale_ptr", "scale_out_ptr") or (
            name == "weight_ptr" and spec.weight_mode == "gemma"
        )
        if name in CONSTEXPRS:
            signature[name] = "constexpr"
        elif fp32_pointer:
            signature[name] = "*fp32"
        elif name == "out_ptr" and spec.quant != "none":
            signature[name] = "*fp8e4nv"
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}"
        else:
            signature[name] = "fp32" if name in ("eps", "x_eps") else "i32"
    source = ASTSource(kernel, signature, constexprs=CONSTEXPRS)
    return triton.compile(source, target=SM90, options={"num_warps": NUM_WARPS}).asm["ptx"]


if __name__ == "__main__":
    json.dump({arg: ptx(*arg.split(":")) for arg in sys.argv[1:]}, sys.stdout)
