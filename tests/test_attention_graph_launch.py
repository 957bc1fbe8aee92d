"""Decode attention launched from Inductor's wrapper (to_fx.lower_attention_in_graph,
irfuse/lowering/graph_launch.py): the graph makes the launches kernel_attention would, with
the same arguments, so it gives kernel_attention's outputs to the bit."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._inductor.utils import run_and_get_code
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from irfuse.lowering import graph_launch, to_fx
from irfuse.lowering.attention import (
    graph_launch_problem,
    kernel_attention,
    kernel_attention_mask_summary,
)
from irfuse.lowering.to_fx import lower_attention_in_graph
from irfuse.pipeline import Options, capture_reports, transform_graph

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # (the interpreter's bf16 dot)
GRAPH_LAUNCH = "launched by Inductor's wrapper"

# (epilogue, layout, lse, mask: none / bool / bool with a hidden bias / additive, summary)
CASES = [
    ("none", "bhsd", True, None, False),
    ("static", "bs_hd", False, None, False),
    ("per_token", "bs_hd", True, "bool", True),
    ("nvfp4", "bs_hd", False, "hidden", True),
    ("static", "bhsd", False, "additive", False),
]


def _inputs(epilogue: str, mask_kind: str | None, b=2, hq=4, hkv=2, sq=1, skv=40, d=32):
    """q, k, v, the epilogue's scale, a padding mask [B, 1, 1, Skv] of `mask_kind` (None,
    bool, bool with a hidden bias, additive) and the hidden bias."""
    g = torch.Generator().manual_seed(skv)
    q, k, v = (torch.randn(b, h, s, d, generator=g).to(DTYPE).to(DEVICE)
               for h, s in ((hq, sq), (hkv, skv), (hkv, skv)))  # fmt: skip
    scale = {"none": None, "per_token": 2.0}.get(epilogue, 0.05)
    scale = torch.tensor([scale], device=DEVICE) if scale is not None else None
    keep = torch.rand(b, 1, 1, skv, generator=g) > 0.3
    mask = {
        None: None,
        "bool": keep,
        "hidden": keep,
        "additive": torch.zeros(b, 1, 1, skv).masked_fill(~keep, -1e4).to(DTYPE),
    }[mask_kind]
    mask = mask.to(DEVICE) if mask is not None else None
    return q, k, v, scale, mask, -1e4 if mask_kind == "hidden" else None


def _graph_launch(args: tuple, indices: list[int]):
    """A graph holding only the launches of kernel_attention(*args) (tensors become its
    inputs), or why there are none."""
    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    graph = fx.Graph()
    node_args, tensors = [], []
    for i, arg in enumerate(args):
        if isinstance(arg, torch.Tensor):
            node = graph.placeholder(f"arg{i}")
            node.meta["val"] = mode.from_tensor(arg, static_shapes=True)
            node_args.append(node)
            tensors.append(arg)
        else:
            node_args.append(arg)
    anchor = list(graph.nodes)[-1]
    lowered = lower_attention_in_graph(graph, anchor, tuple(node_args), indices)
    if isinstance(lowered, str):
        return lowered, tensors
    graph.output(tuple(lowered[1]))
    return fx.GraphModule({}, graph), tensors


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


@pytest.fixture
def bool_as_bytes(monkeypatch):
    """The graphs here run eagerly, which views a bool mask as bytes on any torch; only
    Inductor's lowering of that view needs torch 2.13 (tested with the whole pass below)."""
    monkeypatch.setattr(graph_launch, "inductor_views_bool_as_bytes", lambda: True)


