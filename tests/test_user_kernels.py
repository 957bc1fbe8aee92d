"""Norm kernels launched from Inductor's wrapper (irfuse/lowering/user_kernels.py): the
graph launch runs the kernel kernel_norm would, with the same arguments."""

from __future__ import annotations

import json
import operator
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.fx as fx
from functorch.compile import make_boxed_func
from torch._dynamo.utils import counters
from torch._inductor.utils import run_and_get_code
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

import irfuse.ops as ref
from irfuse.lowering import runtime, to_fx
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source, launched_kernels
from irfuse.lowering.runtime import kernel_norm
from irfuse.lowering.user_kernels import SAMPLE_ROWS, graph_launch_problem, lower_norm_in_graph
from irfuse.pipeline import Options, capture_reports, transform_graph
from tests import models
from tests.helpers import assert_close, assert_fp8_close, recorded_launches

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16
GRAPH_LAUNCH = "launched by Inductor's wrapper"

# (kernel, x shape, inputs present: residual / weight / scale / x_weight, kernel_norm
# outputs read)
CASES = [
    ("fused_add_rms_norm/plain/model/static/rounded_sum", (2, 3, 64), "rws", [0, 1]),
    ("rms_norm/plain/model/per_token", (5, 64), "ws", [0, 2]),
    ("rms_norm/gemma/model/per_group 64 col", (5, 128), "w", [0, 2]),
    ("quant/none/model/per_group 128 ue8m0", (3, 256), "", [0, 2]),
    ("quant/none/model/nvfp4", (5, 64), "s", [0, 2]),
    ("rms_norm/plain/model/per_token/keep_value", (2, 2, 64), "w", [0, 2, 3]),
    ("fused_add_rms_norm/plain/model/per_group 64/rounded_sum", (2, 3, 128), "rw", [0, 1, 2]),
    ("fused_add_rms_norm/plain/model/none", (3, 96), "rw", [0, 1]),
    # a sandwich: x normalised with its own weight first
    (
        "fused_add_rms_norm/gemma/model/per_token/rounded_sum/normed_x",
        (2, 3, 64),
        "rwx",
        [0, 1, 2],
    ),  # fmt: skip
    (
        "fused_add_rms_norm/plain/model/per_tensor/rounded_sum/normed_x",
        (5, 64),
        "rwx",
        [0, 1, 2],
    ),  # fmt: skip
    # a post-norm: x's norm, the residual add, the quant of the sum
    ("rms_norm_add/fp32/model/per_token", (2, 3, 64), "rw", [0, 1, 2]),
    ("rms_norm_add/plain/model/per_tensor", (5, 64), "rw", [0, 1, 2]),  # phase 2 reads the sum
    ("rms_norm/plain/model/per_token", (2, 2880), "ws", [0, 2]),  # 2880: padded to 4096 lanes
    ("rms_norm/plain/model/per_token in_dtype", (2, 3, 64), "w", [0, 2]),  # torchao's scale
    ("rms_norm/plain/model/per_tensor in_dtype", (5, 64), "w", [0, 2]),  # torchao's default
    # dynamic per-tensor: two launches, phase 1's results in a buffer of the graph
    ("rms_norm/plain/model/per_tensor", (5, 64), "w", [0, 2]),
    ("fused_add_rms_norm/plain/model/per_tensor/rounded_sum", (2, 3, 64), "rw", [0, 1, 2]),
    ("fused_add_rms_norm/plain/model/per_tensor", (4, 64), "rw", [0, 1, 2]),  # fp32 sum
    ("rms_norm/plain/model/per_tensor/keep_value", (3, 64), "w", [0, 2, 3]),
    ("rms_norm/plain/model/per_tensor", (1, 64), "w", [0, 2]),  # one row: one launch
    ("quant/none/model/per_tensor", (600, 16), "", [0, 2]),  # > 512 rows: zeroed atomic slots
]


def _inputs(kernel: str, shape: tuple, present: str, dtype=BF16):
    g = torch.Generator().manual_seed(sum(shape))
    x = (3 * torch.randn(shape, generator=g)).to(dtype)
    residual = torch.randn(shape, generator=g).to(dtype) if "r" in present else None
    w_dtype = torch.float32 if "/gemma/" in kernel else dtype
    w = (1 + 0.2 * torch.randn(shape[-1], generator=g)).to(w_dtype) if "w" in present else None
    scale = torch.tensor([2.0 if "per_token" in kernel else 0.05]) if "s" in present else None
    x_w = (0.5 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype) if "x" in present else None
    return tuple(t.to(DEVICE) if t is not None else None for t in (x, residual, w, scale, x_w))


