"""fuse-rms-norm-quant: move a quantization into the epilogue of the op that produces
its input.

Matches `irfuse.quant(y)` where `y` is the first result of a quant producer (here
`irfuse.rms_norm` and `irfuse.fused_add_rms_norm`) that has no output quant yet.
Guards: the scheme has a fused kernel for that producer (`NORM_EPILOGUES`); the fused op
can be placed where the scale is defined and before every reader of the producer's
other results. If `y` is also read unquantized, the norm kernel writes it too (the
`value` result: one pass over memory instead of a second kernel reading it back).
Replacement: the producer with `quant` set, the quant's scale operand and scale result
(and `value`); its first result now has the quantized type. The same pattern serves any
QuantProducer once a kernel exists for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from irfuse.dialects.irfuse import (
    DYNAMIC,
    FusedAddRmsNormOp,
    QuantAttr,
    QuantOp,
    QuantProducer,
    RmsNormOp,
)
from irfuse.transforms import report
from irfuse.transforms.fuse_norm_add_quant import PostNorm, post_norm
from irfuse.transforms.match import (
    F32,
    VIEWS,
    call,
    cast_of,
    fused_insertion_point,
    operands_with,
    own_properties,
    rank,
    shape,
    tensor_arg,
)

# per_tensor's grid-wide amax makes its fused form two kernels. After a plain norm the
# second normalises x again with the first one's rstd (5 bytes per element against the
# unfused pair's 7), and after the graph's add (`rounded_sum`) it normalises
# `residual_out` alike (9 bytes). After a direct fused_add_rms_norm (the unrounded sum)
# it reads a value the first one stored: 11 bytes against the unfused irfuse pair's 13,
# so fused is the faster of the two at every size (bench/RESULTS.md).
_NORM_SCHEMES = frozenset({"static", "per_token", "per_tensor", "per_group", "nvfp4"})
NORM_EPILOGUES: dict[str, frozenset[str]] = {
    RmsNormOp.name: _NORM_SCHEMES,
    FusedAddRmsNormOp.name: _NORM_SCHEMES,
}


def epilogue_source(value: SSAValue, scheme: str) -> tuple[SSAValue, list[Operation]] | None:
    """The norm result a quant of `value` can end as the epilogue of, and the ops between
    (to erase once dead): `value` itself, or the [..., K] norm result that `value`
    flattens (flattening_of). None if there is none."""
    if can_take_epilogue(value, scheme):
        return value, []
    found = flattening_of(value) if scheme != "nvfp4" else None
    return found if found is not None and can_take_epilogue(found[0], scheme) else None


def flattening_of(value: SSAValue) -> tuple[SSAValue, list[Operation]] | None:
    """The [..., K] value (rank 3 or more) that `value` flattens to [T, K] (a model's
    linear flattening its input first; `y.reshape(-1, K)`, also of `y.float()` where only
    the view reads the cast), and the ops between; None if `value` is no such view."""
    view = call(value, *VIEWS)
    y = tensor_arg(view, 0) if view is not None else None
    if view is None or y is None:
        return None
    ops: list[Operation] = [view]
    cast = cast_of(y)
    if cast is not None and cast[1] == F32 and y.has_one_use():  # view(y.float())
        ops.append(y.owner)  # type: ignore[arg-type]
        y = cast[0]
    if rank(value) != 2 or rank(y) < 3:
        return None
    k, k_flat = shape(y)[-1], shape(value)[-1]  # type: ignore[index]
    if DYNAMIC in (k, k_flat) or k != k_flat:
        return None
    return y, ops


def identical_quant(
    source: SSAValue, quant: QuantAttr, scale: SSAValue | None, types: list[Attribute]
) -> QuantOp | None:
    """A quant already raised on `source` that computes what a new one would (the same
    scheme, scale operand and result types: a model's q, k and v projections each
    quantizing the same normalised value): the raise passes reuse its results instead of
    raising a second one (which no producer could also take as its epilogue)."""
    for use in source.uses:
        op = use.operation
        if (
            isinstance(op, QuantOp)
            and op.x is source
            and op.quant == quant
            and op.quant_scale is scale
            and [r.type for r in op.results] == types
        ):
            return op
    return None


def can_take_epilogue(value: SSAValue, scheme: str) -> bool:
    """Whether `value` is the first result of a norm that can end with `scheme`, or a
    post-norm's residual sum (fuse-norm-add-quant; every scheme): what the raise passes ask
    before raising a quant that only a fusion would make pay."""
    if isinstance(post_norm(value), PostNorm):
        return True
    owner = value.owner
    return (
        isinstance(owner, QuantProducer)
        and scheme in NORM_EPILOGUES.get(owner.name, ())
        and value is owner.results[0]
        and owner.output_quant() is None
    )


@dataclass
class FuseQuantIntoProducer(RewritePattern):
    pass_name: str
    epilogues: dict[str, frozenset[str]] = field(default_factory=dict)

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: QuantOp, rewriter: PatternRewriter) -> None:
        source, between = _flattened_source(op)
        producer = source.owner
        if not isinstance(producer, QuantProducer) or producer.name not in self.epilogues:
            return
        if source is not producer.results[0] or producer.output_quant() is not None:
            return
        scheme = op.quant.scheme
        if scheme not in self.epilogues[producer.name]:
            report.rejected(
                self.pass_name, op, f"no fused kernel for {producer.name} + {scheme} quant yet"
            )
            return
        own = {op, *between}  # the flattening ops read by the quant alone (erased with it)
        keep_value = any(use.operation not in own for use in source.uses)
        if keep_value and not isinstance(producer, (RmsNormOp, FusedAddRmsNormOp)):
            report.rejected(
                self.pass_name, op, f"%{source.name_hint} is also read unquantized elsewhere"
            )
            return
        scales = [op.quant_scale] if op.quant_scale is not None else []
        before = fused_insertion_point([producer, *between, op], [*producer.operands, *scales])
        if before is None:
            report.rejected(self.pass_name, op, "no place for the fused op")
            return
        new = _with_quant(producer, op, keep_value)
        rewriter.insert(new, InsertPoint.before(before))
        if keep_value:  # the other readers of the unquantized value read the kept copy
            new.value.name_hint = source.name_hint
            rewriter.replace_uses_with_if(source, new.value, lambda use: use.operation not in own)
        old_results = [op.out, *producer.results[1:], *([op.scale_out] if op.scale_out else [])]
        for old, result in zip(old_results, new.results, strict=False):
            result.name_hint = old.name_hint
            rewriter.replace_all_uses_with(old, result)
        rewriter.erase(op)
        for flattening in between:  # the view, then the cast it read
            rewriter.erase(flattening)
        rewriter.erase(producer)
        report.fused(self.pass_name)


def two_dim_only(quant: QuantAttr) -> bool:
    """Whether `quant`'s kernels take 2-D rows only (nvfp4, column-major group scales):
    none ends a norm of [B, S, K] hidden states flattened for it."""
    return quant.scheme == "nvfp4" or bool(quant.column_major.data)


def _flattened_source(quant: QuantOp) -> tuple[SSAValue, list[Operation]]:
    """The value `quant` quantizes as a producer would take it: its input, or the
    [..., K] norm result its [T, K] input flattens (a torch.ops.irfuse quant of a model's
    hidden states that a linear flattens first: epilogue_source), with the ops between
    that only the quant reads (the view, then the cast it reads: erased with the quant;
    one read elsewhere too stays, reading the kept value)."""
    if isinstance(quant.x.owner, QuantProducer) or two_dim_only(quant.quant):
        return quant.x, []
    found = epilogue_source(quant.x, quant.quant.scheme)
    if found is None:
        return quant.x, []
    source, between = found
    only_quant: list[Operation] = []
    readers: set[Operation] = {quant}
    for op in between:
        if not all(use.operation in readers for use in op.results[0].uses):
            break
        only_quant.append(op)
        readers.add(op)
    return source, only_quant


def _with_quant(producer: QuantProducer, quant: QuantOp, keep_value: bool = False) -> Operation:
    """A copy of `producer` that ends with `quant`'s scheme (and, with `keep_value`, also
    returns the unquantized value)."""
    props = own_properties(producer)
    props["quant"] = quant.quant
    operands = operands_with(producer, {"quant_scale": quant.quant_scale})
    result_types: list[object] = []
    for name, _ in type(producer).get_irdl_definition().results:
        value = getattr(producer, name)
        if name == "scale_out":
            result_types.append([quant.scale_out.type] if quant.scale_out is not None else [])
        elif name == "value":
            result_types.append([producer.results[0].type] if keep_value else [])
        elif value is producer.results[0]:
            result_types.append(quant.out.type)
        else:
            result_types.append([] if value is None else value.type)
    return type(producer).build(operands=operands, result_types=result_types, properties=props)


@dataclass(frozen=True)
class FuseRmsNormQuant(ModulePass):
    name = "fuse-rms-norm-quant"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        pattern = FuseQuantIntoProducer(self.name, NORM_EPILOGUES)
        PatternRewriteWalker(pattern, apply_recursively=False).rewrite_module(op)
