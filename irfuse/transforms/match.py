"""Small helpers to match chains of `aten.call` ops (AOT and Inductor post-grad forms)."""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.dialects.builtin import (
    ArrayAttr,
    Float32Type,
    Float64Type,
    IntegerAttr,
    NoneAttr,
    TensorType,
)
from xdsl.dialects.func import FuncOp
from xdsl.ir import Attribute, BlockArgument, Operation, SSAValue
from xdsl.pattern_rewriter import PatternRewriter

from irfuse.dialects.aten import CallOp, RefAttr, scalar
from irfuse.dialects.irfuse import DYNAMIC
from irfuse.frontend.fx_import import HOST_SCALAR, KEPT_DIMS, ON_HOST, ON_HOST_REASON

CASTS = ("prims.convert_element_type.default", "aten._to_copy.default")
VIEWS = ("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default")
MUL = "aten.mul.Tensor"
# a refusal of on_the_host values, whose `what` is a quant's scale or bound
HOST_SCALE = (
    "the {what} is on the host (a 0-d CPU tensor, or computed from a Python number that "
    "dynamic=True made a graph input); a kernel reads a one-element float32 tensor on the "
    "device"
)
F32 = Float32Type()
F64 = Float64Type()


def call(value: SSAValue | None, *targets: str) -> CallOp | None:
    """The `aten.call` of one of `targets` that produces `value`, if any."""
    if value is None:
        return None
    op = value.owner
    if isinstance(op, CallOp) and op.target.data in targets and len(op.results) == 1:
        return op
    return None


def tensor_arg(op: CallOp, index: int) -> SSAValue | None:
    """The operand passed as positional argument `index`, if it is a tensor reference."""
    attr = op.arg(index)
    return op.inputs[attr.index.data] if isinstance(attr, RefAttr) else None


def const_arg(op: CallOp, index: int, name: str | None = None) -> float | int | bool | None:
    attr = op.arg(index)
    if attr is None and name is not None:
        attr = op.kwargs.data.get(name)
    return scalar(attr)


def alpha_is_one(op: CallOp) -> bool:
    """Whether an add / sub `op` has alpha 1: none given, or the constant 1 (a symbolic
    alpha, which dynamo makes of a varying Python number, is not)."""
    attr = op.arg(2)
    if attr is None:
        attr = op.kwargs.data.get("alpha")
    return attr is None or scalar(attr) == 1


def int_list_arg(op: CallOp, index: int) -> list[int] | None:
    attr = op.arg(index)
    if not isinstance(attr, ArrayAttr):
        return None
    values = [scalar(a) for a in attr.data]
    return values if all(isinstance(v, int) for v in values) else None  # type: ignore[misc]


def is_host_scalar(value: SSAValue) -> bool:
    """Whether `value` is a function argument the importer marked as a 0-d CPU tensor."""
    if not isinstance(value, BlockArgument) or not isinstance(
        func := value.owner.parent_op(), FuncOp
    ):
        return False
    marks = func.arg_attrs.data[value.index].data if func.arg_attrs is not None else {}
    return HOST_SCALAR in marks


def keeps_dims(view: Operation, n: int) -> bool:
    """Whether `view` keeps its input's first `n` dims: equal where static (its types
    show it), and where symbolic the same symbols (the importer's KEPT_DIMS; a `?` of the
    type does not tell)."""
    before, after = shape(view.operands[0]), shape(view.results[0])
    if before is None or after is None or min(len(before), len(after)) < n:
        return False
    if DYNAMIC not in after[:n]:
        return before[:n] == after[:n]
    kept = view.attributes.get(KEPT_DIMS)
    return isinstance(kept, IntegerAttr) and kept.value.data >= n


def host_reason(op: Operation) -> str | None:
    """Why the chain ending at `op` is not raised if `op` computes on the host in a graph
    that computes on a device (the importer's ON_HOST): its fused op could not run there,
    and lowering would then leave every fusion of the graph out."""
    return ON_HOST_REASON if ON_HOST in op.attributes else None


def on_the_host(value: SSAValue) -> bool:
    """Whether `value` stays on the host, which a kernel cannot read as a tensor: computed
    there in a graph that computes on a device (the importer's ON_HOST), or a host scalar
    (is_host_scalar: a 0-d CPU tensor input, or a Python number that dynamic=True made
    one) or a dtype cast of one (a cast that names no device keeps it on the host)."""
    if isinstance(value.owner, Operation) and ON_HOST in value.owner.attributes:
        return True
    while (cast := cast_of(value)) is not None:
        if "device" in value.owner.kwargs.data:  # type: ignore[union-attr]
            return False
        value = cast[0]
    return is_host_scalar(value)


