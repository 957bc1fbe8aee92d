"""FX -> IR import: direct mappings, the generic op, dynamic dims, unchanged export."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from functorch.compile import aot_function, make_boxed_func
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx

import irfuse
import irfuse.ops
from irfuse.dialects.irfuse import (
    AllReduceOp,
    AttentionOp,
    FusedAddRmsNormOp,
    MergeAttnStatesOp,
    MlaAttentionOp,
    QuantOp,
    RmsNormOp,
)
from irfuse.dump import ir_text
from irfuse.frontend.fx_import import import_graph
from irfuse.pipeline import Options, capture_reports, transform_graph


def _aot_graphs(fn, *args):
    graphs = []

    def compiler(gm, _):
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    aot_function(fn, compiler)(*args)
    return graphs


def _ops(imported, kind):
    return [op for op in imported.func.body.ops if isinstance(op, kind)]


def test_sdpa_imports_as_attention_and_comes_back_unchanged():
    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3)

    q = torch.randn(1, 2, 8, 16)
    (gm,) = _aot_graphs(fn, q, q, q)
    imported = import_graph(gm.graph)
    imported.module.verify()
    (attention,) = _ops(imported, AttentionOp)
    assert attention.causal.data == "top_left"
    assert attention.scale.value.data == 0.3
    nodes = list(gm.graph.nodes)
    report = transform_graph(gm.graph, Options())
    assert not report.fused and all(a is b for a, b in zip(nodes, gm.graph.nodes, strict=True))


@pytest.mark.parametrize(
    "case,reason",
    [
        ("dropout", "dropout_p=0.5 (irfuse's attention has no dropout)"),
        ("lse", "its outputs other than the attention (lse, ...) are used"),
    ],
)
def test_sdpa_with_used_lse_or_dropout_stays_generic_and_says_why(case, reason):
    sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default

    def fn(q, k, v):
        if case == "dropout":
            return sdpa(q, k, v, dropout_p=0.5)[0]
        return sdpa(q, k, v)  # the output and its lse

    q = torch.randn(1, 2, 8, 16)
    gm = make_fx(fn, tracing_mode="fake")(q, q, q)  # traced only: no CPU dropout kernel
    imported = import_graph(gm.graph)
    assert not _ops(imported, AttentionOp)
    (note,) = imported.notes
    assert note.endswith(
        f"(aten._scaled_dot_product_flash_attention_for_cpu.default) not imported: {reason}"
    ), note
    report = transform_graph(gm.graph, Options())
    assert note in report.notes, str(report)


def _fused_rms_norm_graph(weight_dtype: torch.dtype, eps: float | None) -> fx.Graph:
    """y = aten._fused_rms_norm(x, [64], w, eps)[0], as a CUDA graph calls it (on CPU
    it decomposes while tracing, so the graph is built by hand)."""
    with FakeTensorMode():
        x, y = torch.empty(4, 64, dtype=torch.bfloat16), torch.empty(4, 64, dtype=torch.bfloat16)
        w, rstd = torch.empty(64, dtype=weight_dtype), torch.empty(4, 1)
    graph = fx.Graph()
    x_node, w_node = graph.placeholder("x"), graph.placeholder("w")
    x_node.meta["val"], w_node.meta["val"] = x, w
    norm = graph.call_function(torch.ops.aten._fused_rms_norm.default, (x_node, [64], w_node, eps))
    norm.meta["val"] = (y, rstd)
    out = graph.call_function(operator.getitem, (norm, 0))
    out.meta["val"] = y
    graph.output(out)
    return graph


@pytest.mark.parametrize("eps", [1e-5, None])
def test_fused_rms_norm_imports_with_its_eps_or_atens_default(eps):
    """eps None is ATen's default: the eps of the fp32 it computes bf16 in."""
    imported = import_graph(_fused_rms_norm_graph(torch.bfloat16, eps))
    (norm,) = _ops(imported, RmsNormOp)
    assert norm.eps.value.data == (torch.finfo(torch.float32).eps if eps is None else eps)
    assert not imported.notes


def test_fused_rms_norm_with_a_promoting_weight_stays_generic_and_says_why():
    imported = import_graph(_fused_rms_norm_graph(torch.float32, 1e-6))
    assert not _ops(imported, RmsNormOp)
    (note,) = imported.notes
    assert note.endswith("the weight is torch.float32, the input torch.bfloat16 (the result "
                         "promotes)"), note  # fmt: skip


