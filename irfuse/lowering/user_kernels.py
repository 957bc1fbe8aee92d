"""Fused norm / quant kernels launched from Inductor's wrapper, not through a runtime op.

A `torch.ops.irfuse.kernel_norm` call costs host time on every call: the dispatcher,
the op's Python (checks, output allocation) and Triton's launch path, ~74 us on the H200
machine (bench/RESULTS.md) for a kernel whose GPU work at decode sizes is ~2 us. Where
everything the launch needs is known when the graph compiles (static shapes, CUDA
tensors, a constant eps, one launch), the lowering instead writes the launch into the
graph as an Inductor user-defined Triton kernel: an allocation per output and a
`triton_kernel_wrapper_functional` node whose constant arguments are the launch's
sizes, strides and block. Inductor allocates the outputs with its memory planning and
launches the kernel from its generated wrapper, as it launches its own.

The launch is the one `kernel_norm` would make (runtime.single_launch, run on the fake
tensors), so both paths run the same kernel with the same arguments.
"""

from __future__ import annotations

import functools
import operator
from typing import Any

import torch
import torch.fx as fx
import triton
from torch._higher_order_ops.triton_kernel_wrap import (
    kernel_side_table,
    triton_kernel_wrapper_functional,
)
from torch.multiprocessing.reductions import StorageWeakRef

from irfuse.lowering.kernel_spec import KernelSpec
from irfuse.lowering.runtime import KERNEL_PARAMS, allocate_outputs, compiled_kernel, single_launch
from irfuse.ops.quant import nvfp4_scales_padded

INPUT_PARAMS = ("x_ptr", "residual_ptr", "weight_ptr", "scale_ptr")
OUTPUT_PARAMS = ("out_ptr", "residual_out_ptr", "scale_out_ptr", "value_ptr")  # kernel_norm's


def graph_launch_problem(spec: KernelSpec, x: torch.Tensor, eps_input: bool) -> str | None:
    """Why `spec` over the fake `x` launches through kernel_norm (None if Inductor's
    wrapper can launch it)."""
    if eps_input:
        return "its eps is read at run time"
    if x.device.type != "cuda":
        return "its tensors are not on the GPU"
    if spec.quant == "per_tensor":
        return "a per-tensor quant launches two kernels"
    if not all(isinstance(size, int) for size in x.shape):
        return "its launch depends on symbolic sizes"
    if x.numel() == 0:
        return "it has no rows"
    return None


@functools.cache
def _user_kernel(spec: KernelSpec, num_warps: int) -> Any:
    """`spec`'s kernel with its warps, the way Inductor takes launch options: one config."""
    config = triton.Config({}, num_warps=num_warps)
    return triton.autotune(configs=[config], key=[])(compiled_kernel(spec))