def element_type(value: SSAValue) -> Attribute | None:
    return value.type.element_type if isinstance(value.type, TensorType) else None


def rank(value: SSAValue) -> int:
    return value.type.get_num_dims() if isinstance(value.type, TensorType) else -1


def cast_of(value: SSAValue | None) -> tuple[SSAValue, Attribute] | None:
    """`(source, dtype)` if `value` is a pure dtype cast of `source`."""
    op = call(value, *CASTS)
    if op is None or (src := tensor_arg(op, 0)) is None:
        return None
    if op.target.data == CASTS[0]:
        return src, op.arg(1)  # type: ignore[return-value]
    extra = set(op.kwargs.data) - {"dtype", "layout", "device"}
    if extra or "dtype" not in op.kwargs.data or len(op.args.data) != 1:
        return None
    return src, op.kwargs.data["dtype"]


def mul_operands(value: SSAValue | None) -> tuple[SSAValue, SSAValue] | None:
    """The two tensor operands of `aten.mul.Tensor` producing `value`."""
    op = call(value, MUL)
    if op is None:
        return None
    a, b = tensor_arg(op, 0), tensor_arg(op, 1)
    return (a, b) if a is not None and b is not None else None


def scaling_of(value: SSAValue) -> tuple[SSAValue, SSAValue, list[Operation]] | None:
    """(x, scale, ops) for `x / s` or `x * reciprocal(s)` (optionally `* 1.0`), the ops
    from the scaling op up."""
    div = call(value, "aten.div.Tensor")
    if div is not None:
        x, scale = tensor_arg(div, 0), tensor_arg(div, 1)
        return (x, scale, [div]) if x is not None and scale is not None else None
    pair = mul_operands(value)
    if pair is None:
        return None
    for x, inv in (pair, pair[::-1]):
        ops: list[Operation] = [value.owner]  # type: ignore[list-item]
        one = call(inv, MUL)
        if one is not None and const_arg(one, 1) == 1 and tensor_arg(one, 1) is None:
            ops.append(one)
            inv = tensor_arg(one, 0)
        recip = call(inv, "aten.reciprocal.default")
        if recip is not None and (scale := tensor_arg(recip, 0)) is not None:
            return x, scale, ops + [recip]
    return None


def operands_with(op: Operation, replaced: dict[str, SSAValue | None]) -> list[object]:
    """`op`'s operands in its definition's order, as `build` takes them (an absent optional
    one as []), those named in `replaced` replaced."""
    operands: list[object] = []
    for name, _ in type(op).get_irdl_definition().operands:  # type: ignore[attr-defined]
        value = replaced[name] if name in replaced else getattr(op, name)
        operands.append([] if value is None else value)
    return operands


def own_properties(op: Operation) -> dict[str, Attribute]:
    """`op`'s properties but its operand and result segment sizes (which `build` sets)."""
    return {k: v for k, v in op.properties.items() if not k.endswith("SegmentSizes")}


def users(value: SSAValue) -> list[Operation]:
    return [use.operation for use in value.uses]


def escaping_intermediate(chain: list[Operation]) -> SSAValue | None:
    """The first result of `chain[:-1]` read outside `chain` (None if all are private):
    such a value is still needed once the chain is replaced by one op."""
    for op in chain[:-1]:
        for result in op.results:
            if any(user not in chain for user in users(result)):
                return result
    return None


def position(op: Operation) -> int:
    block = op.parent_block()
    assert block is not None
    return block.get_operation_index(op)


