"""Instruction mix of a generated norm / quant kernel in sm_90 SASS, compiled on the CPU.

    python bench/sass.py "quant/none/model/per_token" [--block 8192] [--warps 4]
        [--dtype bf16] [--dump PATH] [--full-block]

Runs anywhere Triton's NVIDIA backend is installed (its wheel ships ptxas and nvdisasm;
no GPU needed), so that a change to the generated source can be checked for what it costs
per element before it is timed on the GPU. Integer arguments are specialised as the
runtime launch specialises them (divisible by 16), so the loads vectorise as they do on
the GPU. The count is per thread over the whole kernel, slow paths included (the
division slow path adds ~100); divide by BLOCK / (32 * warps) for a per-element figure.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import inspect
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from irfuse.lowering import runtime

# SASS lines: "/*0a40*/  @!P0 FFMA R3, ..." -> the opcode's first word
OPCODE = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", re.M)
POINTERS = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def signature(fn, kernel: str, dtype: str) -> dict[str, str]:
    nvfp4 = "nvfp4" in kernel
    out = "*u8" if nvfp4 else ("*fp8e4nv" if kernel.split("/")[-1] != "none" else POINTERS[dtype])
    types = {"x_ptr": POINTERS[dtype], "scale_ptr": "*fp32", "out_ptr": out,
             "scale_out_ptr": "*u8" if nvfp4 else "*fp32"}  # fmt: skip
    sig = {}
    for name in inspect.signature(fn.fn).parameters:
        if name in ("BLOCK", "HAS_SCALE", "INTERPRET"):
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = types.get(name, POINTERS[dtype])
        else:
            sig[name] = "fp32" if name == "eps" else "i32"
    return sig


def disassemble(cubin_bytes: bytes) -> str:
    """sm_90 SASS of a cubin, by the nvdisasm that Triton's NVIDIA backend ships."""
    nvdisasm = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(cubin_bytes)
        cubin.flush()
        return subprocess.run(
            [str(nvdisasm), "-c", cubin.name], capture_output=True, text=True, check=True
        ).stdout


def compile_sm90(source: ASTSource, **options: int):
    """`source` (a Triton or Gluon ASTSource) compiled for sm_90, on any machine."""
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)


def resources(compiled) -> str:
    """A compiled kernel's registers, stack (spills) and shared memory, by cuobjdump."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", cubin.name],
                               capture_output=True, text=True, check=True).stdout  # fmt: skip
    found = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", usage))
    return (f"{found.get('REG')} registers, {found.get('STACK')} B stack, "
            f"{compiled.metadata.shared} B shared")  # fmt: skip


def mix(compiled, top: int = 10) -> str:
    """A compiled kernel's SASS instruction count, shared memory and commonest opcodes."""
    ops = collections.Counter(OPCODE.findall(disassemble(compiled.asm["cubin"])))
    common = ", ".join(f"{op} {n}" for op, n in ops.most_common(top))
    return f"{sum(ops.values())} SASS instructions, {compiled.metadata.shared} B shared; {common}"


def sass(kernel: str, block: int, warps: int, dtype: str, full_block: bool = False) -> str:
    spec = dataclasses.replace(runtime.decode(kernel), full_block=full_block)
    fn = runtime.compiled_kernel(spec)
    sig = signature(fn, kernel, dtype)
    constants = {"BLOCK": block, "HAS_SCALE": False, "INTERPRET": False}
    names = list(sig)
    divisible = {
        (names.index(name),): [["tt.divisibility", 16]]
        for name, kind in sig.items()
        if kind not in ("constexpr", "fp32")
    }
    compiled = compile_sm90(ASTSource(fn, sig, constants, attrs=divisible), num_warps=warps)
    return disassemble(compiled.asm["cubin"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kernel", help='a kernel name, e.g. "quant/none/model/nvfp4"')
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--warps", type=int, default=2)
    parser.add_argument("--dtype", choices=sorted(POINTERS), default="bf16")
    parser.add_argument("--dump", type=Path, default=None, help="write the SASS here")
    parser.add_argument("--full-block", action="store_true", help="n_cols as BLOCK")
    args = parser.parse_args()
    text = sass(args.kernel, args.block, args.warps, args.dtype, args.full_block)
    if args.dump:
        args.dump.write_text(text)
    ops = collections.Counter(OPCODE.findall(text))
    per_thread = args.block / (32 * args.warps)
    print(f"{args.kernel}: {sum(ops.values())} instructions per thread "
          f"({per_thread:g} elements each)")  # fmt: skip
    print(", ".join(f"{op} {n}" for op, n in ops.most_common(24)))


if __name__ == "__main__":
    main()
