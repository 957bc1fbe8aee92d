"""Small helpers to match chains of `aten.call` ops (AOT and Inductor post-grad forms)."""

from __future__ import annotations

from xdsl.dialects.builtin import ArrayAttr, Float32Type, TensorType
from xdsl.ir import Attribute, Operation, SSAValue

from irfuse.dialects.aten import CallOp, RefAttr
from irfuse.frontend.types import scalar

CASTS = ("prims.convert_element_type.default", "aten._to_copy.default")
MUL = "aten.mul.Tensor"
F32 = Float32Type()


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


def int_list_arg(op: CallOp, index: int) -> list[int] | None:
    attr = op.arg(index)
    if not isinstance(attr, ArrayAttr):
        return None
    values = [scalar(a) for a in attr.data]
    return values if all(isinstance(v, int) for v in values) else None  # type: ignore[misc]


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


def strip_cast_to(value: SSAValue, dtype: Attribute) -> SSAValue:
    """`value`'s source if `value` is a cast to `dtype`, else `value` itself."""
    cast = cast_of(value)
    return cast[0] if cast is not None and cast[1] == dtype else value


def mul_operands(value: SSAValue | None) -> tuple[SSAValue, SSAValue] | None:
    """The two tensor operands of `aten.mul.Tensor` producing `value`."""
    op = call(value, MUL)
    if op is None:
        return None
    a, b = tensor_arg(op, 0), tensor_arg(op, 1)
    return (a, b) if a is not None and b is not None else None


def single_use(value: SSAValue) -> bool:
    return value.has_one_use()


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


def _defined_before(value: SSAValue, index: int) -> bool:
    owner = value.owner
    return not isinstance(owner, Operation) or position(owner) < index


def fused_insertion_point(replaced: list[Operation], operands: list[SSAValue]) -> Operation | None:
    """An op among `replaced` before which their fused replacement can go: all `operands`
    are defined earlier and every outside user of a replaced result comes later."""
    outside_users = [
        user for op in replaced for r in op.results for user in users(r) if user not in replaced
    ]
    first_use = min((position(u) for u in outside_users), default=None)
    for candidate in sorted(replaced, key=position):
        index = position(candidate)
        if all(_defined_before(v, index) for v in operands) and (
            first_use is None or first_use > index
        ):
            return candidate
    return None
