"""FX calls that map one-to-one onto irfuse ops (TOOLCHAIN.md lists the forms).

Each importer looks at one FX node and either returns a `DirectImport` (the nodes the
op stands for, its FX inputs, the FX node of each result, and a builder) or why it does
not map (a string, which the import notes in the report), in which case the node is
imported as a generic `aten.call`.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx as fx
from xdsl.dialects.builtin import Float64Type, FloatAttr, StringAttr, UnitAttr
from xdsl.ir import Attribute, Operation, SSAValue

from irfuse.dialects.irfuse import (
    AllReduceOp,
    AttentionOp,
    FusedAddRmsNormOp,
    MergeAttnStatesOp,
    MlaAttentionOp,
    QuantAttr,
    QuantOp,
    RmsNormOp,
)
from irfuse.frontend.types import value_types

NO_VALUE = "an input has no tensor value in the trace"
SYMBOLIC_HEAD_DIM = "a symbolic head dim and the default scale (1/sqrt(D) is no constant)"
WHOLE_TUPLE = "its result tuple is used as a whole"
FLOATS = (torch.bfloat16, torch.float16, torch.float32)


@dataclass
class DirectImport:
    nodes: list[fx.Node]
    inputs: list[fx.Node]
    results: list[fx.Node | None]
    build: Callable[[Sequence[SSAValue]], Operation]


def f64(value: float) -> FloatAttr:
    return FloatAttr(float(value), Float64Type())


def _getitems(node: fx.Node) -> dict[int, fx.Node]:
    """Users of a tuple-valued node, by index; {-1: user} if used otherwise."""
    found: dict[int, fx.Node] = {}
    for user in node.users:
        if user.target is operator.getitem and isinstance(user.args[1], int):
            found[user.args[1]] = user
        else:
            found[-1] = user
    return found


def _types(node: fx.Node) -> list[Attribute]:
    return value_types(node.meta.get("val"))


def _tensor_val(node: object) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _fused_rms_norm(node: fx.Node) -> DirectImport | str:
    x, shape, weight, eps = (list(node.args) + [None, None])[:4]
    items = _getitems(node)
    x_val, w_val = _tensor_val(x), _tensor_val(weight)
    if x_val is None or w_val is None:
        return "no weight (irfuse's norms take one)" if x_val is not None else NO_VALUE
    if set(items) != {0}:
        return "its rstd output is used"
    if len(shape) != 1:
        return f"it normalises over the last {len(shape)} dims (irfuse's norms: the last one)"
    if eps is None:  # ATen's default: the eps of the dtype it computes in (fp32 here)
        eps = torch.finfo(torch.promote_types(x_val.dtype, torch.float32)).eps
    if w_val.dtype != x_val.dtype:  # promotes: not an rms_norm of x's dtype
        return f"the weight is {w_val.dtype}, the input {x_val.dtype} (the result promotes)"
    y = items[0]
    # ATen computes (x * rstd * w) in fp32 and casts once: the fp32 weight multiply
    props = {"eps": f64(eps), "fp32_weight_mul": UnitAttr()}
    return DirectImport(
        [node, y],
        [x, weight],
        [y],
        lambda ops: RmsNormOp.build(
            operands=[*ops, [], []], result_types=[_types(y)[0], [], []], properties=props
        ),
    )


def _sdpa(
    q_k_v_mask: Callable[[fx.Node], tuple[tuple, fx.Node | None, float, bool, float | None]],
) -> Callable[[fx.Node], DirectImport | str]:
    """Importer for one SDPA variant, given how to read (q, k, v), mask, dropout,
    is_causal and scale from its node."""

    def importer(node: fx.Node) -> DirectImport | str:
        (q, k, v), mask, dropout, is_causal, scale = q_k_v_mask(node)
        items = _getitems(node)
        q_val = _tensor_val(q)
        if q_val is None:
            return NO_VALUE
        if dropout != 0.0:
            return f"dropout_p={dropout} (irfuse's attention has no dropout)"
        if set(items) != {0}:
            return "its outputs other than the attention (lse, ...) are used"
        if is_causal and mask is not None:  # PyTorch applies both; irfuse.attention one
            return "is_causal with an explicit attn_mask (irfuse's attention takes one)"
        out = items[0]
        inputs = [q, k, v] + ([mask] if mask is not None else [])
        if scale is None and not isinstance(q_val.shape[-1], int):
            return SYMBOLIC_HEAD_DIM
        scale = scale if scale is not None else 1.0 / math.sqrt(q_val.shape[-1])
        props = {
            "scale": f64(scale),
            "causal": StringAttr("top_left" if is_causal else "none"),
            "layout": StringAttr("bhsd"),
        }
        return DirectImport(
            [node, out],
            inputs,
            [out],
            lambda ops: AttentionOp.build(
                operands=[*ops[:3], ops[3:], []],
                result_types=[_types(out)[0], [], []],
                properties=props,
            ),
        )

    return importer


def _arg(node: fx.Node, index: int, name: str, default: object) -> object:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _sdpa_cpu(node: fx.Node):
    return (
        node.args[:3],
        node.kwargs.get("attn_mask"),
        _arg(node, 3, "dropout_p", 0.0),
        _arg(node, 4, "is_causal", False),
        node.kwargs.get("scale"),
    )


def _sdpa_with_bias(node: fx.Node):  # cudnn, efficient: (q, k, v, attn_bias, compute_lse, ...)
    return (
        node.args[:3],
        _arg(node, 3, "attn_bias", None),
        _arg(node, 5, "dropout_p", 0.0),
        _arg(node, 6, "is_causal", False),
        node.kwargs.get("scale"),
    )


def _sdpa_flash(node: fx.Node):
    return (
        node.args[:3],
        None,
        _arg(node, 3, "dropout_p", 0.0),
        _arg(node, 4, "is_causal", False),
        node.kwargs.get("scale"),
    )


def _not_float(x: fx.Node) -> str | None:
    """Why an all_reduce of `x` is not irfuse's (a sum accumulated in fp32), if it is not."""
    value = _tensor_val(x)
    if value is None:
        return NO_VALUE
    return None if value.dtype in FLOATS else f"an all_reduce of {value.dtype} (irfuse's: floats)"


