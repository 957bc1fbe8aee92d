"""irfuse op -> KernelSpec -> Triton source text.

A KernelSpec names a producer body from irfuse/kernels and an epilogue per quant
scheme; `kernel_source` composes them into a readable module whose docstring names
the ops it fuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import Float32Type
from xdsl.ir import Operation

from irfuse.dialects.irfuse import FusedAddRmsNormOp, QuantOp, RmsNormOp
from irfuse.kernels import norm
from irfuse.kernels import quant as quant_pieces

PRODUCERS = ("quant", "rms_norm", "fused_add_rms_norm")
F32 = Float32Type()


class NoKernel(Exception):
    """The op has no generated kernel (it runs as its reference op)."""


@dataclass(frozen=True)
class KernelSpec:
    producer: str  # one of PRODUCERS
    weight_mode: str = "none"  # plain | fp32 | gemma | none (no norm)
    quant: str = "none"  # none | static
    norm_out: str = "model"  # model: the norm rounds to the input dtype | fp32: it does not

    @property
    def name(self) -> str:
        suffix = "" if self.quant == "none" else f"_{self.quant}_fp8"
        mode = "" if self.weight_mode in ("none", "plain") else f"_{self.weight_mode}w"
        out = "_f32out" if self.norm_out == "fp32" else ""
        return f"irfuse_{self.producer}{mode}{out}{suffix}"

    def encode(self) -> str:
        """The string a runtime call carries (see `decode`)."""
        return f"{self.producer}/{self.weight_mode}/{self.norm_out}/{self.quant}"

    @staticmethod
    def decode(text: str) -> KernelSpec:
        producer, weight_mode, norm_out, quant = text.split("/")
        spec = KernelSpec(producer, weight_mode, quant, norm_out)
        if (
            producer not in PRODUCERS
            or quant not in quant_pieces.EPILOGUES
            or norm_out not in ("model", "fp32")
            or weight_mode not in (*norm.WEIGHT, "none")
        ):
            raise ValueError(f"unknown irfuse kernel spec {text!r}")
        return spec

    def describe(self) -> str:
        parts = {
            "quant": [],
            "rms_norm": ["rms_norm"],
            "fused_add_rms_norm": ["add", "rms_norm"],
        }[self.producer]
        if self.weight_mode in ("fp32", "gemma"):
            parts[-1] += f" ({self.weight_mode} weight)"
        if self.quant != "none":
            parts.append(f"{self.quant} fp8 quant")
        return " + ".join(parts)


def spec_for(op: Operation) -> KernelSpec:
    """The kernel an irfuse op lowers to; NoKernel if it has none yet."""
    if isinstance(op, QuantOp):
        if op.quant.scheme != "static":
            raise NoKernel(f"no kernel for a standalone {op.quant.scheme} quant yet")
        return KernelSpec("quant", quant="static")
    if isinstance(op, (RmsNormOp, FusedAddRmsNormOp)):
        quant_attr = op.output_quant()
        scheme = "none" if quant_attr is None else quant_attr.scheme
        if scheme not in quant_pieces.EPILOGUES:
            raise NoKernel(f"no kernel for {op.name} + {scheme} quant yet")
        mode = "gemma" if op.gemma else "fp32" if op.fp32_weight_mul else "plain"
        producer = "rms_norm" if isinstance(op, RmsNormOp) else "fused_add_rms_norm"
        unrounded = op.y.type.element_type == F32 and op.x.type.element_type != F32
        return KernelSpec(producer, mode, scheme, "fp32" if unrounded else "model")
    raise NoKernel(f"no kernel for {op.name} yet")


def kernel_source(spec: KernelSpec) -> str:
    preload, store = quant_pieces.EPILOGUES[spec.quant]
    body = norm.SIGNATURE.format(name=spec.name)
    if spec.producer != "quant":
        body += norm.PRELOAD_WEIGHT
    body += preload
    if spec.producer == "fused_add_rms_norm":
        body += norm.ADD_RESIDUAL
    if spec.producer != "quant":
        norm_dtype = "tl.float32" if spec.norm_out == "fp32" else "model_dtype"
        body += norm.RMS_NORM.format(norm_dtype=norm_dtype) + norm.WEIGHT[spec.weight_mode]
    body += store
    helpers = norm.ROUND_TO + (quant_pieces.ROUND_TO_E4M3 if spec.quant != "none" else "")
    return (
        f'"""irfuse generated kernel {spec.name}.\n\nFuses: {spec.describe()}.\n'
        'One program per row; see irfuse/kernels for the pieces."""\n\n'
        "import triton\nimport triton.language as tl\n"
        f"{helpers}\n{body}"
    )
