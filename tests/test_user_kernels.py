"""Norm kernels launched from Inductor's wrapper (irfuse/lowering/user_kernels.py): the
graph launch runs the kernel kernel_norm would, with the same arguments."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch._inductor.utils import run_and_get_code
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import irfuse.ops as ref
from irfuse.lowering.kernel_spec import KernelSpec
from irfuse.lowering.runtime import kernel_norm
from irfuse.lowering.user_kernels import graph_launch_problem, lower_norm_in_graph
from irfuse.pipeline import capture_reports
from tests.helpers import assert_close, assert_fp8_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16
GRAPH_LAUNCH = "launched by Inductor's wrapper"

# (kernel, x shape, inputs present: residual / weight / scale, kernel_norm outputs read)
CASES = [
    ("fused_add_rms_norm/plain/model/static/rounded_sum", (2, 3, 64), "rws", [0, 1]),
    ("rms_norm/plain/model/per_token", (5, 64), "ws", [0, 2]),
    ("rms_norm/gemma/model/per_group 64 col", (5, 128), "w", [0, 2]),
    ("quant/none/model/per_group 128 ue8m0", (3, 256), "", [0, 2]),
    ("quant/none/model/nvfp4", (5, 64), "s", [0, 2]),
    ("rms_norm/plain/model/per_token/keep_value", (2, 2, 64), "w", [0, 2, 3]),
    ("fused_add_rms_norm/plain/model/none", (3, 96), "rw", [0, 1]),
]


def _inputs(kernel: str, shape: tuple, present: str, dtype=BF16):
    g = torch.Generator().manual_seed(sum(shape))
    x = (3 * torch.randn(shape, generator=g)).to(dtype)
    residual = torch.randn(shape, generator=g).to(dtype) if "r" in present else None
    w_dtype = torch.float32 if "/gemma/" in kernel else dtype
    w = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(w_dtype) if "w" in present else None
    scale = torch.tensor([2.0 if "per_token" in kernel else 0.05]) if "s" in present else None
    return tuple(t.to(DEVICE) if t is not None else None for t in (x, residual, w, scale))


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _graph_launch(kernel: str, inputs: tuple, indices: list[int], eps: float = 1e-6):
    """A graph holding only the graph launch of `kernel` on `inputs` (or None)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    graph = fx.Graph()
    nodes = []
    for name, t in zip(("x", "residual", "weight", "scale"), inputs, strict=True):
        node = graph.placeholder(name)
        node.meta["val"] = mode.from_tensor(t) if t is not None else None
        nodes.append(node if t is not None else None)
    anchor = [n for n in graph.nodes][-1]
    lowered = lower_norm_in_graph(graph, anchor, KernelSpec.decode(kernel), tuple(nodes), eps,
                                  indices)  # fmt: skip
    if lowered is None:
        return None
    graph.output(tuple(lowered[1]))
    return fx.GraphModule({}, graph)


@pytest.mark.parametrize("kernel,shape,present,indices", CASES)
def test_graph_launch_is_kernel_norms_launch(kernel, shape, present, indices):
    """Run eagerly (the HOP launches the kernel itself), the graph launch gives
    kernel_norm's outputs to the bit: same kernel, block, strides and output layouts."""
    inputs = _inputs(kernel, shape, present)
    module = _graph_launch(kernel, inputs, indices)
    assert module is not None
    got = module(*inputs)
    expected = kernel_norm(*inputs, 1e-6, kernel)
    for out, index in zip(got, indices, strict=True):
        want = expected[index]
        assert (out.shape, out.stride(), out.dtype) == (want.shape, want.stride(), want.dtype)
        assert torch.equal(_bits(out), _bits(want)), index


def test_an_input_the_kernel_reads_through_a_copy_keeps_kernel_norm():
    """A transposed input: its rows are not rows in memory; kernel_norm copies it."""
    x, _, w, _ = _inputs("rms_norm/plain/model/none", (64, 4), "w")
    assert _graph_launch("rms_norm/plain/model/none", (x.t(), None, w, None), [0]) is None


def test_launches_the_graph_cannot_make_are_named():
    mode = FakeTensorMode()
    cuda = FakeTensor(mode, torch.empty(4, 64, device="meta"), torch.device("cuda"))
    spec = KernelSpec.decode("rms_norm/plain/model/per_token")
    assert graph_launch_problem(spec, cuda, eps_input=False) is None
    cpu = mode.from_tensor(torch.empty(4, 64))
    assert graph_launch_problem(spec, cpu, eps_input=False) == "its tensors are not on the GPU"
    assert graph_launch_problem(spec, cuda, eps_input=True) == "its eps is read at run time"
    per_tensor = KernelSpec.decode("rms_norm/plain/model/per_tensor")
    assert "launches two kernels" in graph_launch_problem(per_tensor, cuda, eps_input=False)
    empty = FakeTensor(mode, torch.empty(0, 64, device="meta"), torch.device("cuda"))
    assert graph_launch_problem(spec, empty, eps_input=False) == "it has no rows"