@pytest.mark.parametrize("epilogue,layout,lse,mask_kind,summary", CASES)
def test_decode_graph_launch_is_kernel_attentions(
    bool_as_bytes, epilogue, layout, lse, mask_kind, summary
):
    """Run eagerly (each HOP launches its kernel), the split-KV decode and its combine,
    written into the graph, give kernel_attention's outputs to the bit, with its strides:
    the buffer between them allocated in the graph, nvfp4 scales viewed back to int32,
    a bool mask read as bytes, a mask summary read as an input."""
    q, k, v, scale, mask, hidden = _inputs(epilogue, mask_kind)
    tiles = kernel_attention_mask_summary(q, k, mask, hidden) if summary else None
    args = (q, k, v, scale, 0.3, "none", layout, lse, epilogue, mask, tiles, hidden)
    indices = [0] + [1] * lse + [2] * (epilogue in ("per_token", "nvfp4"))
    module, tensors = _graph_launch(args, indices)
    assert isinstance(module, fx.GraphModule), module
    launched = [n for n in module.graph.nodes if "triton_kernel_wrapper" in str(n.target)]
    assert len(launched) == 2  # the slices, then the combine
    got = module(*tensors)
    expected = kernel_attention(*args)
    for out, index in zip(got, indices, strict=True):
        want = expected[index]
        assert (out.shape, out.stride(), out.dtype) == (want.shape, want.stride(), want.dtype)
        assert torch.equal(_bits(out), _bits(want)), index


def _fakes(shapes, device: str, symbolic: bool = False) -> list[torch.Tensor]:
    """Fake q, k, v of `shapes` on `device` (any, without one), their sizes symbolic."""
    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    dims = DimDynamic.DYNAMIC if symbolic else DimDynamic.STATIC
    fakes = []
    for shape in shapes:
        context = StatelessSymbolicContext(dynamic_sizes=[dims] * len(shape))
        meta = mode.from_tensor(torch.empty(shape, dtype=DTYPE), symbolic_context=context)
        fakes.append(FakeTensor(mode, torch.empty(meta.shape, dtype=DTYPE, device="meta"),
                                torch.device(device)))  # fmt: skip
    return fakes


def test_what_keeps_kernel_attention_is_named():
    """The prefill (host-built TMA descriptors), symbolic shapes, CPU tensors and an input
    the kernels would read through a copy keep the runtime op, with the reason."""
    decode = [(2, 4, 1, 32), (2, 2, 40, 32), (2, 2, 40, 32)]
    prefill = [(2, 4, 64, 32), (2, 2, 64, 32), (2, 2, 64, 32)]
    assert graph_launch_problem(*_fakes(decode, "cuda")) is None
    assert graph_launch_problem(*_fakes(decode, "cpu")) == "its tensors are not on the GPU"
    symbolic = graph_launch_problem(*_fakes(decode, "cuda", symbolic=True))
    assert symbolic == "its shapes are symbolic"
    assert graph_launch_problem(*_fakes(prefill, "cuda")) == (
        "the prefill takes TMA descriptors built per call"
    )
    q, k, v, _, _, _ = _inputs("none", None)
    strided = k.transpose(-1, -2).contiguous().transpose(-1, -2)  # head dim not contiguous
    module, _ = _graph_launch((q, strided, v, None, 0.3, "none", "bhsd", False, "none"), [0])
    assert module == "it reads an input through a copy"


def _decode_step(epilogue: str):
    """A decode step's attention (GQA) and a quant of its [B*S, H*D] rows (irfuse ops)."""

    def step(q, k, v, scale):
        b, h, s, d = q.shape
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        o = o.transpose(1, 2).reshape(b * s, h * d)
        if epilogue == "static":
            return torch.ops.irfuse.static_fp8_quant(o, scale)
        if epilogue == "per_token":
            return torch.ops.irfuse.per_token_fp8_quant(o, scale)
        return torch.ops.irfuse.nvfp4_quant(o, scale)

    return step


