"""fuse-sandwich-norm: fold a norm whose result only a residual add reads into the
add + norm after it (Gemma's post-attention norm, the add, then its pre-feedforward norm:
a "sandwich").

Matches `p = irfuse.rms_norm(x, w1)` feeding `irfuse.fused_add_rms_norm(p, r, w2)` (or
`(r, p)`) with `rounded_sum`, as fuse-add-rms-norm builds it from the graph's add.
Guards: the first norm has no quant, no kept value and rounds to the model dtype; it
multiplies its weight in the second norm's form (plain, fp32 or Gemma); `p` has no other
reader; the fused op has no first norm yet (where both addends are norms, the first that
passes).
Replacement: one `irfuse.fused_add_rms_norm(x, r, w2) x_weight(w1) {x_eps}` (or
`x_eps(%e)`, an eps read at run time, as the first norm had it), whose kernel normalises
x, adds the residual and normalises the sum in one pass over the row, exactly as the
three ops round (the sum is the same either way round: an fp32 add is commutative).
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

from irfuse.dialects.irfuse import FusedAddRmsNormOp, RmsNormOp, weight_form
from irfuse.transforms import report
from irfuse.transforms.match import operands_with, own_properties

NAME = "fuse-sandwich-norm"


def _refusal(norm: RmsNormOp, fused: FusedAddRmsNormOp) -> str | None:
    """Why `norm`, one addend of `fused`, cannot become its x's norm (None: it can)."""
    if norm.quant is not None or norm.value is not None:
        return "the first norm is quantized"
    if norm.unrounded is not None:
        return "the first norm's result stays fp32 (the add would not be the model dtype's)"
    if weight_form(norm) != weight_form(fused):
        return (
            f"the norms multiply their weights in different forms ({weight_form(norm)}, "
            f"{weight_form(fused)})"
        )
    if not norm.y.has_one_use():
        return f"the first norm's result %{norm.y.name_hint} is also read elsewhere"
    return None


class FuseSandwichNormPattern(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: FusedAddRmsNormOp, rewriter: PatternRewriter) -> None:
        if op.rounded_sum is None or op.x_weight is not None or op.x is op.residual:
            return
        addends = [op.x, op.residual]
        norms = [v.owner for v in addends if isinstance(v.owner, RmsNormOp)]
        refusals = [_refusal(norm, op) for norm in norms]
        if None not in refusals:
            for norm, reason in zip(norms, refusals, strict=True):
                report.rejected(NAME, norm, reason)  # type: ignore[arg-type]
            return
        norm = norms[refusals.index(None)]
        other = op.residual if norm.y is op.x else op.x
        new = _with_x_norm(op, norm, other)
        rewriter.insert(new, InsertPoint.before(op))
        for old, result in zip(op.results, new.results, strict=True):
            result.name_hint = old.name_hint
            rewriter.replace_all_uses_with(old, result)
        rewriter.erase(op)
        rewriter.erase(norm)
        report.fused(NAME)


def _with_x_norm(op: FusedAddRmsNormOp, norm: RmsNormOp, residual: SSAValue) -> FusedAddRmsNormOp:
    """A copy of `op` over `norm`'s input and `residual` that normalises that input first."""
    replaced = {
        "x": norm.x,
        "residual": residual,
        "x_weight": norm.weight,
        "x_eps_value": norm.eps_value,
    }
    operands = operands_with(op, replaced)
    props = own_properties(op)
    if norm.eps is not None:
        props["x_eps"] = norm.eps
    result_types = [[] if r is None else r.type for r in (op.y, op.residual_out)]
    result_types += [[] if r is None else [r.type] for r in (op.scale_out, op.value)]
    return FusedAddRmsNormOp.build(operands=operands, result_types=result_types, properties=props)


@dataclass(frozen=True)
class FuseSandwichNorm(ModulePass):
    name = NAME

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        pattern = FuseSandwichNormPattern()
        PatternRewriteWalker(pattern, apply_recursively=False).rewrite_module(op)