X_EPS = 1e-5  # a sandwich's first norm's


def _kernel_norm(inputs: tuple, kernel: str, eps: float = 1e-6):
    """kernel_norm on the inputs of `_inputs` (x, residual, weight, scale, x_weight)."""
    x, residual, w, scale, x_weight = inputs
    return kernel_norm(x, residual, w, scale, eps, kernel, x_weight=x_weight, x_eps=X_EPS)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _graph_launch(
    kernel: str,
    inputs: tuple,
    indices: list[int],
    eps: float = 1e-6,
    dynamic_dims: int = 0,
    shape_env: ShapeEnv | None = None,
):
    """A graph holding only the graph launch of `kernel` on `inputs` (or why there is
    none); with `dynamic_dims`, the leading dims of x (and the residual) are symbolic
    (in `shape_env`, which holds the guards the lowering adds)."""
    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=shape_env or ShapeEnv())
    graph = fx.Graph()
    nodes = []
    for name, t in zip(("x", "residual", "weight", "scale", "x_weight"), inputs, strict=True):
        node = graph.placeholder(name)
        dims = [DimDynamic.STATIC] * (t.dim() if t is not None else 0)
        if name in ("x", "residual") and t is not None:
            dims[:dynamic_dims] = [DimDynamic.DYNAMIC] * dynamic_dims
        context = StatelessSymbolicContext(dynamic_sizes=dims)
        node.meta["val"] = mode.from_tensor(t, symbolic_context=context) if t is not None else None
        nodes.append(node if t is not None else None)
    anchor = [n for n in graph.nodes][-1]
    x, residual, weight, scale, x_weight = nodes  # in INPUT_PARAMS' order for the lowering
    lowered = lower_norm_in_graph(graph, anchor, KernelSpec.decode(kernel),
                                  (x, residual, weight, x_weight, scale), eps, indices,
                                  X_EPS)  # fmt: skip
    if isinstance(lowered, str):
        return lowered
    graph.output(tuple(lowered[1]))
    return fx.GraphModule({}, graph)


@pytest.mark.parametrize("kernel,shape,present,indices", CASES)
def test_graph_launch_is_kernel_norms_launch(kernel, shape, present, indices):
    """Run eagerly (the HOP launches the kernel itself), the graph launch gives
    kernel_norm's outputs to the bit: same kernel, block, strides and output layouts."""
    inputs = _inputs(kernel, shape, present)
    module = _graph_launch(kernel, inputs, indices)
    assert isinstance(module, fx.GraphModule), module
    got = module(*inputs)
    expected = _kernel_norm(inputs, kernel)
    for out, index in zip(got, indices, strict=True):
        want = expected[index]
        assert (out.shape, out.stride(), out.dtype) == (want.shape, want.stride(), want.dtype)
        assert torch.equal(_bits(out), _bits(want)), index


def test_stored_params_name_every_buffer_a_kernel_stores_to():
    """runtime.stored_params (what the graph treats as written) against the stores in the
    generated source of each kernel the cases launch, phases of a per-tensor quant too."""
    specs = {KernelSpec.decode(kernel) for kernel, *_ in CASES}
    specs |= {phase for spec in specs for phase in launched_kernels(spec)}
    for spec in specs:
        stores = set(re.findall(r"tl\.(?:store|atomic_max)\(\s*(\w+_ptr)", kernel_source(spec)))
        stored = set(runtime.stored_params(spec))
        assert stores & set(runtime.KERNEL_PARAMS) <= stored, spec.encode()
        # (per-group scales are stored through a pointer derived from scale_out_ptr)
        assert stored - stores <= {"scale_out_ptr"}, spec.encode()


@pytest.mark.parametrize("view", ["columns", "rows"])
def test_inputs_that_are_views_are_read_in_place(view):
    """x as the first half of wider rows (row stride 128), or rows 2.. of a tensor (a
    storage offset): the graph launch reads it in place with its stride, to the bit."""
    kernel = "fused_add_rms_norm/plain/model/per_token"
    big = _inputs(kernel, (5, 128), "")[0]
    x = big[:, :64] if view == "columns" else big.reshape(10, 64)[3:]
    _, residual, w, _, _ = _inputs(kernel, tuple(x.shape), "rw")
    inputs = (x, residual, w, None, None)
    module = _graph_launch(kernel, inputs, [0, 1, 2])
    assert isinstance(module, fx.GraphModule), module
    got = module(*inputs)
    expected = _kernel_norm(inputs, kernel)
    for out, want in zip(got, expected[:3], strict=True):
        assert torch.equal(_bits(out), _bits(want))


