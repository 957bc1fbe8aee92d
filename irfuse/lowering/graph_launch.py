"""Kernel launches written into the graph, for Inductor's wrapper to make.

A runtime op (`torch.ops.irfuse.kernel_norm`, `kernel_attention`) costs host time on every
call: the dispatcher, the op's Python and Triton's launch path, 100-300 us on the H200
machine (bench/RESULTS.md) for kernels whose GPU work at decode sizes is a few us. Where
the launches are known when the graph compiles, the lowering writes them into the graph
as Inductor user-defined Triton kernels instead: an allocation per buffer the kernels
write and a `triton_kernel_wrapper_functional` node per launch, whose constant arguments
are the launch's sizes, strides, blocks and flags. Inductor plans the buffers' memory and
launches the kernels from its generated wrapper, as it launches its own.

The launches are the runtime op's own (KernelLaunch, computed by its code on the fake
tensors), so both paths run the same kernels with the same arguments. A launch names the
tensors it writes. A buffer the op allocates (an output, or what one kernel leaves for the
next: the decode's partial results, a per-tensor quant's amax) is allocated in the graph
where a launch first takes it; the launches after the one that writes it read the
functional node's result.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import triton
from torch._higher_order_ops.triton_kernel_wrap import (
    kernel_side_table,
    triton_kernel_wrapper_functional,
)
from torch.fx.experimental.symbolic_shapes import compute_unbacked_bindings
from torch.multiprocessing.reductions import StorageWeakRef

COPIED = "it reads an input through a copy"
BOOL_AS_BYTES = (
    "it reads a bool mask as bytes, which this torch's Inductor cannot lower (a view of a "
    "bool tensor as uint8; torch 2.13 can)"
)


@functools.cache
def inductor_views_bool_as_bytes() -> bool:
    """Whether Inductor lowers `aten.view.dtype` of a bool tensor (its bit width: torch
    2.11's asks `torch.iinfo(torch.bool)`, which raises)."""
    import inspect

    from torch._inductor import lowering

    return "torch.bool" in inspect.getsource(lowering.to_dtype_bitcast)


Insert = Callable[[Any, tuple, dict, Any], fx.Node]


class NodeInserter:
    """Inserts call_function nodes one after the other after `anchor`, each with its fake
    value: `insert(target, args, kwargs, val)`; `nodes` are those inserted, in order."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node) -> None:
        self.graph, self.anchor = graph, anchor
        self.nodes: list[fx.Node] = []

    def __call__(self, target: Any, node_args: tuple, kwargs: dict, val: Any) -> fx.Node:
        with self.graph.inserting_after(self.nodes[-1] if self.nodes else self.anchor):
            node = self.graph.call_function(target, node_args, kwargs)
        node.meta["val"] = val
        self.nodes.append(node)
        return node


def leading_sizes(insert: NodeInserter, node: fx.Node) -> tuple[list[Any], Any]:
    """(the sizes of `node`'s dims but its last, their product: the rows it holds), each
    an int, or a node inserted to read or multiply symbolic sizes (sym_size)."""
    fake = node.meta["val"]
    lead = [
        size
        if isinstance(size, int)
        else insert(torch.ops.aten.sym_size.int, (node, dim), {}, size)
        for dim, size in enumerate(fake.shape[:-1])
    ]
    rows, rows_so_far = (lead[0], fake.shape[0]) if lead else (1, 1)
    for size, fake_size in zip(lead[1:], fake.shape[1:-1], strict=True):
        rows_so_far = rows_so_far * fake_size
        symbolic = isinstance(rows, fx.Node) or isinstance(size, fx.Node)
        rows = insert(operator.mul, (rows, size), {}, rows_so_far) if symbolic else rows * size
    return lead, rows


@dataclass(frozen=True)
class KernelLaunch:
    """One launch of a generated Triton kernel: its grid, every parameter by name
    (tensors, scalars, constexprs), warps, stages, and the tensor parameters it stores to."""

    kernel: Any  # a triton.JITFunction
    grid: tuple[int, ...]
    args: dict[str, Any]
    num_warps: int
    num_stages: int
    writes: frozenset[str]
    zeroed: frozenset[str] = frozenset()  # of `writes`: buffers that must start at zero

    @staticmethod
    def of(
        kernel: Any,
        grid: tuple[int, ...],
        positional: Sequence[Any],
        constexprs: dict[str, Any],
        num_warps: int,
        num_stages: int,
        writes: Sequence[str],
        zeroed: Sequence[str] = (),
    ) -> KernelLaunch:
        names = kernel.arg_names
        args = dict(zip(names, positional, strict=False))
        args.update(constexprs)
        # every parameter once (cheap: runtime ops describe their launches on every call)
        if len(args) != len(names) or len(positional) + len(constexprs) != len(names):
            raise TypeError(f"{kernel.__name__}: launched with {sorted(args)}")
        return KernelLaunch(kernel, tuple(grid), args, num_warps, num_stages, frozenset(writes),
                            frozenset(zeroed))  # fmt: skip

    def run(self) -> None:
        self.kernel[self.grid](**self.args, num_warps=self.num_warps, num_stages=self.num_stages)


@functools.cache
def user_kernel(kernel: Any, num_warps: int, num_stages: int) -> Any:
    """`kernel` with its launch options, the way Inductor takes them: one autotune config."""
    config = triton.Config({}, num_warps=num_warps, num_stages=num_stages)
    return triton.autotune(configs=[config], key=[])(kernel)


def insert_kernel_call(
    insert: Insert,
    kernel: Any,
    grid: tuple,
    num_warps: int,
    num_stages: int,
    args: dict[str, Any],
    written: Sequence[str],
) -> fx.Node:
    """A `triton_kernel_wrapper_functional` node launching `kernel` over `grid` with `args`
    (tensor parameters: nodes; the rest are constants). It returns a dict of the `written`
    tensors' new contents (getitem by name)."""
    tensors = {name: v for name, v in args.items() if isinstance(v, fx.Node)}
    constants = {name: v for name, v in args.items() if not isinstance(v, fx.Node)}
    hop_kwargs = {
        "kernel_idx": kernel_side_table.add_kernel(user_kernel(kernel, num_warps, num_stages)),
        "constant_args_idx": kernel_side_table.add_constant_args(constants),
        "grid": [(*grid, *[1] * (3 - len(grid)))],
        "tma_descriptor_metadata": {},
        "kwargs": tensors,
        "tensors_to_clone": list(written),
    }
    results = {name: tensors[name].meta["val"].clone() for name in written}
    call = insert(triton_kernel_wrapper_functional, (), hop_kwargs, results)
    # Inductor gives the kernel its tensors with these exact strides (constant arguments)
    call.meta["eager_input_vals"] = ((), fx.node.map_arg(call.kwargs, lambda n: n.meta["val"]))
    return call


def read_host_scalar(graph: fx.Graph, anchor: fx.Node, node: fx.Node) -> fx.Node | None:
    """A node after `anchor` reading `node`, a one-element CPU tensor (a float the graph
    takes as an input: what `dynamic=True` makes of a module's eps), as a float each time
    the graph runs (Inductor's wrapper calls `.item()` on it: no device sync), to pass to
    a kernel; its value is an unbacked SymFloat (Inductor merges the reads of one input
    into one). None without a ShapeEnv to make it."""
    fake = node.meta["val"]
    shape_env = getattr(fake.fake_mode, "shape_env", None)
    if shape_env is None:
        return None
    with graph.inserting_after(anchor):
        item = graph.call_function(torch.ops.aten._local_scalar_dense.default, (node,))
    value = shape_env.create_unbacked_symfloat()
    # Inductor propagates fake values again through the nodes a pass added: `.item()`
    # of a fake tensor gives its memo (else it raises: dynamo captured no scalars)
    fake.item_memo = value
    item.meta["unbacked_bindings"] = compute_unbacked_bindings(shape_env, value)
    item.meta["val"] = value
    return item


def same_start(arg: torch.Tensor, fake: torch.Tensor) -> bool:
    """Whether `arg` starts where `fake` does (it is `fake` or a view of it, not a copy)."""
    return (
        StorageWeakRef(arg.untyped_storage()) == StorageWeakRef(fake.untyped_storage())
        and arg.storage_offset() == fake.storage_offset()
    )


def insert_launches(
    graph: fx.Graph,
    anchor: fx.Node,
    launches: Sequence[KernelLaunch],
    inputs: Sequence[fx.Node],
    results: Sequence[torch.Tensor],
) -> tuple[list[fx.Node], list[fx.Node]] | str:
    """Insert after `anchor` the `launches` (computed on the fake values of `inputs`),
    allocating each buffer of the op's where a launch first takes it. Returns (the inserted
    nodes in order, a node for each of `results`, the op's outputs among those buffers,
    or empty), or why they cannot be written into the graph (an input read through a
    copy: the runtime op makes it at run time; a bool mask read as bytes where Inductor
    cannot lower that view)."""
    input_storages = {StorageWeakRef(n.meta["val"].untyped_storage()) for n in inputs}

    def input_node(value: torch.Tensor) -> fx.Node | None:  # (inputs may share a storage)
        return next((n for n in inputs if same_start(value, n.meta["val"])), None)

    tensors = [
        v for launch in launches for v in launch.args.values() if isinstance(v, torch.Tensor)
    ]
    sources = [input_node(t) for t in tensors]  # (checked before anything is inserted)
    if any(StorageWeakRef(t.untyped_storage()) in input_storages and node is None
           for t, node in zip(tensors, sources, strict=True)):  # fmt: skip
        return COPIED
    if not inductor_views_bool_as_bytes() and any(
        node is not None and node.meta["val"].dtype == torch.bool and t.dtype != torch.bool
        for t, node in zip(tensors, sources, strict=True)
    ):
        return BOOL_AS_BYTES
    insert = NodeInserter(graph, anchor)
    buffers: dict[StorageWeakRef, fx.Node] = {}  # the latest contents of each buffer
    for launch in launches:
        args: dict[str, Any] = {}
        for name, value in launch.args.items():
            if not isinstance(value, torch.Tensor):
                args[name] = value
                continue
            storage = StorageWeakRef(value.untyped_storage())
            if storage in input_storages:
                node = input_node(value)
            elif storage in buffers:
                node = buffers[storage]
            elif value.storage_offset() == 0:  # a buffer of the op's, first taken here
                node = _allocate(insert, value, zeroed=name in launch.zeroed)
                buffers[storage] = node
            else:
                raise ValueError(f"{launch.kernel.__name__}: {name} is a view into a buffer")
            args[name] = _as_dtype(insert, node, value.dtype)
        call = insert_kernel_call(insert, launch.kernel, launch.grid, launch.num_warps,
                                  launch.num_stages, args, sorted(launch.writes))  # fmt: skip
        for name in sorted(launch.writes):
            storage = StorageWeakRef(launch.args[name].untyped_storage())
            buffers[storage] = insert(operator.getitem, (call, name), {}, call.meta["val"][name])
    ends = []
    for result in results:
        if result.numel() == 0:  # as the runtime op returns it
            make = torch.ops.aten.empty_strided.default
            kwargs = {"dtype": result.dtype, "device": result.device}
            ends.append(insert(make, (list(result.shape), list(result.stride())), kwargs, result))
            continue
        written = buffers.get(StorageWeakRef(result.untyped_storage()))
        if written is None:
            raise ValueError("an output that no launch writes")
        node = _as_dtype(insert, written, result.dtype)
        val = node.meta["val"]
        if (val.shape, val.stride(), val.storage_offset()) != (
            result.shape, result.stride(), result.storage_offset()
        ):  # fmt: skip
            view = (list(result.shape), list(result.stride()), result.storage_offset())
            node = insert(torch.ops.aten.as_strided.default, (node, *view), {}, result)
        ends.append(node)
    return insert.nodes, ends


def _allocate(insert: Insert, value: torch.Tensor, zeroed: bool) -> fx.Node:
    """A buffer node laid out as the fake `value`, zero-filled if `zeroed`."""
    kwargs = {"dtype": value.dtype, "device": value.device}
    if not zeroed:
        make = torch.ops.aten.empty_strided.default
        return insert(make, (list(value.shape), list(value.stride())), kwargs, value)
    if not value.is_contiguous():
        raise ValueError("a zero-filled buffer must be contiguous")
    # `full`, not `zeros`: Inductor lowers the one and not the other
    return insert(torch.ops.aten.full.default, (list(value.shape), 0), kwargs, value)


def _as_dtype(insert: Insert, node: fx.Node, dtype: torch.dtype) -> fx.Node:
    """`node` viewed as `dtype` (a bool mask as bytes, nvfp4 scales as int32 or bytes)."""
    val = node.meta["val"]
    if val.dtype == dtype:
        return node
    return insert(torch.ops.aten.view.dtype, (node, dtype), {}, val.view(dtype))
