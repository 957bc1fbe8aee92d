"""raise-fp8-quant: recognise static per-tensor fp8 quantization written in PyTorch.

Matches (`s` a one-element fp32 scale tensor):

    q = clamp(x_f32 / s, -448, 448).to(float8_e4m3fn)
    q = clamp(x_f32 * reciprocal(s) [* 1.0], -448, 448).to(float8_e4m3fn)

with `clamp` as `aten.clamp` or `clamp_min` + `clamp_max` in either order (Inductor's
form), `x_f32` being `x` cast to fp32 or `x` itself (type promotion against the fp32
scale). Guards: the bounds are exactly -448 and 448; the scale is a one-element fp32
tensor (a Python number as the scale is refused with its reason); the scaled value is
fp32 (not rounded to x's dtype first); intermediates have no other user; unless
`standalone=true`, `x` comes from an irfuse op that can take the quant as its epilogue
(elsewhere Inductor already fuses the quant into the kernel that produces `x`, which
beats a separate quant kernel), or is that op's [..., K] result flattened to [T, K] (a
model's linear flattening its input: the quant then reads the unflattened result and
its own result keeps the graph's [T, K]).
Replacement: `irfuse.quant` with `#irfuse.quant<static>` (computes `x * (1/s)`,
NUMERICS.md); a quant identical to one already raised (same input, scale and type)
reads that one's result instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import Float8E4M3FNType, ModuleOp, TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from irfuse.dialects.aten import CallOp, dtype_name
from irfuse.dialects.irfuse import FLOAT_TYPES, QuantAttr, QuantOp
from irfuse.transforms import report
from irfuse.transforms.fuse_quant import epilogue_source, identical_quant
from irfuse.transforms.match import (
    CASTS,
    F32,
    HOST_SCALE,
    call,
    cast_of,
    const_arg,
    constant_clamp,
    element_type,
    erase_dead,
    escaping_intermediate,
    host_reason,
    on_the_host,
    scaling_of,
    tensor_arg,
)
from irfuse.transforms.raise_dynamic_fp8_quant import computed_from_amax, full_value

NAME = "raise-fp8-quant"
FP8_MAX = 448.0


@dataclass
class StaticQuantMatch:
    """A static fp8 quant chain ending at `root` (the cast to fp8): it quantizes `source`
    with `scale`; `dead_ops` are the chain's other ops (erased once unused)."""

    root: CallOp
    source: SSAValue
    scale: SSAValue
    dead_ops: list[Operation]
    divides: bool  # `x / s` (else `x * reciprocal(s)`)

    @property
    def quant(self) -> QuantAttr:
        """The scheme computing what the graph does: a division is `<static div>`."""
        return QuantAttr("static", divide=self.divides)


def match_static_quant(op: CallOp) -> StaticQuantMatch | str | None:
    """The static quant ending at `op`, a guard failure's reason, or None (no quant)."""
    if op.target.data not in CASTS or len(op.results) != 1:
        return None
    cast = cast_of(op.results[0])
    if cast is None or cast[1] != Float8E4M3FNType():
        return None
    clamp = constant_clamp(cast[0])
    scaling = scaling_of(clamp.x) if clamp is not None else None
    number = _scaled_by_number(clamp.x) if clamp is not None and scaling is None else None
    if number is not None:
        return (
            f"the value is scaled by the constant {number:g} (a Python number, or a tensor "
            "made in forward that the compiler folded): a static scale is a one-element "
            "float32 tensor the model keeps (a module buffer, as serving stacks keep it)"
        )
    if clamp is None or scaling is None:
        return None
    x, scale, scale_ops = scaling
    if isinstance(scale.type, TensorType) and scale.type.get_shape() not in ((1,), ()):
        return None  # a per-row or per-group scale: raise-dynamic-fp8-quant's business
    if computed_from_amax(scale):
        return None  # a dynamic per-tensor scale: raise-dynamic-fp8-quant's too
    reason = _guard(x, scale, (clamp.lo, clamp.hi), [scale_ops[0], *clamp.ops])
    if reason:
        return reason
    if element_type(clamp.x) != F32:  # x / s rounded to x's dtype, then cast: two roundings
        return (
            f"the scaled value is {dtype_name(element_type(clamp.x))}, not float32 (a 0-d "
            "scale does not promote x): the quant would skip its rounding"
        )
    source = x
    x_cast = cast_of(x)
    if x_cast is not None and x_cast[1] == F32 and x.uses.get_length() == 1:
        source = x_cast[0]
    if not isinstance(element_type(source), FLOAT_TYPES):
        return f"input {source.type} is not bf16, fp16 or fp32"
    dead_ops = [*clamp.ops, *scale_ops] + ([x.owner] if source is not x else [])
    divides = call(clamp.x, "aten.div.Tensor") is not None
    return StaticQuantMatch(op, source, scale, dead_ops, divides)  # type: ignore[arg-type]


