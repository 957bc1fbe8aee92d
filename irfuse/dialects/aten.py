"""The `aten` dialect: one generic op that carries any ATen (or other FX) call.

`aten.call "aten.add.Tensor"(%a, %b) {args = [#aten.ref<0>, #aten.ref<1>], ...}` keeps
the call's target, its positional and keyword arguments (constants as builtin
attributes, tensor arguments as `#aten.ref<i>` into the operand list, dtypes as
builtin element types) and its result types, so a module is the whole program and
the raise passes can read constants such as eps or clamp bounds.
"""

from __future__ import annotations

from xdsl.dialects.builtin import ArrayAttr, DictionaryAttr, IntAttr, StringAttr
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


Aten = Dialect("aten", [CallOp], [RefAttr, ValueType])