@pytest.mark.parametrize(
    "graph_launch,how",
    [
        ("all", GRAPH_LAUNCH),
        ("static", "kernel_attention (graph_launch='all' may launch its kernels from the wrapper)"),
    ],
)
def test_a_decode_step_through_the_whole_pass(monkeypatch, graph_launch, how):
    """The pass on a decode step's attention + per-token quant, forced to the fused
    kernel, with the device check lifted: with graph_launch="all" the launches go into the
    graph (with "static": kernel_attention), which, run eagerly, gives
    kernel_attention's bits."""
    monkeypatch.setattr(to_fx, "attention_graph_problem", lambda q, k, v: None)
    reports = []

    def compiler(gm: fx.GraphModule, _):
        options = Options(attention="irfuse", graph_launch=graph_launch)
        reports.append(transform_graph(gm.graph, options))
        gm.recompile()
        return make_boxed_func(gm.forward)

    q, k, v, scale, _, _ = _inputs("per_token", None)
    torch._dynamo.reset()
    compiled = torch.compile(_decode_step("per_token"), backend=aot_autograd(fw_compiler=compiler))
    with torch.no_grad():
        got, scales_got = compiled(q, k, v, scale)
    assert len(reports[0].launches) == 1, reports
    assert reports[0].launches[0].startswith("irfuse_attention_per_token_fp8: "), reports
    assert reports[0].launches[0].endswith(how), reports
    out, _, scales = kernel_attention(q, k, v, scale, 32**-0.5, "none", "bs_hd", False, "per_token")
    assert torch.equal(_bits(got).flatten(), _bits(out).flatten())
    assert torch.equal(scales_got.flatten(), scales.flatten())


@pytest.mark.parametrize(
    "mask_kind,sq", [("bool", 1), ("hidden", 1), ("additive", 1), ("bool", 40), ("additive", 40)]
)
def test_mask_summary_graph_launch_is_the_runtime_ops(monkeypatch, bool_as_bytes, mask_kind, sq):
    """The mask summary's two kernels (flags, then each block's tile ranges), written into
    the graph with graph_launch="all", give kernel_attention_mask_summary's tiles to the
    bit, for the decode (one query row) and the prefill's blocks, bool, biased bool and
    additive masks (whose per-row bits are a second buffer between the kernels)."""
    monkeypatch.setattr(to_fx, "summary_graph_problem", lambda q, k, mask: None)
    q, k, _, _, mask, hidden = _inputs("none", mask_kind, sq=sq)
    if sq > 1:  # a mask with a query dimension
        keep = torch.rand(2, 1, sq, 40, generator=torch.Generator().manual_seed(sq)) > 0.3
        mask = keep if mask_kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, -1e4)
        mask = mask.to(DEVICE, DTYPE if mask_kind == "additive" else torch.bool)
    mode = FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())
    graph = fx.Graph()
    nodes = []
    for name, t in (("q", q), ("k", k), ("mask", mask)):
        nodes.append(graph.placeholder(name))
        nodes[-1].meta["val"] = mode.from_tensor(t, static_shapes=True)
    summary, how = to_fx._lower_summary(graph, nodes[-1], (*nodes, hidden), "all")
    assert how == GRAPH_LAUNCH
    graph.output((summary,))
    (got,) = fx.GraphModule({}, graph)(q, k, mask)
    assert torch.equal(got, kernel_attention_mask_summary(q, k, mask, hidden))


@pytest.mark.parametrize("views_bool", [True, False])
def test_a_masked_decode_step_launches_everything_from_the_graph(monkeypatch, views_bool):
    """A decode step beside a padding mask, through the whole pass with graph_launch="all"
    (device checks lifted): the mask summary and the attention + quant launch from the
    graph, whose outputs, run eagerly, are kernel_attention's bits with that summary.
    Where Inductor cannot view the bool mask as bytes (torch 2.11: its lowering asks
    `torch.iinfo(torch.bool)`), both keep their runtime ops, with that reason."""
    monkeypatch.setattr(graph_launch, "inductor_views_bool_as_bytes", lambda: views_bool)
    monkeypatch.setattr(to_fx, "attention_graph_problem", lambda q, k, v: None)
    monkeypatch.setattr(to_fx, "summary_graph_problem", lambda q, k, mask: None)
    reports = []

    def compiler(gm: fx.GraphModule, _):
        reports.append(transform_graph(gm.graph, Options(attention="irfuse", graph_launch="all")))
        gm.recompile()
        return make_boxed_func(gm.forward)

    def step(q, k, v, mask, scale):
        b, h, s, d = q.shape
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True)
        return torch.ops.irfuse.static_fp8_quant(o.transpose(1, 2).reshape(b * s, h * d), scale)

    q, k, v, scale, mask, _ = _inputs("static", "bool")
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(step, backend=aot_autograd(fw_compiler=compiler))(q, k, v, mask, scale)
    launches = reports[0].launches
    how = GRAPH_LAUNCH if views_bool else graph_launch.BOOL_AS_BYTES
    assert len(launches) == 2 and all(how in n for n in launches), launches
    tiles = kernel_attention_mask_summary(q, k, mask, float("-inf"))
    out, _, _ = kernel_attention(q, k, v, scale, 32**-0.5, "none", "bs_hd", False, "static", mask,
                                 tiles, float("-inf"))  # fmt: skip
    assert torch.equal(_bits(got).flatten(), _bits(out).flatten())