def _all_reduce(node: fx.Node) -> DirectImport | str:
    x, reduce_op, group = node.args[:3]
    users = list(node.users)
    wait = torch.ops._c10d_functional.wait_tensor.default
    if reduce_op != "sum":
        return f"an all_reduce of op {reduce_op!r} (irfuse's: sum)"
    if len(users) != 1 or users[0].target is not wait:
        return "its result is not read by exactly one wait_tensor"
    if why := _not_float(x):
        return why
    done = users[0]
    return DirectImport(
        [node, done],
        [x],
        [done],
        lambda ops: AllReduceOp.build(
            operands=list(ops), result_types=_types(done), properties={"group": StringAttr(group)}
        ),
    )


def _irfuse_norm(fused_add: bool) -> Callable[[fx.Node], DirectImport | str]:
    def importer(node: fx.Node) -> DirectImport | str:
        n_in = 3 if fused_add else 2
        tensors, eps = node.args[:n_in], _arg(node, n_in, "eps", None)
        gemma = bool(_arg(node, n_in + 1, "gemma", False))
        props: dict[str, Attribute] = {"eps": f64(eps)}
        if gemma:
            props["gemma"] = UnitAttr()
        if not fused_add:
            return DirectImport(
                [node],
                list(tensors),
                [node],
                lambda ops: RmsNormOp.build(
                    operands=[*ops, [], []],
                    result_types=[_types(node)[0], [], []],
                    properties=props,
                ),
            )
        items = _getitems(node)
        if -1 in items:
            return WHOLE_TUPLE
        results = [items.get(0), items.get(1)]
        return DirectImport(
            [node, *(r for r in results if r is not None)],
            list(tensors),
            results,
            lambda ops: FusedAddRmsNormOp.build(
                operands=[*ops, [], [], [], []],
                result_types=[*_types(node), [], []],
                properties=props,
            ),
        )

    return importer


def _irfuse_attention(node: fx.Node) -> DirectImport | str:
    """`irfuse.attention(q, k, v, attn_mask, scale, causal, return_lse)` -> (out, lse)."""
    q, k, v = node.args[:3]
    mask = _arg(node, 3, "attn_mask", None)
    scale = _arg(node, 4, "scale", None)
    causal = _arg(node, 5, "causal", "none")
    return_lse = bool(_arg(node, 6, "return_lse", False))
    items = _getitems(node)
    q_val = _tensor_val(q)
    if q_val is None:
        return NO_VALUE
    if -1 in items:
        return WHOLE_TUPLE
    if 1 in items and not return_lse:
        return "its lse is read, but return_lse is False"
    if scale is None and not isinstance(q_val.shape[-1], int):
        return SYMBOLIC_HEAD_DIM
    scale = scale if scale is not None else 1.0 / math.sqrt(q_val.shape[-1])
    out, lse = items.get(0), items.get(1) if return_lse else None
    types = _types(node)
    inputs = [q, k, v] + ([mask] if isinstance(mask, fx.Node) else [])
    props = {"scale": f64(scale), "causal": StringAttr(causal), "layout": StringAttr("bhsd")}
    return DirectImport(
        [node, *(n for n in (out, lse) if n is not None)],
        inputs,
        [out] + ([lse] if return_lse else []),
        lambda ops: AttentionOp.build(
            operands=[*ops[:3], ops[3:], []],
            result_types=[types[0], types[1:2] if return_lse else [], []],
            properties=props,
        ),
    )


def _irfuse_all_reduce(node: fx.Node) -> DirectImport | str:
    """`irfuse.all_reduce(x, group_name)`."""
    x, group = node.args[0], _arg(node, 1, "group_name", None)
    if why := _not_float(x):
        return why
    return DirectImport(
        [node],
        [x],
        [node],
        lambda ops: AllReduceOp.build(
            operands=list(ops), result_types=_types(node), properties={"group": StringAttr(group)}
        ),
    )