def test_an_input_the_kernel_reads_through_a_copy_keeps_kernel_norm():
    """A transposed input: its rows are not rows in memory; kernel_norm copies it."""
    x, _, w, _, _ = _inputs("rms_norm/plain/model/none", (64, 4), "w")
    why = _graph_launch("rms_norm/plain/model/none", (x.t(), None, w, None, None), [0])
    assert why == "it reads an input through a copy"


def test_rows_at_a_symbolic_stride_keep_kernel_norm_with_the_reason():
    """x as the first half of wider rows at a symbolic token count: its row stride gets a
    symbol of its own, which a launch from the graph cannot take as a constant.
    kernel_norm reads x in place at run time; the reason says so (not "a copy")."""
    kernel = "rms_norm/plain/model/none"
    x = _inputs(kernel, (5, 128), "")[0][:, :64]
    w = _inputs(kernel, (5, 64), "w")[2]
    why = _graph_launch(kernel, (x, None, w, None, None), [0], dynamic_dims=1)
    assert why == "an input's row stride is symbolic"


@pytest.mark.parametrize("copied", ["x", "weight", "x_weight"])
def test_a_per_tensor_quant_reading_an_input_through_a_copy_keeps_kernel_norm(copied):
    """The two launches of a per-tensor quant read copies of a transposed x or a strided
    weight (kernel_norm makes them at run time): the graph cannot launch them itself."""
    kernel = "fused_add_rms_norm/plain/model/per_tensor/rounded_sum/normed_x"
    x, residual, w, _, x_w = _inputs(kernel, (64, 64), "rwx")
    strided = torch.stack([w, w], dim=1).reshape(-1)[::2]  # w again, at stride 2
    inputs = {
        "x": (x.t(), residual, w, None, x_w),
        "weight": (x, residual, strided, None, x_w),
        "x_weight": (x, residual, w, None, strided),
    }[copied]
    assert _graph_launch(kernel, inputs, [0, 1, 2]) == "it reads an input through a copy"


# (kernel, x shape, inputs present, outputs read): launches the same at every token count
SYMBOLIC_CASES = [
    ("fused_add_rms_norm/plain/model/static/rounded_sum", (2, 3, 64), "rws", [0, 1]),
    ("rms_norm/plain/model/per_token/keep_value", (5, 64), "ws", [0, 2, 3]),
    ("quant/none/model/static", (2, 3, 64), "s", [0]),
]


@pytest.mark.parametrize("kernel,shape,present,indices", SYMBOLIC_CASES)
def test_graph_launch_with_a_symbolic_token_count(kernel, shape, present, indices):
    """Leading dims symbolic: one graph serves every token count (the grid's rows are
    computed from x's sizes at run time), with kernel_norm's outputs to the bit."""
    inputs = _inputs(kernel, shape, present)
    module = _graph_launch(kernel, inputs, indices, dynamic_dims=len(shape) - 1)
    assert isinstance(module, fx.GraphModule), module
    assert any(n.target == torch.ops.aten.sym_size.int for n in module.graph.nodes)
    for lead in ((1,) * (len(shape) - 1), (4,) * (len(shape) - 1)):
        other = _inputs(kernel, (*lead, shape[-1]), present)
        got = module(*other)
        expected = _kernel_norm(other, kernel)
        for out, index in zip(got, indices, strict=True):
            assert out.shape == expected[index].shape
            assert torch.equal(_bits(out), _bits(expected[index])), (lead, index)


@pytest.mark.parametrize(
    "kernel,rows,others,guards",
    [  # per-token: 16 warps below 1024 rows, 4 from; static: row tiles change at 64, 1024
        ("rms_norm/plain/model/per_token", 5, (1, 37), ["< 1024"]),
        ("quant/none/model/static", 5, (1, 63), ["< 64"]),
        ("quant/none/model/static", 100, (64, 70), [">= 64", "< 1024"]),
    ],
)
def test_a_launch_that_changes_with_the_token_count_is_guarded_to_its_range(
    kernel, rows, others, guards
):
    """Where the launch at a symbolic token count changes with the count, the graph
    takes the launch of its example count and guards on the range of counts that launch
    alike (dynamo recompiles beyond it); within the range it gives kernel_norm's bits."""
    present = "w" if kernel.startswith("rms_norm") else "s"
    shape_env = ShapeEnv()
    inputs = _inputs(kernel, (rows, 4096), present)
    module = _graph_launch(kernel, inputs, [0, 2], dynamic_dims=1, shape_env=shape_env)
    assert isinstance(module, fx.GraphModule), module
    assert sorted(str(g.expr).split(" ", 1)[1] for g in shape_env.guards) == sorted(guards)
    for t in others:
        other = _inputs(kernel, (t, 4096), present)
        got, expected = module(*other), _kernel_norm(other, kernel)
        for out, index in zip(got, [0, 2], strict=True):
            assert torch.equal(_bits(out), _bits(expected[index])), (t, index)


