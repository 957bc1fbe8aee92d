"""fuse-add-rms-norm: fold a residual add into the RMSNorm that reads it.

Matches `h = aten.add.Tensor(a, b)` (alpha 1, no broadcasting) feeding
`irfuse.rms_norm(h, w)` without an output quant. Guards: `a`, `b` and `h` have one type;
the norm has no quant yet; the fused op can be placed where `a`, `b`, `w` are defined
and before every other reader of `h`. Replacement: `irfuse.fused_add_rms_norm(a, b, w)`
whose `residual_out` replaces `h` everywhere else, with `rounded_sum`: the norm reads the
sum rounded to the model dtype, as the graph's add leaves it, so the fused op computes
exactly what the graph does (a direct `irfuse.fused_add_rms_norm` call keeps NUMERICS.md's
unrounded fp32 sum). It also moves fewer bytes when the norm must be read twice: a
per-tensor quant's second kernel re-reads `residual_out` instead of a stored value.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, UnitAttr
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from irfuse.dialects.irfuse import FusedAddRmsNormOp, RmsNormOp
from irfuse.transforms import report
from irfuse.transforms.match import (
    alpha_is_one,
    call,
    fused_insertion_point,
    own_properties,
    tensor_arg,
)

NAME = "fuse-add-rms-norm"


class FuseAddRmsNormPattern(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: RmsNormOp, rewriter: PatternRewriter) -> None:
        add = call(op.x, "aten.add.Tensor")
        if add is None or op.quant is not None:
            return
        a, b = tensor_arg(add, 0), tensor_arg(add, 1)
        if a is None or b is None:
            return
        if not alpha_is_one(add):
            report.rejected(NAME, add, "add with alpha != 1")
            return
        if not (a.type == b.type == op.x.type):
            report.rejected(NAME, add, f"add of {a.type} and {b.type} broadcasts or casts")
            return
        eps = [op.eps_value] if op.eps_value is not None else []
        before = fused_insertion_point([add, op], [a, b, op.weight, *eps])
        if before is None:
            report.rejected(NAME, add, "no place for the fused op: the sum is read in between")
            return
        props = own_properties(op)
        props["rounded_sum"] = UnitAttr()  # the graph's add rounds the sum
        new = FusedAddRmsNormOp.build(
            operands=[a, b, op.weight, [], [], eps, []],
            result_types=[op.y.type, add.results[0].type, [], []],
            properties=props,
        )
        rewriter.insert(new, InsertPoint.before(before))
        new.y.name_hint = op.y.name_hint
        new.residual_out.name_hint = add.results[0].name_hint
        rewriter.replace_all_uses_with(op.y, new.y)
        rewriter.replace_all_uses_with(add.results[0], new.residual_out)
        rewriter.erase(op)
        rewriter.erase(add)
        report.fused(NAME)


@dataclass(frozen=True)
class FuseAddRmsNorm(ModulePass):
    name = NAME

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(FuseAddRmsNormPattern(), apply_recursively=False).rewrite_module(op)
