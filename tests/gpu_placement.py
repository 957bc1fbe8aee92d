"""A graph captured on the CPU, placed as on a GPU: what the passes see there, tested
without one. Tensors of one dim or more (inputs, parameters) and the factories that name
the CPU move to CUDA (fake values, propagated again); 0-d inputs (the floats
`dynamic=True` makes graph inputs) and 0-d constants stay on the host, as on a GPU.

Where it differs from a GPU: a 0-d parameter, buffer or input stays on the CPU, also one
a model or its caller puts on the GPU (`model.to("cuda")`); every factory that names the
CPU moves, also one a model leaves on the host on purpose; a constant made with
`device=x.device` keeps the CPU; the graph keeps the CPU's decompositions (SDPA's CPU
flash form, a decomposed `F.rms_norm`); transform_graph on it runs without the
backend's prepasses."""

from __future__ import annotations

import copy
from collections.abc import Collection

import torch
from functorch.compile import make_boxed_func
from torch import fx
from torch._dynamo.backends.common import aot_autograd
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

# with its index, as fake tensors have it on a machine with a GPU (it normalises "cuda")
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def captured_graph(fn, *args, dynamic: bool = False) -> fx.GraphModule:
    """The forward graph AOTAutograd hands a backend for fn(*args) (compiled afresh)."""
    graphs = []

    def capture(gm, _):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(fn, backend=aot_autograd(fw_compiler=capture), dynamic=dynamic)(*args)
    return graphs[0]


def placed_on_gpu(gm: fx.GraphModule, on_host: Collection[int] = ()) -> fx.GraphModule:
    """A copy of `gm` whose fake values are those of the same graph run on a GPU, but for
    the inputs at positions `on_host`, which stay on the CPU."""
    gm = copy.deepcopy(gm)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    mode = next(n.meta["val"].fake_mode for n in placeholders
                if isinstance(n.meta.get("val"), torch.Tensor))  # fmt: skip
    args = []
    with mode:
        for i, node in enumerate(placeholders):
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() >= 1 and i not in on_host:
                val = torch.empty_strided(val.shape, val.stride(), dtype=val.dtype, device=CUDA)
                node.meta["val"] = val
            args.append(val)
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.kwargs.get("device") == CPU:
            node.kwargs = {**node.kwargs, "device": CUDA}
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*args)
    return gm