def test_several_rows_a_program_launch_from_the_graph(monkeypatch):
    """A norm + quant that runs several rows a program (runtime.rows_per_program_of; 64
    columns from 64 to 255 rows here, both sampled thresholds) launches its programs' grid
    from the graph, the last program running what is left: at a static token count, and
    at a symbolic one (its grid and n_rows read from the count), with kernel_norm's bits at
    every count of its range."""
    monkeypatch.setattr(runtime, "ROWS_COLS", (64,))
    monkeypatch.setattr(runtime, "ROWS_MIN_ROWS", 64)
    monkeypatch.setattr(runtime, "ROWS_MAX_ROWS", 256)
    kernel = "rms_norm/plain/model/per_token"
    launched = recorded_launches(monkeypatch)
    inputs = _inputs(kernel, (70, 64), "w")
    static = _graph_launch(kernel, inputs, [0, 2])
    symbolic = _graph_launch(kernel, inputs, [0, 2], dynamic_dims=1)
    assert isinstance(static, fx.GraphModule) and isinstance(symbolic, fx.GraphModule)
    for module, rows in ((static, 70), (symbolic, 70), (symbolic, 97), (symbolic, 64)):
        inputs = _inputs(kernel, (rows, 64), "w")
        got, expected = module(*inputs), _kernel_norm(inputs, kernel)
        assert launched[-1][0].rows_per_program == 8  # kernel_norm's own launch
        for out, index in zip(got, [0, 2], strict=True):
            assert torch.equal(_bits(out), _bits(expected[index])), (rows, index)
    grids = [
        n.kwargs["grid"][0][0]
        for module in (static, symbolic)
        for n in module.graph.nodes
        if "triton_kernel_wrapper" in str(n.target)
    ]
    assert grids[0] == 9 and isinstance(grids[1], fx.Node)  # 70 rows: 8 programs of 8, 1 of 6


def test_a_launch_whose_layout_follows_the_token_count_keeps_kernel_norm():
    """Column-major group scales have the token count as a stride: no range of counts
    launches alike, so the norm stays with kernel_norm."""
    kernel = "rms_norm/plain/model/per_group 64 col"
    inputs = _inputs(kernel, (5, 128), "w")
    why = _graph_launch(kernel, inputs, [0, 2], dynamic_dims=1)
    assert why == "its launch depends on the token count"


@pytest.mark.parametrize("rows", [1024, 4096])
def test_nvfp4_scales_padded_past_the_token_count_are_sized_by_it(rows):
    """The swizzled nvfp4 scales have the token count rounded up to 128 rows. From 1024
    rows the range's sampled counts were all multiples of 128, so the graph allocated
    them with the token count's rows and the kernel wrote past them at 1030 rows; a
    sample one above each threshold tells the two apart, and the graph allocates them
    with the count rounded up (zero-filled: a symbolic count may pad)."""
    kernel = "rms_norm/plain/model/nvfp4"
    inputs = _inputs(kernel, (rows, 2048), "ws")
    module = _graph_launch(kernel, inputs, [0, 2], dynamic_dims=1)
    assert isinstance(module, fx.GraphModule), module
    (scales,) = [n for n in module.graph.nodes if n.target == torch.ops.aten.full.default]
    size = scales.args[0][0]
    assert size.target == operator.mul and size.args[1] == 128, size


def test_nvfp4_scales_at_a_symbolic_count_match_kernel_norm():
    """rms_norm + nvfp4 launched from the graph at a symbolic token count, run at counts
    that pad the swizzled scales by different amounts: kernel_norm's bytes, padding and
    all."""
    kernel = "rms_norm/plain/model/nvfp4"
    module = _graph_launch(kernel, _inputs(kernel, (70, 64), "ws"), [0, 2], dynamic_dims=1)
    assert isinstance(module, fx.GraphModule), module
    for rows in (70, 65, 129, 255):
        inputs = _inputs(kernel, (rows, 64), "ws")
        got, expected = module(*inputs), _kernel_norm(inputs, kernel)
        for out, index in zip(got, [0, 2], strict=True):
            assert out.shape == expected[index].shape, (rows, index)
            assert torch.equal(_bits(out), _bits(expected[index])), (rows, index)


