"""FX graph (post-grad ATen, functional) -> xDSL module.

One `func.func @graph` per FX graph. Placeholders become block arguments, known ops
become irfuse ops (see `direct.py`), every other node becomes an `aten.call` that
remembers its target and constant arguments. Each imported op keeps an `Origin`: the
FX nodes it stands for, so that the exporter can hand unchanged ops back as the very
same nodes.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.utils import _pytree as pytree
from xdsl.builder import Builder
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    UnitAttr,
)
from xdsl.dialects.func import FuncOp, ReturnOp
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue
from xdsl.rewriter import InsertPoint

from irfuse.dialects.aten import CallOp, ValueType
from irfuse.frontend.direct import DIRECT_IMPORTERS, DirectImport
from irfuse.frontend.size_examples import Shape, example_shapes
from irfuse.frontend.types import constant_attr, value_types
from irfuse.transforms import report


class UnsupportedGraph(Exception):
    """The graph uses a construct the importer does not model; irfuse leaves it alone."""


@dataclass
class Origin:
    """The FX side of an imported op."""

    nodes: list[fx.Node]
    """Every FX node the op stands for (erased together when the op is erased)."""
    inputs: list[fx.Node]
    """The FX node behind each operand, in operand order."""
    results: list[fx.Node | None]
    """The FX node that holds each result (None when nothing reads it)."""


@dataclass
class ImportedGraph:
    module: ModuleOp
    func: FuncOp
    graph: fx.Graph
    origins: dict[Operation, Origin] = field(default_factory=dict)
    values: dict[fx.Node, SSAValue] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Why calls that have an irfuse op stayed generic `aten.call`s (for the report)."""

    def example_shapes(self, values: Sequence[SSAValue | None]) -> list[list[Shape | None]]:
        """Concrete shapes of imported `values` (their nodes' fake tensors) at the sizes a
        measured choice times (frontend/size_examples.py); [] for a value not imported."""
        nodes = {value: node for node, value in self.values.items()}
        tensors = []
        for value in values:
            fake = None if value is None or value not in nodes else nodes[value].meta.get("val")
            if value is not None and not isinstance(fake, torch.Tensor):
                return []
            tensors.append(fake)
        return example_shapes(tensors)


def target_name(target: object) -> str:
    """`aten.add.Tensor`-style name of an FX call target."""
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}.{target._overloadname}"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"
    if isinstance(target, str):
        return target
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', target)}"


# On a view (VIEW_TARGETS) that keeps its input's leading dims, some of them symbolic: how
# many it keeps, which the IR's `?` cannot tell ([B, S, K] -> [B, S, K/G, G] from
# [S, B, ...] or [2B, ...]); symbols compared as the graph's shape expressions.
KEPT_DIMS = "irfuse.kept_dims"
VIEW_TARGETS = (
    torch.ops.aten.view.default,
    torch.ops.aten._unsafe_view.default,
    torch.ops.aten.reshape.default,
)


def _kept_dims(node: fx.Node) -> int | None:
    """The leading dims `node`, a view, keeps of its input, where one of them is symbolic."""
    source = node.args[0] if node.args else None
    before = source.meta.get("val") if isinstance(source, fx.Node) else None
    after = node.meta.get("val")
    if not isinstance(before, torch.Tensor) or not isinstance(after, torch.Tensor):
        return None
    kept = 0
    for a, b in zip(before.shape, after.shape, strict=False):
        same = a == b if isinstance(a, int) and isinstance(b, int) else (
            isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt)
            and a.node.expr == b.node.expr
        )  # fmt: skip
        if not same:
            break
        kept += 1
    symbolic = any(not isinstance(d, int) for d in after.shape[:kept])
    return kept if symbolic else None


# Marks an op whose result stays on the host in a graph that computes on a device (a
# scale computed from a Python number: no tensor a kernel can read there).
ON_HOST = "irfuse.on_host"


def _computes_off_the_host(graph: fx.Graph) -> bool:
    vals = (n.meta.get("val") for n in graph.nodes)
    return any(isinstance(v, torch.Tensor) and v.device.type != "cpu" for v in vals)


# Marks a 0-d CPU tensor argument (a float `torch.compile(dynamic=True)` made a graph
# input): a kernel may take its value at launch without a device sync.
HOST_SCALAR = "irfuse.host_scalar"


def _host_marks(placeholders: list[fx.Node]) -> ArrayAttr[DictionaryAttr] | None:
    vals = [n.meta.get("val") for n in placeholders]
    host = [isinstance(v, torch.Tensor) and v.dim() == 0 and v.device.type == "cpu" for v in vals]
    if not any(host):
        return None
    return ArrayAttr([DictionaryAttr({HOST_SCALAR: UnitAttr()} if h else {}) for h in host])


