"""irfuse op -> the kernel it lowers to (a KernelSpec or AttentionKernel, whose source
irfuse/lowering/kernel_spec.py generates); NoKernel when it has none."""

from __future__ import annotations

from xdsl.ir import Operation

from irfuse.dialects.irfuse import (
    AttentionOp,
    FusedAddRmsNormOp,
    QuantOp,
    RmsNormAddOp,
    RmsNormOp,
    weight_form,
)
from irfuse.kernels.attention import (
    DECODE_MAX_ROWS,
    DECODE_ONLY,
    HEAD_DIM_RULE,
    NEGATIVE_SCALE,
    holds_token_rows,
    takes_head_dim,
)
from irfuse.kernels.attention import EPILOGUES as ATTENTION_EPILOGUES
from irfuse.kernels.norm import MAX_COLS
from irfuse.kernels.quant import parse_scheme
from irfuse.lowering.kernel_spec import AttentionKernel, KernelSpec


class NoKernel(Exception):
    """The op has no generated kernel (it runs as its reference op)."""


def spec_for(op: Operation) -> KernelSpec | AttentionKernel:
    """The kernel an irfuse op lowers to; NoKernel if it has none yet."""
    spec = _spec(op)
    if isinstance(spec, KernelSpec):
        shape = op.operands[0].type.get_shape()
        if not shape or shape[-1] > MAX_COLS:
            raise NoKernel(f"no kernel for the shape {list(shape)} (hidden size <= {MAX_COLS})")
        if parse_scheme(spec.quant)[2] and len(shape) != 2:
            raise NoKernel(f"column-major group scales: kernels for [T, K] only, got {list(shape)}")
    return spec


def _spec(op: Operation) -> KernelSpec | AttentionKernel:
    if isinstance(op, AttentionOp):
        quant_attr = op.output_quant()
        epilogue = "none" if quant_attr is None else quant_attr.text
        if epilogue not in ATTENTION_EPILOGUES:
            raise NoKernel(f"no attention kernel for a {epilogue} epilogue yet")
        dims = (op.q.type.get_shape()[-1], op.v.type.get_shape()[-1])
        if not all(takes_head_dim(d) for d in dims):
            raise NoKernel(f"no attention kernel for head dims {dims} ({HEAD_DIM_RULE})")
        if (scale := op.scale.value.data) < 0:
            raise NoKernel(f"no attention kernel for the scale {scale} ({NEGATIVE_SCALE})")
        _, hq, sq, _ = op.q.type.get_shape()
        if epilogue in DECODE_ONLY and not holds_token_rows(sq, hq, op.k.type.get_shape()[1]):
            raise NoKernel(
                f"no attention kernel for a {epilogue} epilogue past Hq/Hkv * Sq = "
                f"{DECODE_MAX_ROWS} rows per kv head, or at symbolic heads or query length "
                "(only the decode kernel holds a token's whole row)"
            )
        return AttentionKernel(epilogue)
    if isinstance(op, QuantOp):  # every scheme has a standalone kernel
        return KernelSpec("quant", quant=op.quant.text)
    if isinstance(op, RmsNormAddOp):
        return KernelSpec("rms_norm_add", weight_form(op), op.quant.text)
    if isinstance(op, (RmsNormOp, FusedAddRmsNormOp)):
        quant_attr = op.output_quant()
        scheme = "none" if quant_attr is None else quant_attr.text
        mode = weight_form(op)
        producer = "rms_norm" if isinstance(op, RmsNormOp) else "fused_add_rms_norm"
        norm_out = "fp32" if op.unrounded else "model"
        rounded_sum = isinstance(op, FusedAddRmsNormOp) and op.rounded_sum is not None
        normed_x = isinstance(op, FusedAddRmsNormOp) and op.x_weight is not None
        return KernelSpec(
            producer,
            mode,
            scheme,
            norm_out,
            op.value is not None,
            rounded_sum=rounded_sum,
            normed_x=normed_x,
        )
    raise NoKernel(f"no kernel for {op.name} yet")
