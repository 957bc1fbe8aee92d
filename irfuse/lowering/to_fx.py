"""xDSL module -> the FX graph it was imported from, edited in place.

Ops that still carry their `Origin` are the original FX nodes: they stay, with their
inputs re-pointed where a pass replaced a value. Ops without an origin (the fused ops)
become calls of runtime ops, each placed right after the latest node it reads. Nodes of
ops that a pass erased are removed. Nothing is touched unless every new op lowers.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from xdsl.ir import Operation, SSAValue

from irfuse.dialects.irfuse import (
    AttentionOp,
    FusedAddRmsNormOp,
    QuantOp,
    RmsNormAddOp,
    RmsNormOp,
)
from irfuse.lowering.attention import graph_launch_problem as attention_graph_problem
from irfuse.lowering.attention import graph_launches as attention_graph_launches
from irfuse.lowering.attention import prefill_note, summary_graph_launches, summary_graph_problem
from irfuse.lowering.graph_launch import NodeInserter, insert_launches, leading_sizes
from irfuse.lowering.kernel_spec import AttentionKernel, KernelSpec
from irfuse.lowering.runtime import INTERPRET  # (and registers torch.ops.irfuse.kernel_norm)
from irfuse.lowering.to_triton import NoKernel, spec_for
from irfuse.lowering.user_kernels import graph_launch_problem, lower_norm_in_graph

if TYPE_CHECKING:  # the importer's record of the FX side; lowering does not import it
    from irfuse.frontend.fx_import import ImportedGraph


@dataclass
class Lowered:
    op: Operation
    spec: KernelSpec | AttentionKernel


def plan_lowering(imported: ImportedGraph) -> list[Lowered]:
    """The kernel of every op a pass created (NoKernel if one has none), and of every
    `torch.ops.irfuse.*` call that has one (those calls run the reference otherwise)."""
    plan = []
    node_of = {value: node for node, value in imported.values.items()}
    for op in imported.func.body.ops:
        origin = imported.origins.get(op)
        if origin is not None:
            if not _calls_irfuse_op(origin.nodes[0]):
                continue
            try:
                spec = spec_for(op)
            except NoKernel:
                continue
        else:
            spec = spec_for(op)
        problem = _device_problem(op, node_of)
        if problem is not None:
            if origin is not None:  # a direct irfuse call: it keeps running the reference
                continue
            raise NoKernel(problem)
        plan.append(Lowered(op, spec))
    return plan


# The operands of a norm's eps read at run time (host scalars)
EPS_OPERANDS = ("eps_value", "x_eps_value")


def _device_problem(op: Operation, node_of: dict[SSAValue, fx.Node]) -> str | None:
    """Why the op's kernel cannot take its operands' devices (None if it can). A norm's
    eps inputs (a sandwich's x_eps too) are host scalars, read at launch: their devices
    do not count."""
    eps = {getattr(op, name, None) for name in EPS_OPERANDS} - {None}
    vals = [node_of[v].meta.get("val") for v in op.operands if v in node_of and v not in eps]
    devices = {v.device for v in vals if isinstance(v, torch.Tensor)}
    if len(devices) > 1:
        return f"operands on several devices {sorted(map(str, devices))}"
    if any(d.type != "cuda" for d in devices) and not INTERPRET:
        return "irfuse kernels need CUDA tensors (TRITON_INTERPRET=1 runs them on CPU)"
    return None


def _calls_irfuse_op(node: fx.Node) -> bool:
    target = node.target
    return isinstance(target, torch._ops.OpOverload) and target.namespace == "irfuse"


def export_to_fx(imported: ImportedGraph, plan: list[Lowered], graph_launch: str) -> list[str]:
    """Rewrite the graph; returns how each kernel launches. With `graph_launch` "static"
    or "all" (Options.graph_launch, where Inductor compiles the graph; else "off", or
    "eager") a kernel whose launches are known at compile time is launched from
    Inductor's wrapper (user_kernels.py, graph_launch.py), else through its runtime op:
    with "static", a norm kernel of one launch at static shapes; with "all" (the
    default) also at a symbolic token count or an eps read at run time, a per-tensor
    quant's two launches, the decode attention and a mask's summary."""
    graph = imported.graph
    launches: list[str] = []
    rank = {node: i for i, node in enumerate(graph.nodes)}
    last_placeholder = max(
        (n for n in graph.nodes if n.op == "placeholder"), key=rank.get, default=None
    )
    value_node = {v: n for n, v in imported.values.items() if n.op == "placeholder"}
    specs = {lowered.op: lowered.spec for lowered in plan}
    tail: dict[fx.Node, fx.Node] = {}
    survivors: set[Operation] = set()
    summaries: dict[tuple, fx.Node] = {}  # mask summaries, shared by the attentions
    relaid: dict[tuple[fx.Node, fx.Node], fx.Node] = {}  # _in_layout_of's copies

    def anchor_after(inputs: list[fx.Node]) -> fx.Node:
        """Where new nodes reading `inputs` go: after the latest of them and of what was
        inserted there before."""
        anchor = max([*inputs, last_placeholder], key=lambda n: rank[n])
        while anchor in tail:
            anchor = tail[anchor]
        return anchor

    def placed(anchor: fx.Node) -> list[fx.Node]:
        """Rank the nodes just inserted after `anchor`, strictly between it and the next
        ranked node (an original one, or one inserted before after an earlier anchor: a
        result of a fused op that is not its last node is followed by ranked ones)."""
        nodes = []
        node = anchor.next
        while node not in rank and node.op != "root":
            nodes.append(node)
            node = node.next
        low = rank[anchor]
        high = rank[node] if node.op != "root" else math.floor(low) + 1
        for i, node in enumerate(nodes, start=1):
            rank[node] = low + (high - low) * i / (len(nodes) + 1)
        tail[anchor] = nodes[-1]
        return nodes

    for op in imported.func.body.ops:
        origin = imported.origins.get(op)
        inputs = [value_node[v] for v in op.operands]
        if origin is not None and op not in specs:
            survivors.add(op)
            for old, new in zip(origin.inputs, inputs, strict=True):
                if old is not new:
                    if graph_launch == "eager":
                        if (old, new) not in relaid:
                            relaid[old, new] = _in_layout_of(graph, old, new)
                        new = relaid[old, new]
                    for node in origin.nodes:
                        node.replace_input_with(old, new)
            for result, node in zip(op.results, origin.results, strict=True):
                if node is not None:
                    value_node[result] = node
            continue
        summary, mask, hidden = None, None, None
        if isinstance(op, AttentionOp) and op.mask is not None:
            q, k = value_node[op.q], value_node[op.k]
            mask, *bias = _kernel_mask(value_node[op.mask])
            hidden = bias[0] if bias else None
            inputs.append(mask)
            key = _summary_key(q, k, mask, hidden)
            if key is not None and key not in summaries:
                anchor = anchor_after([q, k, mask])
                summary_args = (q, k, mask, hidden)
                summaries[key], how = _lower_summary(graph, anchor, summary_args, graph_launch)
                launches.append(f"{SUMMARY_NAME}: {how}")
                placed(anchor)
            summary = summaries.get(key)
            inputs += [summary] if summary is not None else []
        anchor = anchor_after(inputs)
        spec = specs[op]
        if isinstance(op, AttentionOp):
            assert isinstance(spec, AttentionKernel)
            results, launch = _lower_attention(
                graph, anchor, op, spec, value_node.get, (mask, summary, hidden), graph_launch
            )
        else:
            assert isinstance(spec, KernelSpec)
            results, launch = _lower_norm(graph, anchor, op, spec, value_node.get, graph_launch)
        launches.append(f"{spec.name}: {launch}")
        placed(anchor)
        for result, node in zip(op.results, results, strict=True):
            value_node[result] = node

    dead = {n for op, o in imported.origins.items() if op not in survivors for n in o.nodes}
    for node in sorted(dead, key=rank.get, reverse=True):
        graph.erase_node(node)
    graph.lint()
    return launches


def _in_layout_of(graph: fx.Graph, old: fx.Node, new: fx.Node) -> fx.Node:
    """`new`, standing for `old`, copied into `old`'s layout where it has another (a
    kernel's row-major sum standing for a transposed input's): the graph's views were
    traced on `old`, and run eagerly they would fail or read other elements. (Inductor
    lays views out from the kernels' own results: only the eager graph needs this.)
    A node without a value is a kernel's result, row-major."""
    before, after = old.meta.get("val"), new.meta.get("val")
    if not isinstance(before, torch.Tensor):
        return new
    if isinstance(after, torch.Tensor) and after.stride() == before.stride():
        return new
    row_major = after.is_contiguous() if isinstance(after, torch.Tensor) else True
    if row_major and before.is_contiguous():
        return new
    order = sorted(range(before.dim()), key=lambda d: -before.stride(d))
    with graph.inserting_after(new):
        return graph.call_function(_permuted_copy, (new, order))


def _permuted_copy(t: torch.Tensor, order: list[int]) -> torch.Tensor:
    """`t` copied into a tensor whose dims lie in memory in `order` (outermost first)."""
    return torch.empty_permuted(t.shape, order, dtype=t.dtype, device=t.device).copy_(t)


# An explicit mask's tile summary, computed once for the attentions that share the mask
# and their shapes (a model's layers): mask_summary of kernel_attention.
SUMMARY = torch.ops.irfuse.kernel_attention_mask_summary.default
SUMMARY_NAME = "irfuse_attention_mask_summary"


def _lower_summary(
    graph: fx.Graph, anchor: fx.Node, args: tuple, graph_launch: str
) -> tuple[fx.Node, str]:
    """Insert after `anchor` the mask summary of `args` (q, k, mask, the bias of a bool
    mask's hidden keys): its launches from Inductor's wrapper where `graph_launch` is
    "all" and they are known, else a kernel_attention_mask_summary call. Returns (the
    summary's node, how it launches)."""
    q, k, mask = (a.meta["val"] for a in args[:3])
    problem = _all_launches_problem(graph_launch, lambda: summary_graph_problem(q, k, mask))
    if problem is None:
        lowered = _lower_in_graph(graph, anchor, summary_graph_launches, args, [0])
        if not isinstance(lowered, str):
            return lowered[1][0], "launched by Inductor's wrapper"
        problem = lowered
    call = _call(graph, anchor, SUMMARY, args, [])[0]
    return call, f"torch.ops.irfuse.kernel_attention_mask_summary ({problem})"


def _summary_key(q: fx.Node, k: fx.Node, mask: fx.Node, hidden: float | None) -> tuple | None:
    """What an attention's mask summary depends on: the mask and the shapes. Its tiles
    follow from the heads, query rows and head dims, which must be static; the batch and
    the key count may be symbolic (a decode step's growing KV). Otherwise None: the
    kernel computes a summary per call."""
    (_, hq, sq, d), (_, hkv, _, _) = q.meta["val"].shape, k.meta["val"].shape
    if not all(isinstance(n, int) for n in (hq, sq, d, hkv)):
        return None
    shapes = (q.meta["val"].shape, k.meta["val"].shape)
    return (_structure(mask), hidden, *(tuple(map(str, shape)) for shape in shapes))


_WHERE = torch.ops.aten.where.self
_CONSTANTS = {torch.ops.aten.full.default: 1, torch.ops.aten.scalar_tensor.default: 0}


def _kernel_mask(mask: fx.Node) -> tuple:
    """The mask arguments of kernel_attention: (mask,), or (bool mask, hidden bias) for
    PyTorch's `where(mask, 0, bias)` of a bool mask into an additive one (which each SDPA
    call makes, and which the kernels then read as 1 byte per key instead of 2-4, with no
    pass to materialise it: Inductor drops the where once nothing else reads it)."""
    if mask.op != "call_function" or mask.target != _WHERE or len(mask.args) != 3:
        return (mask,)
    cond, *values = mask.args
    constants = [_constant(v) for v in values]
    if not isinstance(cond, fx.Node) or None in constants or constants[0] != 0:
        return (mask,)
    cond_val, val = cond.meta.get("val"), mask.meta.get("val")
    if not isinstance(cond_val, torch.Tensor) or not isinstance(val, torch.Tensor):
        return (mask,)
    if cond_val.dtype != torch.bool or cond_val.shape != val.shape:
        return (mask,)
    hidden = torch.tensor(constants[1], dtype=val.dtype).item()  # as the bias holds it
    return (cond, float(hidden))


def _constant(value: object) -> float | None:
    """The value of a 0-d constant node (full / scalar_tensor), else None."""
    if not isinstance(value, fx.Node) or value.target not in _CONSTANTS:
        return None
    if value.target == torch.ops.aten.full.default and value.args[0] not in ((), []):
        return None
    scalar = value.args[_CONSTANTS[value.target]]
    return float(scalar) if isinstance(scalar, (int, float)) else None


def _structure(value: object, depth: int = 4) -> object:
    """A node as the computation that makes it, `depth` calls deep (then the node
    itself): equal for the copies of one mask that each attention gets (PyTorch turns a
    bool mask into `where(mask, 0, -inf)` per SDPA call). Seeded random ops are
    themselves."""
    if isinstance(value, (list, tuple)):
        return tuple(_structure(v, depth) for v in value)
    if not isinstance(value, fx.Node):
        return value
    target = value.target
    random = isinstance(target, torch._ops.OpOverload) and (
        torch.Tag.nondeterministic_seeded in target.tags
    )
    if value.op != "call_function" or depth == 0 or random:
        return value
    kwargs = tuple(sorted((k, _structure(v, depth - 1)) for k, v in value.kwargs.items()))
    return (target, _structure(value.args, depth - 1), kwargs)


def _lower_attention(
    graph: fx.Graph,
    anchor: fx.Node,
    op: AttentionOp,
    spec: AttentionKernel,
    node_of: Callable[[SSAValue | None], fx.Node | None],
    mask_args: tuple,
    graph_launch: str,
) -> tuple[list[fx.Node], str]:
    """Insert the launches of `op`'s kernels after `anchor`: from Inductor's wrapper where
    `graph_launch` allows and they are known (attention.graph_launches), else a
    kernel_attention call and a getitem per IR result. Returns (the node of each IR
    result, how it launches). `mask_args` are kernel_attention's (mask,
    its shared summary, the bias of a bool mask's hidden keys)."""
    args = (
        node_of(op.q), node_of(op.k), node_of(op.v), node_of(op.quant_scale),
        op.scale.value.data, op.causal.data, op.layout.data, op.lse is not None,
        spec.epilogue, *mask_args,
    )  # fmt: skip
    indices = [0] + [1] * (op.lse is not None) + [2] * (op.scale_out is not None)
    q, k, v = (n.meta["val"] for n in args[:3])  # type: ignore[union-attr]
    problem = _all_launches_problem(graph_launch, lambda: attention_graph_problem(q, k, v))
    if problem is None:
        lowered = lower_attention_in_graph(graph, anchor, args, indices)
        if not isinstance(lowered, str):
            flat = [_flattened(graph, n, r) for n, r in zip(lowered[1], op.results, strict=True)]
            return flat, "launched by Inductor's wrapper"
        problem = lowered
    nodes = _call(graph, anchor, torch.ops.irfuse.kernel_attention.default, args, indices)
    results = [_flattened(graph, n, r) for n, r in zip(nodes[1:], op.results, strict=True)]
    note = prefill_note(q, k, v, op.causal.data, mask_args[0] is not None, spec.epilogue)
    return results, f"torch.ops.irfuse.kernel_attention ({problem}{f'; {note}' if note else ''})"


def lower_attention_in_graph(
    graph: fx.Graph, anchor: fx.Node, args: tuple, indices: list[int]
) -> tuple[list[fx.Node], list[fx.Node]] | str:
    """Insert after `anchor` the launches kernel_attention(*args) makes (attention.
    graph_launches, on the fake values), and return (the inserted nodes, the nodes of its
    outputs `indices`), or why they stay with kernel_attention."""
    return _lower_in_graph(graph, anchor, attention_graph_launches, args, indices)


def _lower_in_graph(
    graph: fx.Graph, anchor: fx.Node, graph_launches: Callable, args: tuple, indices: list[int]
) -> tuple[list[fx.Node], list[fx.Node]] | str:
    """Insert after `anchor` the launches a runtime op makes on `args` (`graph_launches`:
    (launches, outputs) over the fake values, or why none), and return (the inserted
    nodes, the nodes of its outputs `indices`), or why they stay with the runtime op."""
    fake_args = [a.meta["val"] if isinstance(a, fx.Node) else a for a in args]
    tensors = [a for a in fake_args if isinstance(a, torch.Tensor)]
    with detect_fake_mode(tensors) or FakeTensorMode(allow_non_fake_inputs=True):
        launched = graph_launches(*fake_args)
    if isinstance(launched, str):
        return launched
    launches, outputs = launched
    inputs = [a for a in args if isinstance(a, fx.Node)]
    return insert_launches(graph, anchor, launches, inputs, [outputs[i] for i in indices])


def _all_launches_problem(graph_launch: str, problem: Callable[[], str | None]) -> str | None:
    """Why kernels that launch from the wrapper only with graph_launch="all" keep their
    runtime op: the mode, or `problem()` (their device and shapes); None if they may."""
    if graph_launch in _LAUNCH_MODE_PROBLEMS:
        return _LAUNCH_MODE_PROBLEMS[graph_launch]
    if (found := problem()) is not None or graph_launch == "all":
        return found
    return "graph_launch='all' may launch its kernels from the wrapper"


def _flattened(graph: fx.Graph, node: fx.Node, result: SSAValue) -> fx.Node:
    """`node` as the IR result's rank: the kernel returns [B, S, X] where the fused quant
    read [B*S, X] (a per-token or nvfp4 quant of attention takes 2-D rows; a norm's quant
    fused through a linear's flatten of its [..., K] input). Right after `node`, a view
    (Inductor reinterprets the buffer; `flatten` would be a Python call in its wrapper),
    its symbolic sizes read with sym_size."""
    rank = len(result.type.get_shape())  # type: ignore[attr-defined]
    fake = node.meta["val"]
    if fake.dim() == rank:
        return node
    assert fake.dim() > 2 and rank == 2, (fake.dim(), rank)
    insert = NodeInserter(graph, node)
    _, rows = leading_sizes(insert, node)
    last = fake.shape[-1]
    if not isinstance(last, int):
        last = insert(torch.ops.aten.sym_size.int, (node, fake.dim() - 1), {}, last)
    return insert(torch.ops.aten.view.default, (node, [rows, last]), {}, fake.flatten(0, -2))


def _call(
    graph: fx.Graph, anchor: fx.Node, target: object, args: tuple, indices: list[int]
) -> list[fx.Node]:
    """`target(*args)` after `anchor` (with its fake value) and getitems `indices`."""
    fake_args = [a.meta["val"] if isinstance(a, fx.Node) else a for a in args]
    tensors = [a for a in fake_args if isinstance(a, torch.Tensor)]
    with detect_fake_mode(tensors) or FakeTensorMode(allow_non_fake_inputs=True):
        fake = target(*fake_args)
    with graph.inserting_after(anchor):
        call = graph.call_function(target, args)
    call.meta["val"] = fake
    nodes = [call]
    for i in indices:
        with graph.inserting_after(nodes[-1]):
            item = graph.call_function(operator.getitem, (call, i))
        item.meta["val"] = fake[i]
        nodes.append(item)
    return nodes


# graph_launch modes in which no kernel launches from Inductor's wrapper, and why
_LAUNCH_MODE_PROBLEMS = {"off": "graph_launch='off'", "eager": "the inner compiler is eager"}


def _lower_norm(
    graph: fx.Graph,
    anchor: fx.Node,
    op: Operation,
    spec: KernelSpec,
    node_of: Callable[[SSAValue | None], fx.Node | None],
    graph_launch: str,
) -> tuple[list[fx.Node], str]:
    """Insert the launch of `op`'s kernel after `anchor`: from Inductor's wrapper where
    `graph_launch` allows and the launch is known (user_kernels.py), else a
    `kernel_norm(...)` call and a getitem for each IR result. Returns (the node of each
    IR result, how it launches)."""
    residual = op.residual if isinstance(op, (FusedAddRmsNormOp, RmsNormAddOp)) else None
    weight = op.weight if isinstance(op, (RmsNormOp, FusedAddRmsNormOp, RmsNormAddOp)) else None
    assert isinstance(op, (QuantOp, RmsNormOp, FusedAddRmsNormOp, RmsNormAddOp))
    eps, eps_value = 0.0, None  # a constant, or a 0-d tensor the kernel reads at run time
    if not isinstance(op, QuantOp):
        eps, eps_value = (op.eps.value.data if op.eps else 0.0), op.eps_value
    x_eps, x_eps_value = 0.0, None  # x's own norm's, alike
    if isinstance(op, FusedAddRmsNormOp):
        x_eps, x_eps_value = (op.x_eps.value.data if op.x_eps else 0.0), op.x_eps_value
    x_weight = op.x_weight if isinstance(op, FusedAddRmsNormOp) else None
    inputs = (node_of(op.x), node_of(residual), node_of(weight), node_of(x_weight),
              node_of(op.quant_scale))  # fmt: skip
    # kernel_norm returns (out, residual_out, scales, value); the IR op has those it uses
    value = getattr(op, "value", None)  # QuantOp has none
    indices = [0] + [1] * (residual is not None) + [2] * (op.scale_out is not None)
    indices += [3] * (value is not None)
    x = inputs[0].meta["val"]  # type: ignore[union-attr]
    problem = _LAUNCH_MODE_PROBLEMS.get(graph_launch)
    if problem is None:
        runtime_eps = eps_value is not None or x_eps_value is not None
        problem = graph_launch_problem(spec, x, runtime_eps, graph_launch == "all")
    lowered = None
    if problem is None:
        eps_arg = node_of(eps_value) if eps_value is not None else float(eps)
        x_eps_arg = node_of(x_eps_value) if x_eps_value is not None else float(x_eps)
        lowered = lower_norm_in_graph(graph, anchor, spec, inputs, eps_arg, indices, x_eps_arg)  # type: ignore[arg-type]
        if isinstance(lowered, str):
            problem, lowered = lowered, None
    if lowered is not None:
        _, results, launch = lowered
    else:
        x_node, residual_node, weight_node, x_weight_node, scale_node = inputs
        args = (x_node, residual_node, weight_node, scale_node, float(eps), spec.encode(),
                node_of(eps_value), x_weight_node, float(x_eps), node_of(x_eps_value))  # fmt: skip
        results = _call(graph, anchor, torch.ops.irfuse.kernel_norm.default, args, indices)[1:]
        launch = f"torch.ops.irfuse.kernel_norm ({problem})"
    if op.scale_out is not None and spec.per_tensor:
        at = indices.index(2)
        results[at] = _viewed_as(graph, results[at], op.scale_out.type.get_shape())
    # a quant fused through the flatten of a [..., K] input: q and its scales as [T, ...]
    results = [_flattened(graph, n, r) for n, r in zip(results, op.results, strict=True)]
    return results, launch


def _viewed_as(graph: fx.Graph, node: fx.Node, shape: tuple[int, ...]) -> fx.Node:
    """`node` (a per-tensor scale, [1]) viewed as `shape`, the one the graph gave it (a
    0-d tensor, or [1, 1] with keepdim), right after it."""
    fake = node.meta["val"]
    if tuple(fake.shape) == tuple(shape):
        return node
    with graph.inserting_after(node):
        view = graph.call_function(torch.ops.aten.view.default, (node, list(shape)))
    view.meta["val"] = fake.view(shape)
    return view