def import_graph(graph: fx.Graph) -> ImportedGraph:
    """Build the xDSL module of `graph` (which it does not modify)."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    arg_types = [_single_type(n) for n in placeholders]
    block = Block(arg_types=arg_types)
    func = FuncOp("graph", (arg_types, []), Region(block), arg_attrs=_host_marks(placeholders))
    imported = ImportedGraph(ModuleOp([func]), func, graph)
    for node, arg in zip(placeholders, block.args, strict=True):
        arg.name_hint = _hint(node.name)
        imported.values[node] = arg
    builder = Builder(InsertPoint.at_end(block))
    tuple_ops: dict[fx.Node, Operation] = {}
    off_host = _computes_off_the_host(graph)

    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        if node.op == "output":
            _import_output(imported, builder, node)
            continue
        if node.op == "call_function" and node.target is operator.getitem:
            source, index = node.args
            if source in tuple_ops:
                op = tuple_ops[source]
                origin = imported.origins[op]
                if not isinstance(index, int) or index >= len(op.results):
                    raise UnsupportedGraph(f"getitem {index} of {source.name}")
                if origin.results[index] is None:
                    origin.results[index] = node
                    origin.nodes.append(node)
                    op.results[index].name_hint = _hint(node.name)
                    imported.values[node] = op.results[index]
                    continue
        if node in imported.values:  # consumed by a direct import (e.g. wait_tensor)
            continue
        op = _import_direct(imported, builder, node, off_host) or _import_generic(
            imported, builder, node
        )
        if off_host and _on_cpu(node):
            op.attributes[ON_HOST] = UnitAttr()
        report.set_source(op, node)
        if len(op.results) == 1 and not isinstance(node.meta.get("val"), (tuple, list)):
            imported.values[node] = op.results[0]
            op.results[0].name_hint = _hint(node.name)
        else:
            tuple_ops[node] = op
    return imported


def _single_type(node: fx.Node) -> Attribute:
    types = value_types(node.meta.get("val"))
    return types[0] if len(types) == 1 else ValueType()


def _hint(name: str) -> str:
    return name if name[:1].isalpha() or name[:1] == "_" else f"v{name}"


def _operand(imported: ImportedGraph, node: fx.Node) -> SSAValue:
    value = imported.values.get(node)
    if value is None:
        raise UnsupportedGraph(f"{node.name} is used as a whole but produces several values")
    return value


def _import_generic(imported: ImportedGraph, builder: Builder, node: fx.Node) -> Operation:
    if node.op == "get_attr":
        target, args, kwargs = f"get_attr.{node.target}", (), {}
    elif node.op == "call_function":
        target, args, kwargs = target_name(node.target), node.args, node.kwargs
    else:
        raise UnsupportedGraph(f"FX node kind '{node.op}' ({node.name})")
    inputs: list[fx.Node] = []
    refs: dict[int, int] = {}
    for leaf in pytree.tree_leaves((args, kwargs)):
        if isinstance(leaf, fx.Node):
            refs.setdefault(id(leaf), len(inputs))
            if refs[id(leaf)] == len(inputs):
                inputs.append(leaf)
    types = value_types(node.meta.get("val"))
    if node.op == "get_attr" and not types:  # a subgraph (torch.cond's branches): no val
        types = [ValueType()]
    op = CallOp.create(
        operands=[_operand(imported, n) for n in inputs],
        result_types=types,
        properties={
            "target": StringAttr(target),
            "args": ArrayAttr([constant_attr(a, refs) for a in args]),
            "kwargs": DictionaryAttr({k: constant_attr(v, refs) for k, v in kwargs.items()}),
        },
    )
    if node.op == "call_function" and node.target in VIEW_TARGETS:
        kept = _kept_dims(node)
        if kept is not None:
            op.attributes[KEPT_DIMS] = IntegerAttr(kept, IntegerType(64))
    builder.insert(op)
    imported.origins[op] = Origin([node], inputs, [node] * len(op.results))
    if len(op.results) != 1 or isinstance(node.meta.get("val"), (tuple, list)):
        imported.origins[op].results = [None] * len(op.results)
    return op


# Why a chain computed on the host in a graph that computes on a device is not fused
ON_HOST_REASON = (
    "computed on the host (CPU tensors) in a graph that computes on a device: irfuse "
    "kernels need CUDA tensors"
)


def _import_direct(
    imported: ImportedGraph, builder: Builder, node: fx.Node, off_host: bool
) -> Operation | None:
    """The irfuse op `node` maps onto, or None. In a graph that computes on a device, a
    call that reads host tensors is left a generic call (it runs as written): fused with
    the device's ops, it would leave every fusion of the graph unlowered."""
    importer = DIRECT_IMPORTERS.get(node.target) if node.op == "call_function" else None
    if importer is None:
        return None
    found: DirectImport | str = importer(node)
    if off_host and not isinstance(found, str) and any(_on_cpu(n) for n in found.inputs):
        found = ON_HOST_REASON
    if isinstance(found, str):
        imported.notes.append(f"{node.name} ({target_name(node.target)}) not imported: {found}")
        return None
    if any(n not in imported.values for n in found.inputs):
        return None
    op = found.build([_operand(imported, n) for n in found.inputs])
    builder.insert(op)
    imported.origins[op] = Origin(found.nodes, found.inputs, found.results)
    for result, fx_node in zip(op.results, found.results, strict=True):
        if fx_node is not None:
            imported.values[fx_node] = result
            result.name_hint = _hint(fx_node.name)
    return op


def _on_cpu(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.device.type == "cpu"


def _import_output(imported: ImportedGraph, builder: Builder, node: fx.Node) -> None:
    outputs = [leaf for leaf in pytree.tree_leaves(node.args) if isinstance(leaf, fx.Node)]
    values = [_operand(imported, n) for n in outputs]
    ret = ReturnOp(*values)
    builder.insert(ret)
    imported.origins[ret] = Origin([node], outputs, [])
    imported.func.function_type = imported.func.function_type.from_lists(
        imported.func.function_type.inputs.data, [v.type for v in values]
    )