def test_a_launch_the_sampled_row_counts_agree_on_is_the_same_at_every_count():
    """SAMPLE_ROWS misses no threshold: every count up to 9000 where a launch choice
    (several rows a program among them, of bf16 rows) changes is sampled, with the count
    below it, and past the last one the choice holds (at a few large counts and 2^20)."""
    for scheme in ("none", "static", "per_token", "per_group 128", "nvfp4", "amax"):
        for producer in ("quant", "rms_norm"):
            spec = KernelSpec(producer, "none" if producer == "quant" else "plain", scheme)
            for n_cols in (64, 2880, 4096, 7168, 8192):

                def choice(rows, spec=spec, n_cols=n_cols):
                    config = runtime.spec_launch_config(spec, rows, n_cols)
                    several = runtime.rows_per_program_of(spec, rows, n_cols, BF16)
                    return config, runtime.runs_two_pass(spec, rows, n_cols), several

                changes = [rows for rows in range(2, 9000) if choice(rows) != choice(rows - 1)]
                missed = [r for r in changes if r not in SAMPLE_ROWS or r - 1 not in SAMPLE_ROWS]
                assert not missed, (spec, n_cols, missed)
                for rows in (8999, 65536, 10**6):
                    assert choice(rows) == choice(2**20), (spec, n_cols, rows)


def test_launches_the_graph_cannot_make_are_named():
    mode = FakeTensorMode(shape_env=ShapeEnv())
    cuda = FakeTensor(mode, torch.empty(4, 64, device="meta"), torch.device("cuda"))
    spec = KernelSpec.decode("rms_norm/plain/model/per_token")

    def problem(spec=spec, x=cuda, eps_input=False, all_launches=False):
        return graph_launch_problem(spec, x, eps_input, all_launches)

    assert problem() is None
    assert problem(x=mode.from_tensor(torch.empty(4, 64))) == "its tensors are not on the GPU"
    assert "eps is read at run time; graph_launch='all'" in problem(eps_input=True)
    assert problem(eps_input=True, all_launches=True) is None
    per_tensor = KernelSpec.decode("rms_norm/plain/model/per_tensor")
    assert "launches two kernels; graph_launch='all'" in problem(spec=per_tensor)
    assert problem(spec=per_tensor, all_launches=True) is None
    empty = FakeTensor(mode, torch.empty(0, 64, device="meta"), torch.device("cuda"))
    assert problem(x=empty) == "it has no rows"
    context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
    shape = mode.from_tensor(torch.empty(4, 64), symbolic_context=context).shape
    assert not isinstance(shape[0], int)
    with mode:
        symbolic = FakeTensor(mode, torch.empty(shape, device="meta"), torch.device("cuda"))
    assert "token count is symbolic" in problem(x=symbolic)
    assert problem(x=symbolic, all_launches=True) is None
    assert "per-tensor quant's launches need static shapes" in problem(per_tensor, symbolic, False,
                                                                       True)  # fmt: skip


def _norm_chain(scheme: str):
    """rms_norm + a quant, through torch.ops.irfuse (imported directly)."""

    def fn(x, w, s):
        y = torch.ops.irfuse.rms_norm(x, w, 1e-6)
        if scheme == "static":
            return torch.ops.irfuse.static_fp8_quant(y, s), y.new_empty(0)
        if scheme == "per_token":
            return torch.ops.irfuse.per_token_fp8_quant(y, s)
        if scheme == "per_group":
            return torch.ops.irfuse.per_group_fp8_quant(y, 64, True)
        if scheme == "per_tensor":
            return torch.ops.irfuse.per_tensor_fp8_quant(y)
        return torch.ops.irfuse.nvfp4_quant(y, s)

    return fn