def _norm_chain(scheme: str):
    """rms_norm + a quant, through torch.ops.irfuse (imported directly)."""

    def fn(x, w, s):
        y = torch.ops.irfuse.rms_norm(x, w, 1e-6)
        if scheme == "static":
            return torch.ops.irfuse.static_fp8_quant(y, s), y.new_empty(0)
        if scheme == "per_token":
            return torch.ops.irfuse.per_token_fp8_quant(y, s)
        if scheme == "per_group":
            return torch.ops.irfuse.per_group_fp8_quant(y, 128, True)
        return torch.ops.irfuse.nvfp4_quant(y, s)

    return fn


@pytest.mark.cuda
@pytest.mark.parametrize("scheme", ["static", "per_token", "per_group", "nvfp4"])
@pytest.mark.parametrize("t", [1, 128, 257])
def test_gpu_inductor_launches_the_fused_kernel_from_its_wrapper(scheme, t):
    """Compiled by Inductor, the fused kernel is a call in Inductor's wrapper (no
    kernel_norm) and gives kernel_norm's results to the bit."""
    x, _, w, _ = _inputs("rms_norm/plain/model/none", (t, 4096), "w")
    s = torch.tensor([0.05 if scheme != "per_token" else 2.0], device=DEVICE)
    if scheme == "nvfp4":
        s = (448 * 6 / ref.rms_norm(x, w, 1e-6).float().abs().amax()).reshape(1)
    fn = _norm_chain(scheme)
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="irfuse")
    with capture_reports() as reports, torch._inductor.config.patch(fx_graph_cache=False):
        (q, scales), (code,) = run_and_get_code(compiled, x, w, s)
    assert reports[0].launches and all(GRAPH_LAUNCH in r for r in reports[0].launches), str(
        reports[0]
    )
    assert "kernel_norm" not in code and reports[0].kernels[0] in code
    kernel = {"static": "static", "per_token": "per_token", "per_group": "per_group 128 col",
              "nvfp4": "nvfp4"}[scheme]  # fmt: skip
    q_ref, _, scales_ref, _ = kernel_norm(x, None, w, s, 1e-6, f"rms_norm/plain/model/{kernel}")
    assert torch.equal(_bits(q), _bits(q_ref))
    if scheme != "static":
        assert scales.stride() == scales_ref.stride() and torch.equal(scales, scales_ref)
    if scheme == "static":
        assert_fp8_close(q, ref.static_fp8_quant(ref.rms_norm(x, w, 1e-6), s), s)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_gpu_add_norm_quant_block_launches_from_the_wrapper(mode):
    """A model's add + HF RMSNorm + static fp8 (the graph's own ops), static shapes, with
    and without CUDA graphs: launched from the wrapper, and eager's results."""
    from tests import models

    block = models.AddNormQuant(4096).to(DEVICE, BF16)
    x, r, *_ = _inputs("fused_add_rms_norm/plain/model/none", (16, 4096), "r")
    s = torch.tensor([0.05], device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="irfuse", mode=mode)
    with (
        torch.no_grad(),
        capture_reports() as reports,
        torch._inductor.config.patch(fx_graph_cache=False),
    ):
        for _ in range(3):  # CUDA graphs record, then replay
            q, h = compiled(x, r, s)
        q_ref, h_ref = block(x, r, s)
    assert reports[0].launches == [f"irfuse_add_rounded_rms_norm_static_fp8: {GRAPH_LAUNCH}"], str(
        reports[0]
    )
    assert_close(h, h_ref)
    assert_fp8_close(q, q_ref, s)


@pytest.mark.cuda
def test_gpu_symbolic_sizes_launch_through_kernel_norm():
    """Under dynamic=True the launch (block, warps) depends on the token count: the op
    chooses it per call, and the report says why."""
    x, _, w, _ = _inputs("rms_norm/plain/model/none", (16, 4096), "w")
    s = torch.tensor([2.0], device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(_norm_chain("per_token"), backend="irfuse", dynamic=True)
    with capture_reports() as reports, torch._inductor.config.patch(fx_graph_cache=False):
        for t in (16, 33):
            q, scales = compiled(x[:t].contiguous(), w, s)
            q_ref, _, scales_ref, _ = kernel_norm(x[:t], None, w, s, 1e-6,
                                                "rms_norm/plain/model/per_token")  # fmt: skip
            assert torch.equal(_bits(q), _bits(q_ref))
            assert torch.equal(scales, scales_ref)
    launches = [launch for r in reports for launch in r.launches]
    assert launches and all("symbolic sizes" in launch for launch in launches), launches
