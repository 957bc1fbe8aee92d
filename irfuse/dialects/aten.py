"""The `aten` dialect: one generic op that carries any ATen (or other FX) call.

`aten.call "aten.add.Tensor"(%a, %b) {args = [#aten.ref<0>, #aten.ref<1>], ...}` keeps
the call's target, its positional and keyword arguments (constants as builtin
attributes, tensor arguments as `#aten.ref<i>` into the operand list, dtypes as
builtin element types) and its result types, so a module is the whole program and
the raise passes can read constants such as eps or clamp bounds.
"""

from __future__ import annotations

from xdsl.dialects.builtin import (
    ArrayAttr,
    BFloat16Type,
    DictionaryAttr,
    Float8E4M3FNType,
    Float8E5M2Type,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntAttr,
    IntegerAttr,
    IntegerType,
    Signedness,
    StringAttr,
)
from xdsl.ir import Attribute, Dialect, ParametrizedAttribute, TypeAttribute
from xdsl.irdl import (
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    prop_def,
    var_operand_def,
    var_result_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException


@irdl_attr_definition
class RefAttr(ParametrizedAttribute):
    """`#aten.ref<i>`: this argument is the call's i-th operand."""

    name = "aten.ref"
    index: IntAttr

    def __init__(self, index: int) -> None:
        super().__init__(IntAttr(index))

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        with parser.in_angle_brackets():
            return [IntAttr(parser.parse_integer(allow_boolean=False, allow_negative=False))]

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self.index.data}>")


@irdl_attr_definition
class ValueType(ParametrizedAttribute, TypeAttribute):
    """`!aten.value`: a result that is neither a tensor nor a scalar (a list, a generator)."""

    name = "aten.value"


@irdl_op_definition
class CallOp(IRDLOperation):
    """A call of `target` (e.g. `aten.mean.dim`) that irfuse does not model."""

    name = "aten.call"
    inputs = var_operand_def()
    target = prop_def(StringAttr)
    args = prop_def(ArrayAttr)
    kwargs = prop_def(DictionaryAttr)
    outputs = var_result_def()
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$target `(` $inputs `)` attr-dict `:` functional-type($inputs, $outputs)"

    def verify_(self) -> None:
        refs = _refs(self.args) + _refs(self.kwargs)
        if sorted(set(refs)) != list(range(len(self.inputs))):
            raise VerifyException(
                f"{self.target.data}: arguments reference operands {sorted(refs)}, "
                f"but the call has {len(self.inputs)} operands"
            )

    def arg(self, index: int) -> Attribute | None:
        """The index-th positional argument, or None if absent."""
        return self.args.data[index] if index < len(self.args.data) else None


def _refs(attr: Attribute) -> list[int]:
    if isinstance(attr, RefAttr):
        return [attr.index.data]
    if isinstance(attr, ArrayAttr):
        return [i for a in attr.data for i in _refs(a)]
    if isinstance(attr, DictionaryAttr):
        return [i for a in attr.data.values() for i in _refs(a)]
    return []


DTYPE_NAMES: dict[Attribute, str] = {
    BFloat16Type(): "bfloat16",
    Float16Type(): "float16",
    Float32Type(): "float32",
    Float64Type(): "float64",
    Float8E4M3FNType(): "float8_e4m3fn",
    Float8E5M2Type(): "float8_e5m2",
    IntegerType(64): "int64",
    IntegerType(32): "int32",
    IntegerType(16): "int16",
    IntegerType(8): "int8",
    IntegerType(8, Signedness.UNSIGNED): "uint8",
    IntegerType(1): "bool",
}


def dtype_name(attr: Attribute | None) -> str:
    """torch's name of an element type (`bf16` -> "bfloat16"), for messages."""
    return DTYPE_NAMES.get(attr, str(attr)) if attr is not None else "none"


def scalar(attr: Attribute | None) -> float | int | bool | None:
    """The Python value of a constant argument attribute (None if not a plain scalar)."""
    if isinstance(attr, IntegerAttr):
        value = attr.value.data
        return bool(value) if attr.type == IntegerType(1) else value
    if isinstance(attr, FloatAttr):
        return attr.value.data
    return None


Aten = Dialect("aten", [CallOp], [RefAttr, ValueType])