@pytest.mark.cuda
@pytest.mark.parametrize("epilogue", ["static", "per_token", "nvfp4"])
def test_gpu_inductor_launches_the_decode_from_its_wrapper(epilogue):
    """Under Inductor a decode step's attention + quant (forced to the fused kernel)
    launches from the wrapper: the split and combine kernels are in its code,
    kernel_attention is not, and the outputs are kernel_attention's bits."""
    q, k, v, scale, _, _ = _inputs(epilogue, None, b=4, hq=32, hkv=8, skv=1000, d=128)
    torch._dynamo.reset()
    options = {"attention": "irfuse", "graph_launch": "all"}
    compiled = torch.compile(_decode_step(epilogue), backend="irfuse", options=options)
    with capture_reports() as reports, torch._inductor.config.patch(fx_graph_cache=False):
        got, (code, *_) = run_and_get_code(compiled, q, k, v, scale)
    assert "irfuse_attention_split_kv" in code and "kernel_attention" not in code
    launches = [n for r in reports for n in r.launches]
    assert any("attention" in n and n.endswith(GRAPH_LAUNCH) for n in launches), launches
    out, _, scales = kernel_attention(q, k, v, scale, 128**-0.5, "none", "bs_hd", False, epilogue)
    q_got, scales_got = got if isinstance(got, tuple) else (got, None)
    assert torch.equal(_bits(q_got).flatten(), _bits(out).flatten())
    if scales_got is not None:
        assert torch.equal(_bits(scales_got).flatten(), _bits(scales).flatten())


# (torch 2.11 warns when torch._dynamo.reset() first imports Inductor: run alone, that
# import happens in this test's setup)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("error")
def test_the_report_names_the_prefill_kernel(monkeypatch):
    """A prefill's launch line names the kernel its runtime op runs at those shapes: the
    Gluon one on sm_90 (taken here for one), else the Triton one and why; without reading
    a fake tensor's address (under torch.compile that raises; here it warns: an error)."""
    from irfuse.lowering import attention_gluon
    from irfuse.lowering.attention import prefill_note

    prefill = [(2, 4, 1024, 128), (2, 2, 1024, 128), (2, 2, 1024, 128)]
    decode = [(2, 4, 1, 128), (2, 2, 1024, 128), (2, 2, 1024, 128)]
    monkeypatch.setattr(attention_gluon, "on_sm90", lambda device: False)  # (on any machine)
    assert prefill_note(*_fakes(prefill, "cuda"), "top_left", False, "static") == (
        "its prefill: the Triton kernel (not on an sm_90 GPU)"
    )
    monkeypatch.setattr(attention_gluon, "on_sm90", lambda device: True)
    assert prefill_note(*_fakes(prefill, "cuda"), "top_left", False, "static") == (
        "its prefill: irfuse_attention_gluon_2wg_static_fp8 (Gluon, sm_90, persistent)"
    )
    one_each = attention_gluon.Plan(512, attention_gluon.TWO_WIDE, False)
    monkeypatch.setitem(attention_gluon.PLANS, (128, True), (one_each,))
    assert prefill_note(*_fakes(prefill, "cuda"), "top_left", False, "none") == (
        "its prefill: irfuse_attention_gluon_2wg (Gluon, sm_90)"
    )
    assert prefill_note(*_fakes(prefill, "cuda"), "none", True, "none") == (
        "its prefill: the Triton kernel (an explicit mask)"
    )
    assert prefill_note(*_fakes(decode, "cuda"), "none", False, "none") is None
    assert prefill_note(*_fakes(prefill, "cpu"), "none", False, "none") is None