def test_sdpa_with_a_symbolic_head_dim_and_default_scale_is_reported():
    """Every dim symbolic (dynamic=True on raw q, k, v): 1/sqrt(D) is no constant, so the
    SDPA stays generic and the report says why (a model's head dim is a constant)."""

    def fn(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    q = torch.randn(2, 2, 8, 16)
    torch._dynamo.reset()
    with capture_reports() as reports:
        torch.compile(fn, backend="irfuse", options={"inner": "eager"}, dynamic=True)(q, q, q)
    notes = [note for report in reports for note in report.notes]
    assert any("a symbolic head dim and the default scale" in note for note in notes), notes


def test_irfuse_custom_ops_import_directly():
    def fn(x, r, w, s):
        y, h = irfuse.ops.fused_add_rms_norm(x, r, w, 1e-6)
        return irfuse.ops.static_fp8_quant(y, s), h

    x = torch.randn(4, 64)
    (gm,) = _aot_graphs(fn, x, x, torch.ones(64), torch.ones(1))
    imported = import_graph(gm.graph)
    imported.module.verify()
    assert len(_ops(imported, FusedAddRmsNormOp)) == 1
    (quant,) = _ops(imported, QuantOp)
    assert quant.quant.scheme == "static"


def test_irfuse_custom_ops_fuse_and_match_the_reference():
    def fn(x, r, w, s):
        y, h = irfuse.ops.fused_add_rms_norm(x, r, w, 1e-6)
        return irfuse.ops.static_fp8_quant(y, s), h

    x, r = torch.randn(4, 64), torch.randn(4, 64)
    w, s = torch.rand(64) + 0.5, torch.tensor([0.02])
    compiled = torch.compile(fn, backend="irfuse", options={"inner": "eager"})
    q, h = compiled(x, r, w, s)
    q_ref, h_ref = fn(x, r, w, s)
    assert torch.equal(h, h_ref)
    torch.testing.assert_close(q.float() * s, q_ref.float() * s, atol=0.1, rtol=0.1)


def test_all_reduce_and_wait_import_as_one_op():
    def fn(x):
        y = torch.ops._c10d_functional.all_reduce(x, "sum", "tp")
        return torch.ops._c10d_functional.wait_tensor(y) * 2

    gm = make_fx(fn, tracing_mode="fake")(torch.randn(4, 8))
    imported = import_graph(gm.graph)
    (op,) = _ops(imported, AllReduceOp)
    assert op.group.data == "tp"
    assert "irfuse.all_reduce" in ir_text(imported.module)


def test_mla_merge_and_all_reduce_calls_import_as_irfuse_ops():
    """torch.ops.irfuse.mla_attention / merge_attn_states / all_reduce become their
    dialect ops (no kernel fuses them yet: compiled, they run as called)."""

    def fn(q, kv, pe, wk, wv, o, lse, x, s):
        m = irfuse.ops.mla_attention(q, kv, pe, wk, wv, 0.125, True)
        mo, ml = irfuse.ops.merge_attn_states(o, lse, o * 2, lse + 1)
        q8, _ = irfuse.ops.merge_attn_states(o, lse, o, lse, output_scale=s)
        return m, mo, ml, q8, irfuse.ops.all_reduce(x, "tp")

    args = (torch.randn(4, 2, 48), torch.randn(9, 64), torch.randn(9, 1, 16),
            torch.randn(2, 32, 64), torch.randn(2, 64, 32), torch.randn(4, 2, 32),
            torch.randn(2, 4), torch.randn(4, 8), torch.tensor([0.05]))  # fmt: skip
    imported = import_graph(make_fx(fn, tracing_mode="fake")(*args).graph)
    imported.module.verify()
    (mla,) = _ops(imported, MlaAttentionOp)
    assert mla.causal is not None and mla.scale.value.data == 0.125
    merges = _ops(imported, MergeAttnStatesOp)
    assert [m.quant.text if m.quant else None for m in merges] == [None, "static"]
    (reduce,) = _ops(imported, AllReduceOp)
    assert reduce.group.data == "tp" and not imported.notes
    compiled = torch.compile(fn, backend="irfuse", options={"inner": "eager"})
    for got, want in zip(compiled(*args), fn(*args), strict=True):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def test_an_all_reduce_of_integers_is_not_irfuses():
    """irfuse.all_reduce sums floats in fp32; an integer one stays a call, with a note."""

    def fn(x):
        y = torch.ops._c10d_functional.all_reduce(x, "sum", "tp")
        return torch.ops._c10d_functional.wait_tensor(y)

    x = torch.ones(4, 8, dtype=torch.int64)
    imported = import_graph(make_fx(fn, tracing_mode="fake")(x).graph)
    assert not _ops(imported, AllReduceOp)
    assert any("an all_reduce of torch.int64" in note for note in imported.notes), imported.notes


def test_generic_ops_keep_target_and_constants_and_dynamic_dims(tmp_path):
    def fn(x):
        return torch.clamp(x.sum(-1, keepdim=True), min=-2.5) + 1

    compiled = torch.compile(
        fn, backend="irfuse", dynamic=True, options={"inner": "eager", "dump_dir": str(tmp_path)}
    )
    compiled(torch.randn(5, 8))
    (imported,) = tmp_path.glob("*/00-imported.mlir")
    text = imported.read_text()
    assert "tensor<?x?xf32>" in text and "%arg0: i64" in text, text  # SymInt inputs
    assert '"aten.sum.dim_IntList"' in text and "[-1 : i64], true" in text
    assert "-2.500000e+00 : f64" in text


def test_irfuse_custom_op_calls_run_the_generated_kernel():
    """A model that calls irfuse.ops directly gets the kernels, not the reference."""

    def fn(x):
        return irfuse.ops.per_token_fp8_quant(x)

    x = torch.randn(4, 128, device="cuda" if torch.cuda.is_available() else "cpu")
    report = irfuse.explain(fn, x)
    assert report.kernels == ["irfuse_quant_per_token_fp8"], str(report)
    torch._dynamo.reset()
    q, s = torch.compile(fn, backend="irfuse", options={"inner": "eager"})(x)
    q_ref, s_ref = fn(x)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref)


