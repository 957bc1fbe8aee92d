"""fuse-norm-add-quant: fold a post-norm's residual add and the quant of its sum into one
op (OLMo 2's `h = r + norm(x)`, then the next projection's quant of `h`).

Matches `irfuse.quant(h)` where `h = aten.add.Tensor(r, y)` (or `(y, r)`) and
`y = irfuse.rms_norm(x, w)`, as the raise passes leave a post-norm.
Guards: the add has alpha 1 and adds two tensors of `h`'s type (no broadcast, no cast);
the norm has no quant, no kept value and rounds to the model dtype (the add reads it so);
`y` has no other reader; the fused op can be placed where its operands are defined and
before every other reader of `h` (the next residual add reads it after the block).
Replacement: one `irfuse.rms_norm_add(x, r, w)` with the quant, whose `residual_out`
replaces `h` everywhere else: its kernel normalises x, adds the residual, stores the sum
and quantizes it in one pass over the row, rounding as the graph's ops do.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from irfuse.dialects.aten import CallOp
from irfuse.dialects.irfuse import QuantOp, RmsNormAddOp, RmsNormOp
from irfuse.transforms import report
from irfuse.transforms.match import (
    alpha_is_one,
    call,
    fused_insertion_point,
    own_properties,
    tensor_arg,
)

NAME = "fuse-norm-add-quant"


@dataclass(frozen=True)
class PostNorm:
    """`h = add(residual, norm.y)`: the norm and the add of a post-norm."""

    norm: RmsNormOp
    add: CallOp
    residual: SSAValue


def post_norm(h: SSAValue) -> PostNorm | str | None:
    """The post-norm whose sum `h` is (None: `h` is no residual add of a norm; a string:
    why that one cannot fuse)."""
    add = call(h, "aten.add.Tensor")
    if add is None:
        return None
    a, b = tensor_arg(add, 0), tensor_arg(add, 1)
    norms = [v for v in (a, b) if v is not None and isinstance(v.owner, RmsNormOp)]
    if a is None or b is None or not norms or a is b:
        return None
    norm = norms[0].owner
    assert isinstance(norm, RmsNormOp)
    residual = b if norms[0] is a else a
    if not alpha_is_one(add):
        return "the residual add has alpha != 1"
    if not (a.type == b.type == h.type):
        return f"the residual add of {a.type} and {b.type} broadcasts or casts"
    if norm.quant is not None or norm.value is not None:
        return "the norm is quantized itself"
    if norm.unrounded is not None:
        return "the norm's result stays fp32 (the add would not be the model dtype's)"
    if not norm.y.has_one_use():
        return f"the norm's result %{norm.y.name_hint} is also read elsewhere"
    return PostNorm(norm, add, residual)


class FuseNormAddQuantPattern(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: QuantOp, rewriter: PatternRewriter) -> None:
        found = post_norm(op.x)
        if found is None:
            return
        if isinstance(found, str):
            report.rejected(NAME, op, found)
            return
        norm, add = found.norm, found.add
        scales = [op.quant_scale] if op.quant_scale is not None else []
        eps = [norm.eps_value] if norm.eps_value is not None else []
        operands = [norm.x, found.residual, norm.weight, *eps, *scales]
        before = fused_insertion_point([norm, add, op], operands)
        if before is None:
            report.rejected(NAME, op, "no place for the fused op: the sum is read in between")
            return
        new = _fused(norm, found.residual, op)
        rewriter.insert(new, InsertPoint.before(before))
        new.y.name_hint, new.residual_out.name_hint = op.out.name_hint, op.x.name_hint
        rewriter.replace_all_uses_with(op.out, new.y)
        if op.scale_out is not None:
            assert new.scale_out is not None
            new.scale_out.name_hint = op.scale_out.name_hint
            rewriter.replace_all_uses_with(op.scale_out, new.scale_out)
        rewriter.erase(op)
        rewriter.replace_all_uses_with(add.results[0], new.residual_out)
        rewriter.erase(add)
        rewriter.erase(norm)
        report.fused(NAME)


def _fused(norm: RmsNormOp, residual: SSAValue, quant: QuantOp) -> RmsNormAddOp:
    props = own_properties(norm)
    props["quant"] = quant.quant
    return RmsNormAddOp.build(
        operands=[
            norm.x,
            residual,
            norm.weight,
            [norm.eps_value] if norm.eps_value is not None else [],
            [quant.quant_scale] if quant.quant_scale is not None else [],
        ],
        result_types=[
            quant.out.type,
            quant.x.type,
            [quant.scale_out.type] if quant.scale_out is not None else [],
        ],
        properties=props,
    )


@dataclass(frozen=True)
class FuseNormAddQuant(ModulePass):
    name = NAME

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        walker = PatternRewriteWalker(FuseNormAddQuantPattern(), apply_recursively=False)
        walker.rewrite_module(op)