@pytest.mark.cuda
@pytest.mark.parametrize(
    "scheme,t,h",
    [
        (scheme, t, h)
        for scheme in ("static", "per_token", "per_group", "nvfp4", "per_tensor")
        for t, h in ((1, 4096), (128, 4096), (257, 4096), (257, 2880))
    ]
    + [("per_tensor", 600, 4096)],
)
def test_gpu_inductor_launches_the_fused_kernel_from_its_wrapper(scheme, t, h):
    """Compiled by Inductor, the fused kernel is a call in Inductor's wrapper (no
    kernel_norm) and gives kernel_norm's results to the bit; a per-tensor quant's two
    kernels too (past 512 rows, its amax into zero-filled atomic slots)."""
    x, _, w, *_ = _inputs("rms_norm/plain/model/none", (t, h), "w")
    s = torch.tensor([0.05 if scheme != "per_token" else 2.0], device=DEVICE)
    if scheme == "nvfp4":
        s = (448 * 6 / ref.rms_norm(x, w, 1e-6).float().abs().amax()).reshape(1)
    fn = _norm_chain(scheme)
    torch._dynamo.reset()
    options = {"graph_launch": "all"} if scheme == "per_tensor" else {}  # (two launches)
    compiled = torch.compile(fn, backend="irfuse", options=options)
    with capture_reports() as reports, torch._inductor.config.patch(fx_graph_cache=False):
        (q, scales), (code,) = run_and_get_code(compiled, x, w, s)
    assert reports[0].launches and all(GRAPH_LAUNCH in r for r in reports[0].launches), str(
        reports[0]
    )
    assert "kernel_norm" not in code
    if (scheme, t) != ("per_tensor", 1):  # (one row: one per-token launch, not the phases)
        assert all(name in code for name in reports[0].kernels), code
    kernel = {"static": "static", "per_token": "per_token", "per_group": "per_group 64 col",
              "nvfp4": "nvfp4", "per_tensor": "per_tensor"}[scheme]  # fmt: skip
    s_ref = None if scheme in ("per_group", "per_tensor") else s
    q_ref, _, scales_ref, _ = kernel_norm(x, None, w, s_ref, 1e-6,
                                          f"rms_norm/plain/model/{kernel}")  # fmt: skip
    assert torch.equal(_bits(q), _bits(q_ref))
    if scheme == "per_tensor":
        assert torch.equal(scales.reshape(-1), scales_ref)
    elif scheme != "static":
        assert scales.stride() == scales_ref.stride() and torch.equal(scales, scales_ref)
    if scheme == "static":
        assert_fp8_close(q, ref.static_fp8_quant(ref.rms_norm(x, w, 1e-6), s), s)


@pytest.mark.cuda
@pytest.mark.parametrize("scheme", ["per_token", "nvfp4"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_gpu_several_rows_a_program_launch_from_the_wrapper(monkeypatch, scheme, dynamic):
    """Compiled by Inductor over 4100 rows of 4096 columns (runtime.rows_per_program_of:
    8 rows a program, 4 in the last), static or marked dynamic (then one graph serves 6001
    rows too, nvfp4's scales padded to 6016): the rows kernel is a call in the wrapper,
    with kernel_norm's bits."""
    monkeypatch.setattr(runtime, "ROWS_SCHEMES", ("nvfp4", "per_token"))  # nvfp4's too
    fn = _norm_chain(scheme)
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="irfuse")
    kernel = f"rms_norm/plain/model/{scheme}"
    for t in (4100, 6001) if dynamic else (4100,):
        x, _, w, *_ = _inputs("rms_norm/plain/model/none", (t, 4096), "w")
        s = torch.tensor([2.0], device=DEVICE)
        if scheme == "nvfp4":
            s = (448 * 6 / ref.rms_norm(x, w, 1e-6).float().abs().amax()).reshape(1)
        if dynamic:
            torch._dynamo.mark_dynamic(x, 0)
        if t == 4100:
            with torch._inductor.config.patch(fx_graph_cache=False):
                (q, scales), (code,) = run_and_get_code(compiled, x, w, s)  # (resets dynamo)
            assert "kernel_norm" not in code and "_8_rows" in code, code
            graphs = counters["stats"]["unique_graphs"]
        else:  # 6001 rows: the same graph
            q, scales = compiled(x, w, s)
            assert counters["stats"]["unique_graphs"] == graphs, "recompiled"
        q_ref, _, scales_ref, _ = kernel_norm(x, None, w, s, 1e-6, kernel)
        assert torch.equal(_bits(q), _bits(q_ref)) and torch.equal(scales, scales_ref), t


@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_gpu_add_norm_quant_block_launches_from_the_wrapper(mode):
    """A model's add + HF RMSNorm + static fp8 (the graph's own ops), static shapes, with
    and without CUDA graphs: launched from the wrapper, and eager's results."""
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
    # the block divides by its scale (`x / s`): `<static div>`
    assert reports[0].launches == [f"irfuse_add_rounded_rms_norm_static_div_fp8: {GRAPH_LAUNCH}"], (
        str(reports[0])
    )
    assert_close(h, h_ref)
    assert_fp8_close(q, q_ref, s)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "scheme,graph_launch,how",
    [
        ("static", "all", f"{GRAPH_LAUNCH} for 1 <= tokens < 1024"),
        ("static", "static", "its token count is symbolic"),
        ("per_token", "all", f"{GRAPH_LAUNCH} for 1 <= tokens < 1024"),
    ],
)
def test_gpu_a_symbolic_token_count(scheme, graph_launch, how):
    """A token count marked dynamic (as a recompile's automatic dynamic shapes make it)
    gives one graph for the counts below 1024. With graph_launch="all" a norm + static
    or per-token fp8 (no residual), whose warps change at 1024 rows, launches from the
    wrapper, guarded to fewer; with "static" kernel_norm picks the launch per call. All
    give kernel_norm's bits."""
    x, _, w, *_ = _inputs("rms_norm/plain/model/none", (300, 4096), "w")
    s = torch.tensor([2.0 if scheme == "per_token" else 0.05], device=DEVICE)
    torch._dynamo.reset()
    options = {"graph_launch": graph_launch}
    compiled = torch.compile(_norm_chain(scheme), backend="irfuse", options=options)
    with capture_reports() as reports, torch._inductor.config.patch(fx_graph_cache=False):
        for t in (16, 33, 2, 257):  # (1 would compile a graph of its own: 0/1 specialisation)
            xt = x[:t]
            if t == 16:
                torch._dynamo.mark_dynamic(xt, 0)
            q, scales = compiled(xt, w, s)
            q_ref, _, scales_ref, _ = kernel_norm(xt, None, w, s, 1e-6,
                                                  f"rms_norm/plain/model/{scheme}")  # fmt: skip
            assert torch.equal(_bits(q), _bits(q_ref)), t
            if scheme == "per_token":
                assert torch.equal(scales, scales_ref)
    launches = [launch for r in reports for launch in r.launches]
    assert len(reports) == 1 and launches and all(how in launch for launch in launches), launches