@dataclass
class RaiseFp8QuantPattern(RewritePattern):
    standalone: bool = False

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: CallOp, rewriter: PatternRewriter) -> None:
        found = match_static_quant(op)
        if isinstance(found, StaticQuantMatch):
            found = host_reason(op) or found
        if isinstance(found, str):
            report.rejected(NAME, op, found)
        if not isinstance(found, StaticQuantMatch):
            return
        through = epilogue_source(found.source, "static")
        if through is None and not self.standalone:
            report.rejected(NAME, op, "no producer to fuse into: left to the inner compiler")
            return
        source, flatten_ops = through or (found.source, [])
        static = found.quant
        same = identical_quant(source, static, found.scale, [op.results[0].type])
        if same is not None:  # the same quant of the same value: one op computes both
            rewriter.replace_all_uses_with(op.results[0], same.out)
            rewriter.erase(op)
        else:
            new = QuantOp.build(
                operands=[source, [found.scale]],
                result_types=[op.results[0].type, []],
                properties={"quant": static},
            )
            rewriter.replace(op, new)
        erase_dead(rewriter, found.dead_ops + flatten_ops)
        report.fused(NAME)


def _scaled_by_number(value: SSAValue) -> float | None:
    """`c` where `value` is `x / c` or `x * c` with a constant number `c` (or a tensor
    constant, which the compiler folds to a one-element `aten.full`)."""
    op = call(value, "aten.div.Tensor", "aten.div.Scalar", "aten.mul.Tensor", "aten.mul.Scalar")
    if op is None or tensor_arg(op, 0) is None:
        return None
    if (full := full_value(tensor_arg(op, 1))) is not None:
        return full[0]
    if tensor_arg(op, 1) is not None:
        return None
    c = const_arg(op, 1)
    return float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else None


def _guard(
    x: SSAValue, scale: SSAValue, bounds: tuple[float | None, float | None], main: list[Operation]
) -> str | None:
    if bounds != (-FP8_MAX, FP8_MAX):
        return f"clamp bounds {bounds} are not the fp8 range (-448, 448)"
    shape = scale.type.get_shape() if hasattr(scale.type, "get_shape") else None
    if element_type(scale) != F32 or shape not in ((1,), ()):
        return f"scale {scale.type} is not a one-element float32 tensor"
    if on_the_host(scale):
        return HOST_SCALE.format(what="scale")
    if element_type(x) is None:
        return f"input {x.type} is not a tensor"
    # the scale's reciprocal may be shared; the main path may not
    if (escaping := escaping_intermediate(main)) is not None:
        return f"intermediate %{escaping.name_hint} has a user outside the quant"
    return None


@dataclass(frozen=True)
class RaiseFp8Quant(ModulePass):
    """`standalone`: also raise quants whose input no irfuse op produces."""

    name = NAME
    standalone: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        pattern = RaiseFp8QuantPattern(self.standalone)
        PatternRewriteWalker(pattern, apply_recursively=False).rewrite_module(op)