def test_several_new_kernels_after_one_anchor_keep_the_graph_valid():
    """New nodes are ordered between their anchor and the next original node."""

    def fn(x, w):
        a = irfuse.ops.rms_norm(x, w, 1e-6)
        b = irfuse.ops.rms_norm(x, w, 1e-5)
        c = irfuse.ops.rms_norm(x, w, 1e-4)
        y, h = irfuse.ops.fused_add_rms_norm(c, x + 1, w, 1e-6)
        return a + b + y, h

    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w = torch.randn(4, 64, device=device), torch.rand(64, device=device) + 0.5
    out = torch.compile(fn, backend="irfuse", options={"inner": "eager"})(x, w)
    for got, want in zip(out, fn(x, w), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_operands_on_several_devices_are_not_lowered():
    """A scale on another device than the activations' GPU: the kernel would not read it.
    The graph is left as it came, with the reason. (Captured on the CPU and placed as on
    a GPU, tests/gpu_placement.py, then the scale moved to the meta device: a second GPU
    is not there to name on a machine with one.)"""
    from tests import models
    from tests.gpu_placement import captured_graph, placed_on_gpu

    x, w, s = torch.randn(4, 64), torch.rand(64) + 0.5, torch.tensor([0.1])
    gm = placed_on_gpu(captured_graph(models.hf_norm_quant, x, w, s))
    scale_node = [n for n in gm.graph.nodes if n.op == "placeholder"][2]
    scale = scale_node.meta["val"]
    with scale.fake_mode:
        scale_node.meta["val"] = torch.empty_like(scale, device="meta")
    nodes = list(gm.graph.nodes)
    report = transform_graph(gm.graph, Options())
    assert any("several devices" in note for note in report.notes), str(report)
    assert list(gm.graph.nodes) == nodes and not report.kernels


def test_example_shapes_set_each_size_symbol_once_for_every_tensor():
    """The sizes a measured choice times a dynamic graph at: each symbol at its hint, then
    doubled, in every expression that uses it; a data-dependent size has no example."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import (
        DimDynamic,
        ShapeEnv,
        StatelessSymbolicContext,
    )

    from irfuse.frontend.size_examples import example_shapes

    shape_env = ShapeEnv()
    mode = FakeTensorMode(shape_env=shape_env)
    dynamic = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * 2)
    a = mode.from_tensor(torch.empty(3, 5), source=ConstantSource("a"), symbolic_context=dynamic)
    with mode:
        b = torch.empty(a.shape[0] * 2, a.shape[1] + 1, 4)
        unbacked = torch.empty(shape_env.create_unbacked_symint(), 4)
    assert example_shapes([a, None, b]) == [
        [(3, 5), None, (6, 6, 4)],
        [(6, 10), None, (12, 11, 4)],
    ]
    assert example_shapes([a, unbacked]) == []
