"""`-t triton`: print the generated Triton source of every op that lowers to a kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.utils.target import Target

from irfuse.dialects.irfuse import QuantProducer
from irfuse.lowering.kernel_spec import KernelSpec, launched_kernels
from irfuse.lowering.to_triton import NoKernel, spec_for
from irfuse.transforms.report import location


@dataclass(frozen=True)
class TritonTarget(Target):
    name = "triton"

    def emit(self, ctx: Context, module: ModuleOp, output: IO[str]) -> None:
        emitted: set[str] = set()
        producers = [op for op in module.walk() if isinstance(op, QuantProducer)]
        if not producers:  # say so, rather than print nothing
            output.write("# no irfuse op here lowers to a kernel\n")
        for op in producers:
            try:
                spec = spec_for(op)
            except NoKernel as reason:
                output.write(f"# {location(op)} = {op.name}: {reason}\n\n")
                continue
            kernels = launched_kernels(spec) if isinstance(spec, KernelSpec) else (spec,)
            names = " then ".join(kernel.name for kernel in kernels)
            output.write(f"# {location(op)} = {op.name} -> kernel {names}\n")
            for kernel in kernels:
                if kernel.name not in emitted:
                    emitted.add(kernel.name)
                    output.write(kernel.source() + "\n")