CACHED_PROCESS = """
import json, torch
from torch._dynamo.utils import counters
from irfuse.lowering.runtime import kernel_norm

def fn(x, w, s):
    return torch.ops.irfuse.static_fp8_quant(torch.ops.irfuse.rms_norm(x, w, 1e-6), s)

g = torch.Generator().manual_seed(0)
x = torch.randn(16, 4096, generator=g).to(torch.bfloat16).cuda()
w = torch.randn(4096, generator=g).to(torch.bfloat16).cuda()
s = torch.tensor([0.05], device="cuda")
q = torch.compile(fn, backend="irfuse")(x, w, s)
q_ref = kernel_norm(x, None, w, s, 1e-6, "rms_norm/plain/model/static")[0]
same = torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
print(json.dumps({**counters["inductor"], "same": same}))
"""


@pytest.mark.cuda
def test_gpu_a_graph_launch_is_served_from_inductors_cache_in_a_later_process(tmp_path):
    """The wrapper Inductor caches holds the kernel's source: a later process that hits
    the FX graph cache (the pass does not run there) launches it and gets its results."""
    env = {**os.environ, "IRFUSE_CACHE_DIR": str(tmp_path / "irfuse"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # fmt: skip
    runs = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", CACHED_PROCESS], env=env,
                             capture_output=True, text=True, check=True)  # fmt: skip
        runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert runs[0].get("fxgraph_cache_miss", 0) >= 1 and runs[0]["same"], runs
    assert runs[1].get("fxgraph_cache_hit", 0) >= 1, runs
    assert runs[1].get("fxgraph_cache_miss", 0) == 0 and runs[1]["same"], runs


def _graph_launch_backend(graph_launch: str, reports: list):
    """AOT autograd whose forward runs irfuse's pass with the graph launch on CPU tensors
    too (its device check lifted), then the graph eagerly: the triton HOPs launch the
    kernels themselves, through the interpreter."""
    from torch._dynamo.backends.common import aot_autograd

    def compiler(gm: fx.GraphModule, _):
        reports.append(transform_graph(gm.graph, Options(graph_launch=graph_launch)))
        gm.recompile()
        return make_boxed_func(gm.forward)

    return aot_autograd(fw_compiler=compiler)


def _on_any_device(spec, x, eps_input, all_launches):
    real = FakeTensor(x.fake_mode, torch.empty(x.shape, device="meta"), torch.device("cuda"))
    return graph_launch_problem(spec, real, eps_input, all_launches)


@pytest.mark.parametrize(
    "graph_launch,recompiled",
    [
        ("static", "torch.ops.irfuse.kernel_norm (its token count is symbolic"),
        ("all", GRAPH_LAUNCH),
    ],
)
def test_a_decoder_block_with_its_norms_launched_in_the_graph(
    monkeypatch, graph_launch, recompiled
):
    """The whole pass on a decoder block (two add + norm + fp8 chains, the attention
    between) writes its norms as graph launches; run eagerly, it matches eager. A second
    sequence length recompiles with the length symbolic (torch.compile's automatic
    dynamic shapes): with "static" those norms go through kernel_norm, with "all" they
    stay graph launches (their rows: the batch times the symbolic length)."""
    monkeypatch.setattr(to_fx, "graph_launch_problem", _on_any_device)
    torch.manual_seed(0)
    block = models.DecoderBlock().to(DEVICE)
    reports: list = []
    compiled = torch.compile(block, backend=_graph_launch_backend(graph_launch, reports))
    with torch.no_grad():
        for s in (8, 5, 11):
            x = torch.randn(2, s, 64, device=DEVICE)  # (CPU tensors: the interpreter)
            out, hidden = compiled(x, x)
            expected, expected_hidden = block(x, x)
            torch.testing.assert_close(hidden, expected_hidden, atol=0, rtol=0)
            torch.testing.assert_close(out, expected, atol=0.1, rtol=0.1)
    assert len(reports) == 2, reports
    first, second = ([n for n in report.launches if "rms_norm" in n] for report in reports)
    assert len(first) == 2 and all(launch.endswith(GRAPH_LAUNCH) for launch in first), first
    assert len(second) == 2 and all(recompiled in launch for launch in second), second


def test_dynamic_true_launches_with_the_module_eps_read_at_run_time(monkeypatch):
    """`dynamic=True` makes HF's module eps (a Python float) a graph input and the token
    count symbolic. With graph_launch="all" the norm still launches from the graph: the
    eps is read from its input each run (`.item()` of a CPU tensor), so a new eps takes
    effect without a recompile, and every output is kernel_norm's with that eps, to the
    bit; with "static" the norm stays with kernel_norm."""
    monkeypatch.setattr(to_fx, "graph_launch_problem", _on_any_device)
    block = models.AddNormQuant(64).to(BF16).to(DEVICE)
    s = torch.tensor([0.05], device=DEVICE)
    kernel = "fused_add_rms_norm/plain/model/static/rounded_sum"
    for graph_launch, how in (("all", GRAPH_LAUNCH), ("static", "its eps is read at run time")):
        reports: list = []
        torch._dynamo.reset()
        backend = _graph_launch_backend(graph_launch, reports)
        compiled = torch.compile(block, backend=backend, dynamic=True)
        with torch.no_grad():
            for t, eps in ((5, 4.0), (12, 4.0), (12, 0.5)):  # eps large enough to show
                block.norm.variance_epsilon = eps
                x, r, *_ = _inputs("fused_add_rms_norm/plain/model/none", (t, 64), "r")
                q, h = compiled(x, r, s)
                q_ref, h_ref, _, _ = kernel_norm(x, r, block.norm.weight, s, eps, kernel)
                assert torch.equal(h, h_ref) and torch.equal(_bits(q), _bits(q_ref)), (t, eps)
        launches = [launch for report in reports for launch in report.launches]
        assert len(reports) == 1 and launches and all(how in n for n in launches), launches


def test_a_count_past_the_guarded_range_recompiles(monkeypatch):
    """The range guard reaches dynamo: a standalone static quant compiled at 16 tokens
    (marked dynamic) serves 33 tokens from the same graph, and 100 tokens (past the row
    tiles' threshold at 64) from a recompile launching the tiles of that range; every
    output is kernel_norm's, to the bit."""
    monkeypatch.setattr(to_fx, "graph_launch_problem", _on_any_device)
    reports: list = []
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda x, s: torch.ops.irfuse.static_fp8_quant(x, s),
        backend=_graph_launch_backend("all", reports),
    )
    s = torch.tensor([0.05], device=DEVICE)
    x = _inputs("quant/none/model/static", (100, 4096), "")[0]
    for t in (16, 33, 100):
        xt = x[:t].clone()
        torch._dynamo.mark_dynamic(xt, 0)
        got = compiled(xt, s)
        expected = kernel_norm(xt, None, None, s, 0.0, "quant/none/model/static")[0]
        assert torch.equal(_bits(got), _bits(expected)), t
    launches = [report.launches for report in reports]
    assert launches == [
        [f"irfuse_quant_static_fp8: {GRAPH_LAUNCH} for 1 <= tokens < 64 (a recompile beyond)"],
        [f"irfuse_quant_static_fp8: {GRAPH_LAUNCH} for 64 <= tokens < 1024 (a recompile beyond)"],
    ], launches