def _irfuse_mla_attention(node: fx.Node) -> DirectImport | str:
    """`irfuse.mla_attention(q, kv_c, k_pe, w_uk, w_uv, scale, causal)` -> out [T, N*Dv]."""
    tensors = list(node.args[:5])
    scale, causal = _arg(node, 5, "scale", None), bool(_arg(node, 6, "causal", False))
    if any(_tensor_val(t) is None for t in tensors):
        return NO_VALUE
    if not isinstance(scale, (int, float)):
        return "its scale is not a constant"
    props: dict[str, Attribute] = {"scale": f64(scale)}
    if causal:
        props["causal"] = UnitAttr()
    return DirectImport(
        [node],
        tensors,
        [node],
        lambda ops: MlaAttentionOp.build(
            operands=[*ops, []], result_types=[_types(node)[0], []], properties=props
        ),
    )


def _irfuse_merge_attn_states(node: fx.Node) -> DirectImport | str:
    """`irfuse.merge_attn_states(p_out, p_lse, s_out, s_lse, output_scale)` -> (out, lse);
    with output_scale, out is static fp8."""
    tensors = list(node.args[:4])
    scale = _arg(node, 4, "output_scale", None)
    if any(_tensor_val(t) is None for t in tensors):
        return NO_VALUE
    items = _getitems(node)
    if -1 in items:
        return WHOLE_TUPLE
    scales = [scale] if isinstance(scale, fx.Node) else []
    props: dict[str, Attribute] = {"quant": QuantAttr("static")} if scales else {}
    results = [items.get(0), items.get(1)]
    types = _types(node)
    return DirectImport(
        [node, *(r for r in results if r is not None)],
        tensors + scales,
        results,
        lambda ops: MergeAttnStatesOp.build(
            operands=[*ops[:4], ops[4:]], result_types=[*types[:2], []], properties=props
        ),
    )


def _irfuse_quant(kind: str) -> Callable[[fx.Node], DirectImport | str]:
    def importer(node: fx.Node) -> DirectImport | str:
        x = node.args[0]
        scale = node.args[1] if len(node.args) > 1 and isinstance(node.args[1], fx.Node) else None
        if kind == "per_token":
            scale = _arg(node, 1, "scale_ub", None)
        if kind == "per_group":
            quant = QuantAttr(
                kind,
                int(_arg(node, 1, "group_size", 128)),
                bool(_arg(node, 2, "column_major", False)),
                bool(_arg(node, 3, "ue8m0", False)),
            )
        else:
            quant = QuantAttr(kind)
        inputs = [x] + ([scale] if isinstance(scale, fx.Node) else [])
        tuple_out = isinstance(node.meta.get("val"), (tuple, list))
        items = _getitems(node) if tuple_out else {0: node}
        if -1 in items:
            return WHOLE_TUPLE
        results = [items.get(i) for i in range(len(_types(node)))]
        return DirectImport(
            [node, *(r for r in results if r is not None and r is not node)],
            inputs,
            results,
            lambda ops: QuantOp.build(
                operands=[ops[0], ops[1:]],
                result_types=[_types(node)[0], _types(node)[1:]],
                properties={"quant": quant},
            ),
        )

    return importer


def _build_table() -> dict[object, Callable[[fx.Node], DirectImport | str]]:
    aten = torch.ops.aten
    table: dict[object, Callable[[fx.Node], DirectImport | str]] = {
        aten._fused_rms_norm.default: _fused_rms_norm,
        aten._scaled_dot_product_flash_attention_for_cpu.default: _sdpa(_sdpa_cpu),
        aten._scaled_dot_product_cudnn_attention.default: _sdpa(_sdpa_with_bias),
        aten._scaled_dot_product_efficient_attention.default: _sdpa(_sdpa_with_bias),
        aten._scaled_dot_product_flash_attention.default: _sdpa(_sdpa_flash),
        torch.ops._c10d_functional.all_reduce.default: _all_reduce,
    }
    import irfuse.ops  # noqa: F401  (registers torch.ops.irfuse.*)

    irfuse_ops = torch.ops.irfuse
    table[irfuse_ops.attention.default] = _irfuse_attention
    table[irfuse_ops.mla_attention.default] = _irfuse_mla_attention
    table[irfuse_ops.merge_attn_states.default] = _irfuse_merge_attn_states
    table[irfuse_ops.all_reduce.default] = _irfuse_all_reduce
    table[irfuse_ops.rms_norm.default] = _irfuse_norm(fused_add=False)
    table[irfuse_ops.fused_add_rms_norm.default] = _irfuse_norm(fused_add=True)
    table[irfuse_ops.static_fp8_quant.default] = _irfuse_quant("static")
    table[irfuse_ops.per_token_fp8_quant.default] = _irfuse_quant("per_token")
    table[irfuse_ops.per_tensor_fp8_quant.default] = _irfuse_quant("per_tensor")
    table[irfuse_ops.per_group_fp8_quant.default] = _irfuse_quant("per_group")
    table[irfuse_ops.nvfp4_quant.default] = _irfuse_quant("nvfp4")
    return table


DIRECT_IMPORTERS = _build_table()
