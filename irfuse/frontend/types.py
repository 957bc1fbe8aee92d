"""Conversions between torch values (dtypes, FakeTensors, constants) and xDSL attributes."""

from __future__ import annotations

from typing import Any

import torch
from xdsl.dialects.builtin import (
    ArrayAttr,
    BoolAttr,
    DictionaryAttr,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    NoneAttr,
    StringAttr,
    TensorType,
)
from xdsl.ir import Attribute

from irfuse.dialects.aten import DTYPE_NAMES, RefAttr, ValueType
from irfuse.dialects.irfuse import DYNAMIC

_DTYPES: dict[torch.dtype, Attribute] = {
    getattr(torch, name): attr for attr, name in DTYPE_NAMES.items()
}
_TORCH_DTYPES = {v: k for k, v in _DTYPES.items()}


def element_type(dtype: torch.dtype) -> Attribute | None:
    return _DTYPES.get(dtype)


def torch_dtype(attr: Attribute) -> torch.dtype | None:
    return _TORCH_DTYPES.get(attr)


def tensor_type(t: torch.Tensor) -> Attribute:
    """The TensorType of a (fake) tensor; symbolic sizes become `?`."""
    elem = element_type(t.dtype)
    if elem is None:
        return ValueType()
    shape = [int(s) if isinstance(s, int) else DYNAMIC for s in t.shape]
    return TensorType(elem, shape)


def value_types(val: Any) -> list[Attribute]:
    """Result types of an FX node from its `meta['val']` (one per tuple element)."""
    if val is None:
        return []
    if isinstance(val, (tuple, list)):
        return [value_type(v) for v in val]
    return [value_type(val)]


def value_type(val: Any) -> Attribute:
    if isinstance(val, torch.Tensor):
        return tensor_type(val)
    if isinstance(val, (bool, torch.SymBool)):
        return IntegerType(1)
    if isinstance(val, (int, torch.SymInt)):
        return IntegerType(64)
    if isinstance(val, (float, torch.SymFloat)):
        return Float64Type()
    return ValueType()


def constant_attr(value: Any, refs: dict[int, int]) -> Attribute:
    """Encode an FX argument; nodes become `#aten.ref<i>` (`refs` maps id(node) to i)."""
    if id(value) in refs:
        return RefAttr(refs[id(value)])
    if value is None:
        return NoneAttr()
    if isinstance(value, bool):
        return BoolAttr.from_bool(value)
    if isinstance(value, int):
        return IntegerAttr(value, IntegerType(64))
    if isinstance(value, float):
        return FloatAttr(value, Float64Type())
    if isinstance(value, str):
        return StringAttr(value)
    if isinstance(value, torch.dtype):
        return element_type(value) or StringAttr(str(value))
    if isinstance(value, (list, tuple)):
        return ArrayAttr([constant_attr(v, refs) for v in value])
    if isinstance(value, dict):
        return DictionaryAttr({str(k): constant_attr(v, refs) for k, v in value.items()})
    return StringAttr(str(value))
