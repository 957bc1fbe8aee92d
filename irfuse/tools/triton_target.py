"""`-t triton`: print the generated Triton source of every op that lowers to a kernel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.utils.target import Target

from irfuse.dialects.irfuse import QuantProducer
from irfuse.lowering.to_triton import NoKernel, spec_for
from irfuse.transforms.report import location


@dataclass(frozen=True)
class TritonTarget(Target):
    name = "triton"

    def emit(self, ctx: Context, module: ModuleOp, output: IO[str]) -> None:
        emitted: set[str] = set()
        for op in module.walk():
            if not isinstance(op, QuantProducer):
                continue
            try:
                spec = spec_for(op)
            except NoKernel as reason:
                output.write(f"# {location(op)} = {op.name}: {reason}\n\n")
                continue
            output.write(f"# {location(op)} = {op.name} -> kernel {spec.name}\n")
            if spec.name not in emitted:
                emitted.add(spec.name)
                output.write(spec.source() + "\n")