def fused_insertion_point(replaced: list[Operation], operands: list[SSAValue]) -> Operation | None:
    """An op among `replaced` before which their fused replacement can go: all `operands`
    are defined earlier and every outside user of a replaced result comes later."""
    block = replaced[0].parent_block()
    assert block is not None
    if any(op.parent_block() is not block for op in replaced):
        return None
    position = {op: i for i, op in enumerate(block.ops)}  # once: an op's index is a scan

    def index_in_block(op: Operation | None) -> int | None:
        """`op`'s index, or its enclosing op's in `block` (IR with regions, from
        irfuse-opt); None outside the block."""
        while op is not None and op.parent_block() is not block:
            op = op.parent_op()
        return position[op] if op is not None else None

    def defined_before(value: SSAValue, index: int) -> bool:
        owner = value.owner
        if not isinstance(owner, Operation):
            return True
        owner_index = index_in_block(owner)
        return owner_index is None or owner_index < index  # outside: an enclosing scope's

    outside_users = [
        user for op in replaced for r in op.results for user in users(r) if user not in replaced
    ]
    use_indices = [index_in_block(u) for u in outside_users]
    if None in use_indices:
        return None
    first_use = min(use_indices, default=None)  # type: ignore[type-var]
    for candidate in sorted(replaced, key=position.__getitem__):
        index = position[candidate]
        if all(defined_before(v, index) for v in operands) and (
            first_use is None or first_use > index
        ):
            return candidate
    return None


CLAMP = "aten.clamp.default"
CLAMP_MIN = "aten.clamp_min.default"
CLAMP_MAX = "aten.clamp_max.default"
_CLAMP_BOUNDS = {CLAMP: ("min", "max"), CLAMP_MIN: ("min",), CLAMP_MAX: ("max",)}


def shape(value: SSAValue) -> tuple[int, ...] | None:
    """The shape of a tensor value (dynamic dims are DYNAMIC), None if not a tensor."""
    return tuple(value.type.get_shape()) if isinstance(value.type, TensorType) else None


def clamp_bounds(op: CallOp) -> tuple[float | None, float | None] | None:
    """`(lo, hi)` of `aten.clamp` / `clamp_min` / `clamp_max` (None: that side is open),
    or None if a bound is not a constant number (a tensor, a symbol)."""
    bounds: dict[str, float | None] = {"min": None, "max": None}
    for index, name in enumerate(_CLAMP_BOUNDS[op.target.data], start=1):
        attr = op.arg(index)
        if attr is None:
            attr = op.kwargs.data.get(name)
        if attr is None or isinstance(attr, NoneAttr):
            continue
        value = scalar(attr)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        bounds[name] = float(value)
    return bounds["min"], bounds["max"]


@dataclass
class Clamp:
    """`x` clamped to `[lo, hi]` (None: that side is open) by `ops`, innermost first."""

    x: SSAValue
    lo: float | None
    hi: float | None
    ops: list[Operation]


def constant_clamp(value: SSAValue | None) -> Clamp | None:
    """`aten.clamp(x, lo, hi)` with constant bounds (either may be absent), or two clamps
    of one side each (`clamp_min` / `clamp_max`, Inductor's form, or one-sided
    `aten.clamp`s, `x.clamp(min=lo).clamp(max=hi)`) in either order."""
    outer = call(value, CLAMP, CLAMP_MIN, CLAMP_MAX)
    outer_bounds = clamp_bounds(outer) if outer is not None else None
    if outer is None or outer_bounds is None:
        return None
    ops, bounds = [outer], [outer_bounds]
    inner = call(tensor_arg(outer, 0), CLAMP, CLAMP_MIN, CLAMP_MAX)
    inner_bounds = clamp_bounds(inner) if inner is not None else None
    if inner_bounds is not None and _opposite_sides(inner_bounds, outer_bounds):
        ops, bounds = [inner, outer], [inner_bounds, outer_bounds]  # type: ignore[list-item]
    x = tensor_arg(ops[0], 0)
    if x is None:
        return None
    lo = next((b[0] for b in bounds if b[0] is not None), None)
    hi = next((b[1] for b in bounds if b[1] is not None), None)
    return Clamp(x, lo, hi, list(ops))


def _opposite_sides(a: tuple[float | None, float | None], b: tuple[float | None, float | None]):
    """Each of `a` and `b` bounds one side, not the same one."""
    return (
        (a[0] is None) != (a[1] is None)
        and (b[0] is None) != (b[1] is None)
        and ((a[0] is None) != (b[0] is None))
    )


def escaping_value(ops: list[Operation], allowed: list[SSAValue]) -> SSAValue | None:
    """The first result of `ops`, other than the `allowed` ones, read outside `ops`."""
    for op in ops:
        for result in op.results:
            if result not in allowed and any(user not in ops for user in users(result)):
                return result
    return None


def erase_dead(rewriter: PatternRewriter, ops: list[Operation]) -> None:
    """Erase those of `ops` nothing reads any more, users first."""
    for dead in sorted(dict.fromkeys(ops), key=position, reverse=True):
        if all(not result.uses for result in dead.results):
            rewriter.erase(dead)