def lower_norm_in_graph(
    graph: fx.Graph,
    anchor: fx.Node,
    spec: KernelSpec,
    inputs: tuple[fx.Node, fx.Node | None, fx.Node | None, fx.Node | None],
    eps: float,
    indices: list[int],
) -> tuple[list[fx.Node], list[fx.Node]] | None:
    """Insert after `anchor` the launch of `spec` (which graph_launch_problem accepts) on
    `inputs` (x, residual, weight, scale). Returns (the inserted nodes in order, the
    nodes of kernel_norm's outputs `indices`); None where the kernel would read an input
    through a copy (kernel_norm makes it at run time)."""
    fakes = tuple(n.meta["val"] if n is not None else None for n in inputs)
    x = fakes[0]
    outputs = allocate_outputs(spec, x, inputs[1] is not None)
    spec, launch = single_launch(spec, *fakes, outputs, eps)  # type: ignore[misc]
    args = dict(zip(KERNEL_PARAMS, launch.args, strict=True))
    tensor_args: dict[str, Any] = {}
    for name, node, fake in zip(INPUT_PARAMS, inputs, fakes, strict=True):
        if node is None:
            tensor_args[name] = inputs[0]  # never read (the kernel has no use for it)
        elif not _same_memory(args[name], fake):
            return None
        else:
            tensor_args[name] = node

    nodes: list[fx.Node] = []

    def insert(target: Any, node_args: tuple, kwargs: dict, val: Any) -> fx.Node:
        with graph.inserting_after(nodes[-1] if nodes else anchor):
            node = graph.call_function(target, node_args, kwargs)
        node.meta["val"] = val
        nodes.append(node)
        return node

    written = [n for n, t in zip(OUTPUT_PARAMS, outputs, strict=True) if t.numel() > 0]
    # the swizzled nvfp4 scales are zero-filled where their layout pads (alloc_nvfp4_scales)
    zeroed = spec.quant == "nvfp4" and nvfp4_scales_padded(x.numel() // x.shape[-1], x.shape[-1])
    for name in OUTPUT_PARAMS:  # each buffer as the kernel indexes it (absent: x, unused)
        if name in written:
            buffer = _allocation(args[name], zeroed=zeroed and name == "scale_out_ptr")
            tensor_args[name] = insert(*buffer)
        else:
            tensor_args[name] = inputs[0]
    fake_args = {name: node.meta["val"] for name, node in tensor_args.items()}
    constants = {name: v for name, v in args.items() if not isinstance(v, torch.Tensor)}
    hop_kwargs = {
        "kernel_idx": kernel_side_table.add_kernel(_user_kernel(spec, launch.num_warps)),
        "constant_args_idx": kernel_side_table.add_constant_args(constants),
        "grid": [(*launch.grid, 1)],
        "tma_descriptor_metadata": {},
    }
    results = {name: fake_args[name].clone() for name in written}
    call = insert(
        triton_kernel_wrapper_functional,
        (),
        {**hop_kwargs, "kwargs": tensor_args, "tensors_to_clone": written},
        results,
    )
    # Inductor gives the kernel its tensors with these exact strides (constant arguments)
    call.meta["eager_input_vals"] = ((), fx.node.map_arg(call.kwargs, lambda n: n.meta["val"]))
    ends = []
    for index in indices:
        name, want = OUTPUT_PARAMS[index], outputs[index]
        if name not in written:  # an empty output, as kernel_norm returns it
            ends.append(insert(*_allocation(want, zeroed=False)))
            continue
        end = insert(operator.getitem, (call, name), {}, results[name])
        val = end.meta["val"]
        if val.dtype != want.dtype:  # nvfp4 scales: bytes -> int32
            val = val.view(want.dtype)
            end = insert(torch.ops.aten.view.dtype, (end, want.dtype), {}, val)
        if val.shape != want.shape:  # rows -> the input's leading dims
            val = val.view(want.shape)
            end = insert(torch.ops.aten.view.default, (end, list(want.shape)), {}, val)
        ends.append(end)
    return nodes, ends


def _same_memory(arg: torch.Tensor, fake: torch.Tensor) -> bool:
    """Whether the kernel argument `arg` starts where `fake` does, with its dtype (it is
    `fake` or a view of it, not a copy)."""
    return (
        StorageWeakRef(arg.untyped_storage()) == StorageWeakRef(fake.untyped_storage())
        and arg.storage_offset() == fake.storage_offset()
        and arg.dtype == fake.dtype
    )


def _allocation(buffer: torch.Tensor, zeroed: bool) -> tuple[Any, tuple, dict, torch.Tensor]:
    """insert()'s arguments for a new tensor laid out as `buffer` (`zeroed`: filled with
    zeros, contiguous)."""
    kwargs = {"dtype": buffer.dtype, "device": buffer.device}
    if zeroed:  # (Inductor lowers `full`; `zeros` is decomposed before post-grad passes)
        return torch.ops.aten.full.default, (list(buffer.shape), 0), kwargs, buffer
    args = (list(buffer.shape), list(buffer.stride()))
    return torch.ops.aten.empty_strided.default, args, kwargs, buffer
