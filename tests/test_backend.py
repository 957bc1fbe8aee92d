"""torch.compile(backend="irfuse") end to end: results, reports, options, dumps."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from functorch.compile import aot_function, make_boxed_func

import irfuse
from irfuse.backend import IrfuseGraphPass
from irfuse.frontend.fx_import import ON_HOST_REASON
from irfuse.pipeline import AUTOGRAD, Options, capture_reports, transform_graph
from irfuse.transforms.match import HOST_SCALE
from irfuse.transforms.raise_rms_norm import FROM_A_REDUCTION, NO_QUANT, READ_BY_POINTWISE
from tests import models
from tests.gpu_placement import captured_graph, placed_on_gpu
from tests.helpers import EVERY_NORM, assert_close, assert_fp8_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BF16 = torch.bfloat16
FP8 = torch.float8_e4m3fn


def _assert_norm_matches(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Bit for bit on the CPU, where the interpreter's row reduction gives eager's fp32
    sums for these sizes; within tolerance on a GPU, whose reduction order may move a
    last bit."""
    if DEVICE == "cpu":
        assert torch.equal(out, expected)
    else:
        assert_close(out, expected)


def _norm_inputs(t: int = 4, h: int = 64, dtype=BF16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(t, h, generator=g).to(dtype).to(DEVICE)
    r = torch.randn(t, h, generator=g).to(dtype).to(DEVICE)
    w = (1 + 0.1 * torch.randn(h, generator=g)).to(dtype).to(DEVICE)
    return x, r, w, torch.tensor([0.05], device=DEVICE)


def test_add_rms_norm_quant_fuses_and_matches_eager():
    x, r, w, s = _norm_inputs()
    compiled = torch.compile(
        models.add_rms_norm_quant, backend="irfuse", options={"inner": "eager"}
    )
    with capture_reports() as reports:
        q, h = compiled(x, r, w, s)
    q_ref, h_ref = models.add_rms_norm_quant(x, r, w, s)
    assert reports[0].fused["fuse-rms-norm-quant"] == 1
    assert reports[0].fused["fuse-add-rms-norm"] == 1
    # CPU: F.rms_norm decomposes (fp32 weight multiply); CUDA: aten._fused_rms_norm
    assert reports[0].kernels[0] in (
        "irfuse_add_rounded_rms_norm_fp32w_static_div_fp8",
        "irfuse_add_rounded_rms_norm_static_div_fp8",
    )
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
    assert_fp8_close(q, q_ref, s)


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_a_transposed_sum_keeps_its_layout_for_the_views_after_it(inner):
    """x and r transposed: their sum h is column-major, and the graph's views of it were
    traced so (`h.t().reshape(-1)` is a view there). The kernel writes h row-major; the
    eager graph copies it back into h's layout (else that view fails), and h comes out
    with eager's strides."""

    def fn(x, r, w, s):
        h = x + r
        return models.hf_norm_quant(h, w, s), h, h.t().reshape(-1) * 2

    x, r, w, s = _norm_inputs(t=8, h=64)
    x, r = x.t().contiguous().t(), r.t().contiguous().t()  # strides (1, 8)
    with capture_reports() as reports, _no_compile_caches():  # a cache hit writes no report
        q, h, flat = torch.compile(fn, backend="irfuse", options={"inner": inner})(x, r, w, s)
    q_ref, h_ref, flat_ref = fn(x, r, w, s)
    assert reports[0].fused["fuse-add-rms-norm"] == 1, str(reports[0])
    assert h.stride() == h_ref.stride()
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
    torch.testing.assert_close(flat, flat_ref, atol=0, rtol=0)
    assert_fp8_close(q, q_ref, s)


@pytest.mark.parametrize(
    "fn,kernel",
    [
        (models.hf_norm_quant, "irfuse_rms_norm_static_fp8"),
        (models.gemma_norm_quant, "irfuse_rms_norm_gemmaw_static_div_fp8"),
        (models.t5_norm_quant, "irfuse_rms_norm_static_div_fp8"),
        (models.squared_by_mul_norm_quant, "irfuse_rms_norm_static_div_fp8"),
        (models.cast_twice_norm_quant, "irfuse_rms_norm_static_div_fp8"),
    ],
)
@pytest.mark.parametrize("eps", [1e-5, 1e-6, 1e-12])
def test_model_idioms_fuse(fn, kernel, eps):
    """x's mean square is about eps, so that an eps lost on the way changes the result."""
    x, _, w, s = _norm_inputs(t=3, h=96)
    x = (x.float() * eps**0.5).to(x.dtype)
    report = irfuse.explain(fn, x, w, s, eps)
    assert report.fused["fuse-rms-norm-quant"] == 1, str(report)
    assert report.kernels == [kernel]
    torch._dynamo.reset()
    q = torch.compile(fn, backend="irfuse", options={"inner": "eager"})(x, w, s, eps)
    assert_fp8_close(q, fn(x, w, s, eps), s)


@pytest.mark.parametrize(
    "fn,kernel",
    [
        (models.hf_norm_quant, "irfuse_rms_norm_static_fp8"),
        (models.gemma_norm_quant, "irfuse_rms_norm_gemmaw_static_div_fp8"),
        (models.t5_norm_quant, "irfuse_rms_norm_static_div_fp8"),
        (models.vllm_add_norm_quant, "irfuse_fused_add_rms_norm_static_div_fp8"),
    ],
)
def test_model_idioms_with_a_float_eps_argument_compiled_dynamic(fn, kernel):
    """eps passed as a float argument under dynamic=True is a graph input: every form
    (the fp32-sum fused add too) reads it at launch, and a new eps needs no recompile."""
    x, r, w, s = _norm_inputs(t=3, h=96)
    args = (x, r, w, s) if fn is models.vllm_add_norm_quant else (x, w, s)
    compiled = torch.compile(fn, backend="irfuse", options={"inner": "eager"}, dynamic=True)
    with capture_reports() as reports:
        for eps in (1e-6, 4.0):
            out, expected = compiled(*args, eps), fn(*args, eps)
            q, q_ref = (out[0], expected[0]) if isinstance(out, tuple) else (out, expected)
            assert_fp8_close(q, q_ref, s)
    (report,) = reports
    assert report.kernels == [kernel] and not report.rejected, str(report)


def test_weight_dtype_mismatch_is_refused_with_its_reason():
    x, _, w, s = _norm_inputs()
    w32 = w.float()
    report = irfuse.explain(models.hf_norm_quant, x, w32, s)
    assert {
        "pass": "raise-rms-norm",
        "reason": "weight dtype float32 != input dtype bfloat16",
    }.items() <= report.rejected[0].items(), str(report)
    assert "fuse-rms-norm-quant" not in report.fused
    torch._dynamo.reset()
    q = torch.compile(models.hf_norm_quant, backend="irfuse", options={"inner": "eager"})(x, w32, s)
    assert torch.equal(q.view(torch.uint8), models.hf_norm_quant(x, w32, s).view(torch.uint8))


@pytest.mark.parametrize("inner", ["eager", "inductor"])
@pytest.mark.parametrize(
    "norm", [models.t5_rms_norm, models.squared_by_mul_rms_norm, models.cast_twice_rms_norm]
)
def test_rms_norm_variants_are_eagers_to_the_bit(inner, norm):
    """The norm alone, as T5 writes it, with `xf * xf` or with x cast twice: raised, and
    the same bits as eager."""
    x, _, w, _ = _norm_inputs(h=128)
    torch._dynamo.reset()
    options = {"inner": inner, "passes": EVERY_NORM}
    with _no_compile_caches(), capture_reports() as reports:
        out = torch.compile(norm, backend="irfuse", options=options)(x, w)
    assert reports[-1].fused["raise-rms-norm"] == 1, str(reports[-1])
    _assert_norm_matches(out, norm(x, w))


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_vllm_native_add_rms_norm_is_the_fused_add_with_the_fp32_sum(inner):
    """vLLM's native RMSNorm keeps the residual sum in fp32 for the norm: raised as
    fused_add_rms_norm with the unrounded sum (NUMERICS.md's), the quant fused into it,
    the residual and the fp8 bytes eager's."""
    x, r, w, s = _norm_inputs(h=128)
    report = irfuse.explain(models.vllm_add_norm_quant, x, r, w, s)
    assert report.kernels == ["irfuse_fused_add_rms_norm_static_div_fp8"], str(report)
    torch._dynamo.reset()
    with _no_compile_caches():
        compiled = torch.compile(models.vllm_add_norm_quant, backend="irfuse",
                                 options={"inner": inner})  # fmt: skip
        q, residual = compiled(x, r, w, s)
    q_ref, residual_ref = models.vllm_add_norm_quant(x, r, w, s)
    assert torch.equal(residual, residual_ref)
    assert_fp8_close(q, q_ref, s)


def test_an_fp32_sum_read_in_fp32_elsewhere_is_refused_with_its_reason():
    def sum_read_twice(x, r, w):
        h = x.float() + r.float()
        y = h * torch.rsqrt(h.pow(2).mean(dim=-1, keepdim=True) + 1e-6)
        return y.to(x.dtype) * w, h.to(x.dtype), h.sum(-1)

    x, r, w, _ = _norm_inputs()
    report = irfuse.explain(sum_read_twice, x, r, w, passes=EVERY_NORM)
    assert not report.fused, str(report)
    assert report.rejected[0]["reason"].startswith("the fp32 sum %"), str(report)
    assert report.rejected[0]["reason"].endswith("is also read in fp32"), str(report)


def _tensor_eps_norm(x, w, eps):
    v = x.float()
    return w * (v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def test_a_norm_whose_eps_is_a_tensor_is_refused_with_its_reason():
    x, _, w, _ = _norm_inputs()
    report = irfuse.explain(_tensor_eps_norm, x, w, torch.tensor([1e-6], device=DEVICE))
    assert not report.fused, str(report)
    reason = "eps is a graph input tensor<1xf32> but not a 0-d f32/f64 CPU tensor"
    assert report.rejected[0]["reason"] == reason, str(report)


@pytest.mark.cuda
def test_gpu_a_norm_whose_eps_is_a_device_tensor_is_refused():
    """Reading a GPU eps at launch would sync: refused (a CPU one is read for free)."""
    x, _, w, _ = _norm_inputs()
    report = irfuse.explain(_tensor_eps_norm, x, w, torch.tensor(1e-6, device=DEVICE))
    assert not report.fused, str(report)
    assert "but not a 0-d f32/f64 CPU tensor" in report.rejected[0]["reason"], str(report)


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_module_eps_compiled_dynamic_is_read_at_run_time(inner):
    """HF's `self.variance_epsilon` under dynamic=True is a graph input (a 0-d CPU
    tensor), not a constant: the norm still fuses, and the kernel reads eps at each
    call, so changing it needs no recompile and gives eager's result."""
    torch.manual_seed(0)
    block = models.AddNormQuant(64).to(DEVICE, BF16)
    block.norm.weight.data = (torch.rand(64) + 0.5).to(DEVICE, BF16)
    s = torch.tensor([0.05], device=DEVICE)
    compiled = torch.compile(block, backend="irfuse", options={"inner": inner}, dynamic=True)
    with torch.no_grad(), capture_reports() as reports, _no_compile_caches():
        for t, eps in ((4, 1e-6), (7, 1e-6), (7, 4.0)):  # 4.0 scales the output by ~0.6
            block.norm.variance_epsilon = eps
            x, r = (torch.randn(t, 64, device=DEVICE, dtype=BF16) for _ in range(2))
            q, h = compiled(x, r, s)
            q_ref, h_ref = block(x, r, s)
            assert torch.equal(h, h_ref)
            assert_fp8_close(q, q_ref, s)
    (report,) = reports  # one compile: eps is an input
    assert report.fused["raise-rms-norm"] == 1 and not report.rejected, str(report)
    assert report.kernels == ["irfuse_add_rounded_rms_norm_static_div_fp8"], str(report)


def test_module_eps_compiled_dynamic_with_cuda_graphs_on_is_refused(monkeypatch):
    """mode="reduce-overhead" turns Inductor's CUDA graphs on inside the compile only
    (dynamo traced with them off, so eps is an input); the GPU test below runs that mode."""
    from irfuse.transforms import raise_rms_norm

    monkeypatch.setattr(raise_rms_norm, "inductor_cuda_graphs", lambda: True)
    block = models.AddNormQuant(64).to(DEVICE, BF16)
    x, r, _, s = _norm_inputs()
    compiled = torch.compile(block, backend="irfuse", options={"inner": "eager"}, dynamic=True)
    with torch.no_grad(), capture_reports() as reports:
        compiled(x, r, s)
    (report,) = reports
    assert not report.kernels, str(report)
    reason = "eps is a graph input, and Inductor's CUDA graphs (mode=reduce-overhead) are on"
    assert report.rejected[0]["reason"] == reason, str(report)


@pytest.mark.cuda
def test_gpu_module_eps_compiled_dynamic_under_cuda_graphs_is_refused():
    """Under mode="reduce-overhead" a kernel reading eps at launch cannot be replayed
    (Inductor's CUDA graph partitions fail on a custom op with a CPU tensor operand): the
    norm is refused with the reason, and the result is eager's as eps changes."""
    torch.manual_seed(0)
    block = models.AddNormQuant(4096).to(DEVICE, BF16)
    s = torch.tensor([0.05], device=DEVICE)
    compiled = torch.compile(block, backend="irfuse", mode="reduce-overhead", dynamic=True)
    with torch.no_grad(), capture_reports() as reports, _no_compile_caches():
        for t, eps in ((16, 1e-6), (16, 1e-6), (16, 1e-6), (33, 4.0), (33, 4.0), (16, 4.0)):
            block.norm.variance_epsilon = eps
            x, r = (torch.randn(t, 4096, device=DEVICE, dtype=BF16) for _ in range(2))
            q, h = compiled(x, r, s)
            q_ref, h_ref = block(x, r, s)
            torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
            assert_fp8_close(q, q_ref, s)
    reasons = {r["reason"] for report in reports for r in report.rejected}
    assert "eps is a graph input, and Inductor's CUDA graphs (mode=reduce-overhead) are on" in (
        reasons
    ), reasons


@pytest.mark.parametrize("constant", ["number", "tensor made in forward"])
def test_a_static_scale_given_as_a_constant_is_refused_with_its_reason(constant):
    """`/ 0.05`, or `* (1.0 / torch.tensor([0.05]))`, which the compiler folds to a
    one-element `full`: not a scale the model keeps; refused with the reason, eager's bytes."""

    def norm_quant_by_number(x, w):
        y = models.hf_rms_norm(x, w).float()
        if constant == "number":
            return (y / 0.05).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)
        inv = 1.0 / torch.tensor([0.05], device=x.device)
        return (y * inv).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)

    x, _, w, _ = _norm_inputs()
    report = irfuse.explain(norm_quant_by_number, x, w)
    assert "fuse-rms-norm-quant" not in report.fused, str(report)
    number = "0.05" if constant == "number" else "20"
    reason = (
        f"the value is scaled by the constant {number} (a Python number, or a tensor made "
        "in forward that the compiler folded): a static scale is a one-element float32 "
        "tensor the model keeps (a module buffer, as serving stacks keep it)"
    )
    assert reason in [r["reason"] for r in report.rejected], str(report)
    torch._dynamo.reset()
    compiled = torch.compile(norm_quant_by_number, backend="irfuse", options={"inner": "eager"})
    expected = norm_quant_by_number(x, w)
    assert torch.equal(compiled(x, w).view(torch.uint8), expected.view(torch.uint8))


def test_a_static_scale_given_as_a_float_argument_under_dynamic_is_refused():
    """dynamic=True makes a float argument a graph input, a CPU scalar: no tensor a kernel
    can read on the GPU. Refused with its reason (on the GPU the fused op's operands were
    on two devices, and the whole graph was left to the inner compiler)."""

    def norm_quant(x, w, scale: float):
        return (models.hf_rms_norm(x, w).float() / scale).clamp(-448.0, 448.0).to(FP8)

    x, _, w, _ = _norm_inputs()
    compiled = torch.compile(norm_quant, backend="irfuse", options={"inner": "eager"},
                             dynamic=True)  # fmt: skip
    with capture_reports() as reports:
        q = compiled(x, w, 0.05)
    reason = HOST_SCALE.format(what="scale")
    assert reason in [r["reason"] for r in reports[0].rejected], str(reports[0])
    assert torch.equal(q.view(torch.uint8), norm_quant(x, w, 0.05).view(torch.uint8))


def _hf_norm_then(quant: str):
    def fn(x, w, s):
        y = models.hf_rms_norm(x, w)
        if quant == "static":
            return irfuse.ops.static_fp8_quant(y, s)
        if quant == "nvfp4":
            return irfuse.ops.nvfp4_quant(y, s)
        if quant == "flattened per_token":
            return irfuse.ops.per_token_fp8_quant(y.reshape(-1, y.shape[-1]))
        if quant == "flattened, the view returned":  # the kernel writes the value too
            flat = y.reshape(-1, y.shape[-1])
            return (*irfuse.ops.per_token_fp8_quant(flat), flat)
        if quant == "flattened static, its scale computed after":  # after the view
            flat = y.reshape(-1, y.shape[-1])
            return irfuse.ops.static_fp8_quant(flat, s * 2.0)
        if quant == "flattened col-major":  # 2-D kernels only: the norm stays Inductor's
            return irfuse.ops.per_group_fp8_quant(y.reshape(-1, y.shape[-1]), 64, True)
        if quant == "also in PyTorch":  # the same quant twice: one epilogue
            return (*irfuse.ops.per_token_fp8_quant(y), *models.per_token_quant(y))
        return irfuse.ops.per_token_fp8_quant(y)

    return fn


@pytest.mark.parametrize(
    "quant",
    ["static", "per_token", "nvfp4", "flattened per_token", "flattened, the view returned",
     "flattened static, its scale computed after", "also in PyTorch"],
)  # fmt: skip
def test_a_model_norm_fuses_with_a_torch_ops_irfuse_quant(quant):
    """A norm written in PyTorch read by a torch.ops.irfuse quant call (imported as
    irfuse.quant) is raised and takes the quant as its epilogue, also where a linear
    flattens [B, S, K] first (the norm was left to Inductor, "no fp8 quant reads its
    value", so an nvfp4 epilogue on a model's own norm was unreachable)."""
    x, _, w, _ = _norm_inputs(t=6, h=64)
    if quant.startswith("flattened"):
        x = x.view(2, 3, 64)
    s = torch.tensor([100.0 if quant == "nvfp4" else 0.05], device=DEVICE)
    fn = _hf_norm_then(quant)
    report = irfuse.explain(fn, x, w, s)
    assert report.fused["fuse-rms-norm-quant"] == 1 and len(report.kernels) == 1, str(report)
    torch._dynamo.reset()
    got = torch.compile(fn, backend="irfuse", options={"inner": "eager"})(x, w, s)
    expected = fn(x, w, s)
    got, expected = (t if isinstance(t, tuple) else (t,) for t in (got, expected))
    if quant == "also in PyTorch":
        # one epilogue gives both pairs; eager CUDA computes `amax / 448` as a multiply by
        # 1/448 (one fp32 ulp off in some rows), so the PyTorch pair is compared at
        # NUMERICS.md's tolerance, the irfuse call's to the bit
        assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8))
                   for a, b in zip(got[:2], got[2:], strict=True))  # fmt: skip
        torch.testing.assert_close(got[3], expected[3], atol=0, rtol=2**-23)
        assert_fp8_close(got[2], expected[2], expected[3])
        got, expected = got[:2], expected[:2]
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_a_col_major_quant_of_a_flattened_norm_leaves_the_norm_alone():
    """Column-major group scales have kernels for [T, K] rows only: the norm of [B, S, K]
    is not raised for them (it was, and its NoKernel left the whole graph unfused)."""
    x, _, w, s = _norm_inputs(t=6, h=64)
    report = irfuse.explain(_hf_norm_then("flattened col-major"), x.view(2, 3, 64), w, s)
    assert "raise-rms-norm" not in report.fused, str(report)
    assert report.kernels == ["irfuse_quant_per_group64_fp8"], str(report)  # its name


def test_a_graph_with_torch_cond_still_fuses():
    """torch.cond's branches are get_attr nodes with no value: they import as one opaque
    value (the whole graph was left to the inner compiler, "used as a whole but produces
    several values")."""

    def fn(x, w, s):
        flipped = torch.cond(x.sum() > 0, lambda t: t * 2, lambda t: t - 1, (x,))
        return models.hf_norm_quant(x, w, s), flipped

    x, _, w, s = _norm_inputs()
    with capture_reports() as reports:
        q, flipped = torch.compile(fn, backend="irfuse", options={"inner": "eager"})(x, w, s)
    assert reports[0].fused["fuse-rms-norm-quant"] == 1, str(reports[0])
    q_ref, flipped_ref = fn(x, w, s)
    assert torch.equal(flipped, flipped_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def _is_a_python_float(node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dim() == 0 and val.dtype == torch.float64


def test_a_scale_computed_on_the_host_in_a_device_graph_is_refused():
    """A scale computed from a Python float (`x / (scale * 2)` under dynamic=True) stays on
    the host while x is on the GPU: refused with the reason (it was raised, and the fused
    op's operands on two devices left the whole graph unfused). The graph is captured on
    the CPU and placed as on a GPU (tests/gpu_placement.py)."""

    def norm_quant(x, w, scale: float):
        y = models.hf_rms_norm(x, w).float()
        return (y / (scale * 2.0)).clamp(-448.0, 448.0).to(FP8)

    x, _, w, _ = _norm_inputs()
    gm = captured_graph(norm_quant, x.cpu(), w.cpu(), 0.05, dynamic=True)
    # the float reaches the graph as a 0-d float64 input, unless torch folds it in (2.11 did:
    # the chain is then refused as scaled by a constant)
    if not any(_is_a_python_float(n) for n in gm.graph.find_nodes(op="placeholder")):
        pytest.skip(f"torch {torch.__version__} specializes the Python float: no host scale")
    report = transform_graph(placed_on_gpu(gm).graph, Options.from_dict({"inner": "eager"}))
    reason = HOST_SCALE.format(what="scale")
    assert reason in [r["reason"] for r in report.rejected], str(report)
    assert not any("several devices" in note for note in report.notes), str(report)


def _two_norm_quants(x, w, s, x_host, w_host, s_host):
    return models.hf_norm_quant(x, w, s), models.hf_norm_quant(x_host, w_host, s_host)


def _two_direct_norm_quants(x, w, s, x_host, w_host, s_host):
    def norm_quant(x, w, s):
        return torch.ops.irfuse.static_fp8_quant(torch.ops.irfuse.rms_norm(x, w, 1e-5), s)

    return norm_quant(x, w, s), norm_quant(x_host, w_host, s_host)


@pytest.mark.parametrize(
    "fn", [_two_norm_quants, _two_direct_norm_quants], ids=["raised", "direct"]
)
def test_a_chain_on_the_host_in_a_device_graph_is_refused_and_the_rest_fuses(fn):
    """Two norm + quants, one of CPU tensors, one of GPU ones: the host chain is left as
    written, with the reason, and the device one fuses. (Fused, the host chain's op on
    the CPU left every fusion of the graph out: "irfuse kernels need CUDA tensors".) The
    graph is captured on the CPU, placed as on a GPU but for the host chain's inputs."""
    x, _, w, s = _norm_inputs()
    inputs = [t.cpu() for t in (x, w, s)]
    gm = captured_graph(fn, *inputs, *(t.clone() for t in inputs))
    report = transform_graph(
        placed_on_gpu(gm, on_host=(3, 4, 5)).graph, Options.from_dict({"inner": "eager"})
    )
    assert report.fused["fuse-rms-norm-quant"] == 1, str(report)
    reasons = [r["reason"] for r in report.rejected] + report.notes
    assert any(ON_HOST_REASON in reason for reason in reasons), str(report)
    assert not any("left unchanged" in note for note in report.notes), str(report)


def _hf_add_norm(x, r, w):
    h = x + r
    return models.hf_rms_norm(h, w), h


@pytest.mark.parametrize("add_norm", [_hf_add_norm, models.vllm_add_rms_norm], ids=["hf", "vllm"])
def test_a_norm_quantized_with_several_scales_is_left_to_the_inner_compiler(add_norm):
    """HF-style fp8 projections each with its input scale (q, k, v): Inductor writes the
    three quants from its norm kernel, which an irfuse norm (one quant epilogue) would
    split into three kernels. The norm is left unraised, with the reason."""

    def add_norm_three_quants(x, r, w, s_q, s_k, s_v):
        y, h = add_norm(x, r, w)
        quants = tuple(models.static_quant(y, s) for s in (s_q, s_k, s_v))
        return (*quants, h)

    x, r, w, s = _norm_inputs()
    scales = (s, s * 2, s * 3)
    report = irfuse.explain(add_norm_three_quants, x, r, w, *scales)
    assert not report.fused, str(report)
    assert report.rejected[0]["reason"] == (
        "its value is quantized 3 ways: Inductor writes them all from one kernel, "
        "an irfuse norm kernel ends with one quant"
    ), str(report)
    torch._dynamo.reset()
    compiled = torch.compile(add_norm_three_quants, backend="irfuse", options={"inner": "eager"})
    expected = add_norm_three_quants(x, r, w, *scales)
    for got, want in zip(compiled(x, r, w, *scales), expected, strict=True):
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def _per_token_flat(y):
    """A projection's dynamic per-token quant of its flattened input."""
    yf = y.reshape(-1, y.shape[-1]).float()
    s = (yf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (yf / s).clamp(-448.0, 448.0).to(FP8), s


@pytest.mark.parametrize("quant", ["static", "per_token"])
def test_identical_quants_of_a_norm_are_one_fused_kernel(quant):
    """q, k and v projections each quantizing the normalised value alike (one activation
    scale, or the same dynamic per-token quant): one quant, fused into the norm."""

    def add_norm_qkv(x, r, w, s):
        y, h = _hf_add_norm(x, r, w)
        if quant == "static":
            return (*(models.static_quant(y, s) for _ in range(3)), h)
        return (*(t for _ in range(3) for t in _per_token_flat(y)), h)

    x, r, w, s = (t.unsqueeze(0) if t.dim() == 2 else t for t in _norm_inputs())
    report = irfuse.explain(add_norm_qkv, x, r, w, s)
    kernel = f"irfuse_add_rounded_rms_norm_{quant.replace('static', 'static_div')}_fp8"
    assert report.kernels == [kernel] and not report.rejected, str(report)
    torch._dynamo.reset()
    compiled = torch.compile(add_norm_qkv, backend="irfuse", options={"inner": "eager"})
    outputs, expected = compiled(x, r, w, s), add_norm_qkv(x, r, w, s)
    scale = s if quant == "static" else expected[1]
    for got, want in zip(outputs[:-1], expected[:-1], strict=True):
        if got.dtype == FP8:
            assert_fp8_close(got, want, scale)
        else:
            torch.testing.assert_close(got, want, rtol=1e-2, atol=0)
    assert torch.equal(outputs[-1], expected[-1])


@pytest.mark.parametrize("written", ["divided", "times the reciprocal"])
def test_a_static_quant_computes_the_graph_s_form_at_ties(written):
    """Rows whose norm is 0.75 (the weight), quantized with scale 0.03: `y / s` is exactly
    25.0, a tie eager rounds to 24, and `y * (1 / s)` is 25.000002 (26). The fused kernel
    gives the bytes of whichever form the graph wrote."""

    def norm_quant(x, w, s):
        y = models.hf_rms_norm(x, w, eps=0.0).float()
        scaled = y / s if written == "divided" else y * torch.reciprocal(s)
        return scaled.clamp(-448.0, 448.0).to(models.FP8)

    x = torch.ones(4, 64, dtype=BF16, device=DEVICE)
    w = torch.full((64,), 0.75, dtype=BF16, device=DEVICE)
    s = torch.tensor([0.03], device=DEVICE)
    report = irfuse.explain(norm_quant, x, w, s)
    kind = "static_div" if written == "divided" else "static"
    assert report.kernels == [f"irfuse_rms_norm_{kind}_fp8"], str(report)
    torch._dynamo.reset()
    compiled = torch.compile(norm_quant, backend="irfuse", options={"inner": "eager"})
    got, want = compiled(x, w, s), norm_quant(x, w, s)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert want.float().unique().tolist() == [24.0 if written == "divided" else 26.0]


def test_a_norm_also_read_by_pointwise_ops_is_left_to_inductor():
    """`y * 2` beside the quant: Inductor computes it in the norm's kernel, where an irfuse
    kernel would write `y` for it. Left to Inductor with the reason; eager's results."""

    def norm_quant_and_double(x, w, s):
        y = models.hf_rms_norm(x, w)
        return models.static_quant(y, s), y * 2

    x, _, w, s = _norm_inputs()
    report = irfuse.explain(norm_quant_and_double, x, w, s)
    assert not report.kernels, str(report)
    assert READ_BY_POINTWISE in [r["reason"] for r in report.rejected], str(report)
    torch._dynamo.reset()
    compiled = torch.compile(norm_quant_and_double, backend="irfuse", options={"inner": "eager"})
    q, doubled = compiled(x, w, s)
    q_ref, doubled_ref = norm_quant_and_double(x, w, s)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert torch.equal(doubled, doubled_ref)


@pytest.mark.parametrize(
    "model,weight", [(models.gemma_sandwich_quant, "_gemmaw"), (models.glm4_sandwich_quant, "")]
)
@pytest.mark.parametrize("quant", ["static", "per_token"])
def test_a_sandwich_fuses_into_one_kernel(quant, model, weight):
    """Both norms, the add between them and the quant: one kernel (Inductor also makes
    one of them; irfuse's has the faster quant epilogue), in Gemma's `(1 + w)` form and
    HF's plain one. Eager's results within NUMERICS.md's tolerances (the kernel's
    reductions add in another order)."""
    x, r, w, s = _norm_inputs()
    s = s if quant == "static" else None
    scheme = "static_div" if quant == "static" else quant  # the graph divides by s
    kernel = f"irfuse_normed_add_rounded_rms_norm{weight}_{scheme}_fp8"
    report = irfuse.explain(model, x, r, w, w * 2, s)
    assert report.kernels == [kernel], str(report)
    assert report.fused["fuse-sandwich-norm"] == 1, str(report)
    _quant_and_sum_match_eager(model, (x, r, w, w * 2, s))


@pytest.mark.parametrize(
    "norm,weight",
    [
        (models.olmo2_rms_norm, "_fp32w"),
        (models.hf_rms_norm, ""),
        (models.gemma_rms_norm, "_gemmaw"),
    ],
)
@pytest.mark.parametrize("quant", ["static", "per_token"])
def test_a_post_norm_its_add_and_the_quant_of_the_sum_fuse_into_one_kernel(quant, norm, weight):
    """OLMo 2's `h = r + norm(x)` read by the next projection's quant (and returned, as the
    next residual): one kernel writes h and its quant, as eager computes them (h to the bit
    but where the kernel's rstd rounds x's norm a step away)."""
    x, r, w, s = _norm_inputs()
    s = s if quant == "static" else None
    scheme = "static_div" if quant == "static" else quant  # the graph divides by s
    model = functools.partial(models.post_norm_quant, norm)
    report = irfuse.explain(model, x, r, w, s)
    assert report.kernels == [f"irfuse_rms_norm_add{weight}_{scheme}_fp8"], str(report)
    assert report.fused["fuse-norm-add-quant"] == 1 and not report.rejected, str(report)
    _quant_and_sum_match_eager(model, (x, r, w, s))


def _quant_and_sum_match_eager(model, args: tuple) -> None:
    """`model(*args)` compiled returns eager's (q, [per-token scales,] residual sum), within
    NUMERICS.md's tolerances; the static scale, if any, is the last argument."""
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="irfuse", options={"inner": "eager"})
    *got, h = compiled(*args)
    *want, h_ref = model(*args)
    assert_close(h, h_ref)
    if len(want) == 2:  # per-token: its scales
        assert_close(got[1], want[1])
    assert_fp8_close(got[0], want[0], want[1] if len(want) == 2 else args[-1])


def test_a_post_norm_is_left_to_inductor_where_no_one_kernel_takes_it():
    """The norm's result also returned, or the sum's norm read too (an add + norm, which
    fuses with that norm): no post-norm kernel; eager's results."""

    def norm_also_returned(x, residual, w, s):
        y = models.olmo2_rms_norm(x, w)
        h = residual + y
        return models.static_quant(h, s), h, y

    def sum_quantized_and_normalised(x, residual, w, s):
        h = residual + models.olmo2_rms_norm(x, w)
        return models.static_quant(h, s), models.olmo2_rms_norm(h, w), h

    x, r, w, s = _norm_inputs()
    for model in (norm_also_returned, sum_quantized_and_normalised):
        report = irfuse.explain(model, x, r, w, s)
        assert "fuse-norm-add-quant" not in report.fused, str(report)
        assert not any(k.startswith("irfuse_rms_norm_add") for k in report.kernels), str(report)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="irfuse", options={"inner": "eager"})
        for got, want in zip(compiled(x, r, w, s), model(x, r, w, s), strict=True):
            assert_close(got.float(), want.float())


def test_a_sandwich_whose_first_norm_is_read_elsewhere_is_left_to_inductor():
    """The post-attention norm's result also returned, its weight applied in another form
    than the second norm's, or no place for the add and the second norm to be one op: no
    one irfuse kernel takes both norms, Inductor's does, so neither norm is raised; eager's
    results."""

    def sandwich_returning_first_norm(attn_out, residual, w_post, w_pre, s):
        y1 = models.gemma_rms_norm(attn_out, w_post)
        h = residual + y1
        return models.static_quant(models.gemma_rms_norm(h, w_pre), s), h, y1

    def sandwich_of_two_forms(attn_out, residual, w_post, w_pre, s):
        h = residual + models.hf_rms_norm(attn_out, w_post)
        return models.static_quant(models.gemma_rms_norm(h, w_pre), s), h

    def sum_read_before_the_second_weight(attn_out, residual, w_post, w_pre, s):
        # (a weight computed in 16 bits, `1 + w`, after a matmul reads the sum: the add
        # and the second norm have no place to be one op)
        h = residual + models.hf_rms_norm(attn_out, 1 + w_post)
        z = h @ torch.ones(h.shape[-1], 4, dtype=h.dtype, device=h.device)
        return models.static_quant(models.hf_rms_norm(h, 1 + w_pre), s), h, z

    x, r, w, s = _norm_inputs()
    for fn in (
        sandwich_returning_first_norm,
        sandwich_of_two_forms,
        sum_read_before_the_second_weight,
    ):
        report = irfuse.explain(fn, x, r, w, w * 2, s)
        assert not report.fused, str(report)
        reasons = {r["reason"] for r in report.rejected if r["pass"] == "raise-rms-norm"}
        assert reasons == {NO_QUANT, FROM_A_REDUCTION}, reasons
    torch._dynamo.reset()
    compiled = torch.compile(sandwich_returning_first_norm, backend="irfuse",
                             options={"inner": "eager"})  # fmt: skip
    got = compiled(x, r, w, w * 2, s)
    want = sandwich_returning_first_norm(x, r, w, w * 2, s)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_a_norm_without_quant_is_left_to_inductor():
    x, _, w, _ = _norm_inputs()
    report = irfuse.explain(models.gemma_rms_norm, x, w)
    assert not report.fused, str(report)
    assert [r["reason"] for r in report.rejected] == [NO_QUANT], str(report)


def test_a_sum_over_experts_before_the_norm_is_not_a_sandwich():
    """A MoE's weighted sum over its experts (a reduction over another dim) feeding the
    residual add: the add + norm + quant still fuse."""

    def moe_add_norm_quant(expert_out, gates, residual, w, s):
        h = residual + (expert_out * gates.unsqueeze(-1)).sum(dim=1)
        return models.static_quant(models.hf_rms_norm(h, w), s), h

    x, r, w, s = _norm_inputs()
    experts = torch.randn(x.shape[0], 2, x.shape[1], device=DEVICE).to(x.dtype)
    gates = torch.rand(x.shape[0], 2, device=DEVICE).to(x.dtype)
    report = irfuse.explain(moe_add_norm_quant, experts, gates, r, w, s)
    assert report.kernels == ["irfuse_add_rounded_rms_norm_static_div_fp8"], str(report)


def test_a_norm_dividing_by_sqrt_is_refused_with_its_reason():
    def sqrt_norm(x, w):
        v = x.float()
        return w * (v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x.dtype)

    x, _, w, _ = _norm_inputs()
    report = irfuse.explain(sqrt_norm, x, w)
    assert not report.fused, str(report)
    assert report.rejected[0]["reason"].startswith("x / sqrt(mean(x^2) + eps) is not raised")


def test_a_norm_computed_in_bf16_is_refused_with_its_reason():
    def bf16_norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    x, _, w, _ = _norm_inputs()
    report = irfuse.explain(bf16_norm, x, w)
    assert not report.fused, str(report)
    assert report.rejected[0]["reason"] == "normalised in bfloat16, not float32", str(report)


def test_a_norm_of_an_fp32_input_with_a_bf16_result_is_refused_with_its_reason():
    """An fp32 input (not a sum of 16-bit ones) normalised, cast to bf16, then weighted:
    no irfuse norm has an fp32 input and a 16-bit result; the report says so."""

    def fp32_input_norm(x32, w):
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-6)
        return w * y.to(w.dtype)

    x, _, w, _ = _norm_inputs()
    report = irfuse.explain(fp32_input_norm, x.float(), w)
    assert not report.fused, str(report)
    assert report.rejected[0]["reason"] == (
        "the normalised fp32 input is cast to bfloat16 before its weight (no norm of an "
        "fp32 input with a 16-bit result)"
    ), str(report)


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_gemma_weight_added_in_bf16_keeps_its_rounding(inner):
    """Gemma's `1 + w` on a bf16 weight rounds to bf16 before the fp32 multiply: the norm
    then takes that rounded sum as a plain weight (the Gemma form would add in fp32 and
    differ by an ulp), and the result is eager's to the bit."""

    def gemma_bf16(x, w):
        v = x.float()
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (v * (1.0 + w)).type_as(x)

    x, _, w, _ = _norm_inputs(h=128)
    report = irfuse.explain(gemma_bf16, x, w, passes=EVERY_NORM)
    assert report.fused["raise-rms-norm"] == 1 and report.kernels == ["irfuse_rms_norm_fp32w"]
    torch._dynamo.reset()
    options = {"inner": inner, "passes": EVERY_NORM}
    with _no_compile_caches():
        out = torch.compile(gemma_bf16, backend="irfuse", options=options)(x, w)
    _assert_norm_matches(out, gemma_bf16(x, w))


def _alpha_eps_norm(x, w):
    v = x.float()
    v = v * torch.rsqrt(torch.add(v.pow(2).mean(-1, keepdim=True), 1e-2, alpha=100.0))
    return w * v.to(x.dtype)


def _alpha_weight_norm(x, w):
    v = x.float()
    v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
    return (v * torch.add(w.float(), 1.0, alpha=2.0)).type_as(x)


@pytest.mark.parametrize(
    "norm, reason",
    [
        # var + 100 * eps: it was raised with eps alone
        (_alpha_eps_norm, "variance + eps with alpha 100.0 (eps * alpha added)"),
        # w + 2, not Gemma's 1 + w (it was raised as Gemma's form): a computed fp32 weight
        (_alpha_weight_norm, "weight dtype float32 != input dtype bfloat16"),
    ],
)
def test_an_add_with_alpha_in_a_norm_is_not_taken_for_its_alpha_1_form(norm, reason):
    """`torch.add(a, b, alpha=k)` adds k * b: the raise reads alpha where it takes an add
    (a norm raised without it computed another function); the graph runs as traced."""
    x, _, w, _ = _norm_inputs()
    report = irfuse.explain(norm, x, w, passes=EVERY_NORM)
    assert not report.fused and report.rejected[0]["reason"] == reason, str(report)
    torch._dynamo.reset()
    options = {"inner": "eager", "passes": EVERY_NORM}
    out = torch.compile(norm, backend="irfuse", options=options)(x, w)
    assert torch.equal(out, norm(x, w))


def test_a_dump_dir_that_is_a_file_is_refused_with_the_options(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        Options.from_dict({"dump_dir": str(path)})


def test_a_graph_left_unchanged_reports_no_fusion():
    """A graph that fuses but has no kernel for a shape (a hidden size past 65536) runs as
    it came: its report's fused counts are empty (they said fused), and the note names
    the fusions undone."""

    def norm_quant(x, w, s):
        y = torch.nn.functional.rms_norm(x, (x.shape[-1],), w, 1e-6)
        return (y.float() / s).clamp(-448, 448).to(FP8)

    x = torch.randn(2, 65600, device=DEVICE, dtype=BF16)
    w = torch.ones(65600, device=DEVICE, dtype=BF16)
    report = irfuse.explain(norm_quant, x, w, torch.tensor([0.05], device=DEVICE))
    assert not report.fused and not report.kernels, str(report)
    (note,) = [n for n in report.notes if n.startswith("graph left unchanged")]
    assert "hidden size <= 65536" in note and "undone: fuse-rms-norm-quant 1" in note, note


def test_a_symbolic_alpha_is_not_taken_for_1():
    """Called with alpha 1, 2, 3, dynamo recompiles with alpha a symbolic int: the add's
    alpha is then a reference, not a constant, and was taken for 1 (the fused add +
    norm + quant then computed x + r: a wrong sum and quant). Every call matches eager."""

    def add_norm_quant(x, r, w, s, alpha):
        h = torch.add(x, r, alpha=alpha)
        y = torch.nn.functional.rms_norm(h, (x.shape[-1],), w, 1e-6)
        return (y.float() / s).clamp(-448, 448).to(FP8), h

    x, r, w, s = _norm_inputs()
    compiled = torch.compile(add_norm_quant, backend="irfuse", options={"inner": "eager"})
    for alpha in (1, 2, 3):
        q, h = compiled(x, r, w, s, alpha)
        q_ref, h_ref = add_norm_quant(x, r, w, s, alpha)
        assert torch.equal(h, h_ref), alpha
        assert_fp8_close(q, q_ref, s)


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_quant_by_a_0d_scale_keeps_the_bf16_quotient(inner):
    """`y / s` with a 0-d fp32 scale stays bf16 (a 0-d tensor does not promote): the fp8
    cast then rounds a rounded quotient, which the static quant (fp32 quotient) would not
    reproduce; it is refused with its reason, and the graph runs as traced."""

    def norm_quant_0d(x, w, s):
        return (models.hf_rms_norm(x, w) / s.reshape(())).clamp(-448, 448).to(FP8)

    x, _, w, s = _norm_inputs(h=128)
    s = torch.tensor([0.01], device=DEVICE)
    report = irfuse.explain(norm_quant_0d, x, w, s)
    assert "fuse-rms-norm-quant" not in report.fused, str(report)
    assert any("not float32 (a 0-d scale" in r["reason"] for r in report.rejected), str(report)
    torch._dynamo.reset()
    with _no_compile_caches():
        q = torch.compile(norm_quant_0d, backend="irfuse", options={"inner": inner})(x, w, s)
    expected = norm_quant_0d(x, w, s)
    if inner == "eager":  # the graph runs as traced: eager's bytes
        assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))
    else:  # Inductor's own code for the unfused quant may skip the bf16 round trip (CUDA)
        assert_fp8_close(q, expected, s)


def test_norm_read_unquantized_elsewhere_keeps_the_value_in_the_fused_kernel():
    """A matmul also reads the normalised value (a projection left unquantized): the
    fused kernel writes it too, as Inductor's kernel would."""

    def fn(x, w, s):
        y = models.hf_rms_norm(x, w)
        return models.static_quant(y, s), y @ w.view(-1, 1)

    x, _, w, s = _norm_inputs()
    report = irfuse.explain(fn, x, w, s)
    assert report.fused["fuse-rms-norm-quant"] == 1, str(report)
    assert report.kernels == ["irfuse_rms_norm_static_div_fp8_keep"]
    torch._dynamo.reset()
    q, y2 = torch.compile(fn, backend="irfuse", options={"inner": "eager"})(x, w, s)
    q_ref, y2_ref = fn(x, w, s)
    assert_close(y2, y2_ref)
    assert_fp8_close(q, q_ref, s)


def _three_chained_norms(x, r, w1, w2, w3):
    y, h = torch.ops.irfuse.fused_add_rms_norm(x, r, w1, 1e-6)
    z = torch.ops.irfuse.rms_norm(y, w2, 1e-6)  # reads the first of y's two results
    return torch.ops.irfuse.fused_add_rms_norm(z, h, w3, 1e-6)  # reads both kernels


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_a_kernel_reading_two_earlier_kernels_follows_both(inner):
    """Kernels are placed after their latest input: the third reads the second's result
    and the first's last one, which the second was placed before. (It was placed before
    that input: the graph did not compile, "used before it has been defined".)"""
    x, r, w1, _ = _norm_inputs(t=4, h=64)
    w2, w3 = 1 + 0.1 * torch.randn(2, 64, device=x.device, dtype=x.dtype)
    report = irfuse.explain(_three_chained_norms, x, r, w1, w2, w3)
    assert len(report.kernels) == 3, str(report)
    torch._dynamo.reset()
    compiled = torch.compile(_three_chained_norms, backend="irfuse", options={"inner": inner})
    y, h = compiled(x, r, w1, w2, w3)
    y_ref, h_ref = _three_chained_norms(x, r, w1, w2, w3)
    assert torch.equal(h, h_ref)
    assert_close(y, y_ref)


def _norm_per_tensor(x, w):
    return torch.ops.irfuse.per_tensor_fp8_quant(torch.ops.irfuse.rms_norm(x, w, 1e-6))


def _add_norm_per_tensor(x, r, w):
    y, h = torch.ops.irfuse.fused_add_rms_norm(x, r, w, 1e-6)
    return (*torch.ops.irfuse.per_tensor_fp8_quant(y), h)


@pytest.mark.parametrize(
    "fn,n_inputs,kernel",
    [
        (_norm_per_tensor, 2, ["irfuse_rms_norm_amax", "irfuse_rms_norm_per_tensor_fp8"]),
        (
            _add_norm_per_tensor,
            3,
            ["irfuse_fused_add_rms_norm_amax_keep", "irfuse_quant_per_tensor_fp8"],
        ),
    ],
)
def test_per_tensor_quant_fuses_into_the_norm(fn, n_inputs, kernel):
    """A dynamic per-tensor quant fuses into a norm (two kernels at run time: the amax,
    then the quant) and matches the unfused ops."""
    x, r, w, _ = _norm_inputs(t=5, h=96)
    inputs = (x, r, w) if n_inputs == 3 else (x, w)
    report = irfuse.explain(fn, *inputs)
    assert report.fused["fuse-rms-norm-quant"] == 1, str(report)
    assert report.kernels == kernel
    torch._dynamo.reset()
    q, s, *h = torch.compile(fn, backend="irfuse", options={"inner": "eager"})(*inputs)
    q_ref, s_ref, *h_ref = fn(*inputs)
    assert all(torch.equal(a, b) for a, b in zip(h, h_ref, strict=True))
    torch.testing.assert_close(s, s_ref, rtol=1e-6, atol=0)
    assert_fp8_close(q, q_ref, s_ref)


def test_clamp_to_other_bounds_is_not_an_fp8_quant():
    def fn(x, w, s):
        return (models.hf_rms_norm(x, w).float() / s).clamp(-240, 240).to(models.FP8)

    x, _, w, s = _norm_inputs()
    report = irfuse.explain(fn, x, w, s)
    assert any("clamp bounds" in r["reason"] for r in report.rejected), str(report)


def test_unfusable_graph_keeps_its_original_nodes():
    def fn(x, y):
        return torch.sin(x) @ y

    seen = []

    def compiler(gm, _):
        before = list(gm.graph.nodes)
        report = transform_graph(gm.graph, Options())
        seen.append((before, list(gm.graph.nodes), report))
        return make_boxed_func(gm.forward)

    aot_function(fn, compiler)(torch.randn(3, 3), torch.randn(3, 3))
    before, after, report = seen[0]
    assert before == after and all(a is b for a, b in zip(before, after, strict=True))
    assert not report.fused


def test_dynamic_token_counts_share_one_compile():
    x, r, w, s = _norm_inputs(t=4)
    compiled = torch.compile(
        models.add_rms_norm_quant, backend="irfuse", options={"inner": "eager"}, dynamic=True
    )
    with capture_reports() as reports:
        for t in (4, 7, 9, 130):  # 1 would specialise (dynamo special-cases 0 and 1)
            xt, rt = x.new_ones(t, 64) * 0.5, torch.randn(t, 64).to(BF16).to(DEVICE)
            q, h = compiled(xt, rt, w, s)
            q_ref, h_ref = models.add_rms_norm_quant(xt, rt, w, s)
            assert_fp8_close(q, q_ref, s)
    assert len(reports) == 1 and reports[0].fused["fuse-rms-norm-quant"] == 1


def test_decoder_block_matches_eager():
    torch.manual_seed(0)
    block = models.DecoderBlock().to(DEVICE)
    x = torch.randn(2, 8, 64, device=DEVICE)
    with torch.no_grad():
        expected = block(x, x)
        report = irfuse.explain(block, x, x)
        torch._dynamo.reset()
        out = torch.compile(block, backend="irfuse", options={"inner": "eager"})(x, x)
    assert report.fused["fuse-rms-norm-quant"] == 2, str(report)
    assert report.fused["fuse-add-rms-norm"] == 2, str(report)
    torch.testing.assert_close(out[1], expected[1], atol=0, rtol=0)
    torch.testing.assert_close(out[0], expected[0], atol=0.1, rtol=0.1)


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_a_norm_with_a_trained_weight_keeps_its_gradients(inner):
    """A weight that requires grad (nn.RMSNorm as constructed): the compiled norm's
    output requires grad and the gradients are eager's, with either inner compiler; under
    no_grad the same module fuses."""
    torch._dynamo.reset()
    x, _, _, _ = _norm_inputs(dtype=torch.float32)
    norm = torch.nn.RMSNorm(64, eps=1e-6).to(DEVICE)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    norm(x_eager).square().sum().backward()
    weight_grad, norm.weight.grad = norm.weight.grad, None
    options = {"inner": inner, "passes": EVERY_NORM}
    compiled = torch.compile(norm, backend="irfuse", options=options)
    out = compiled(x_compiled)
    assert out.requires_grad
    out.square().sum().backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.weight.grad, weight_grad, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), _no_compile_caches(), capture_reports() as reports:
        torch._dynamo.reset()
        out = torch.compile(norm, backend="irfuse", options=options)(x)
    # Under grad the saved rstd keeps the norm out (a rejection or a note); here nothing does.
    report = reports[-1]
    assert not report.rejected and not report.notes, str(report)
    if DEVICE == "cpu" or inner == "inductor":
        # The decomposed norm is raised and lowered. CUDA's eager graph imports
        # aten._fused_rms_norm directly and, with nothing to fuse it with, keeps that kernel.
        assert report.kernels[:1] and report.kernels[0].startswith("irfuse_rms_norm"), str(report)
    torch.testing.assert_close(out, norm(x), atol=1e-5, rtol=1e-5)


def test_dump_dir_has_ir_kernels_and_report(tmp_path):
    x, r, w, s = _norm_inputs()
    torch.compile(
        models.add_hf_norm_quant,
        backend="irfuse",
        options={"inner": "eager", "dump_dir": str(tmp_path)},
    )(x, r, w, s)
    (graph_dir,) = tmp_path.iterdir()
    names = sorted(p.name for p in graph_dir.iterdir())
    assert names == [
        "00-imported.mlir",
        "01-after-raise-rms-norm.mlir",
        "02-after-raise-fp8-quant.mlir",
        "03-after-fuse-add-rms-norm.mlir",
        "04-after-fuse-rms-norm-quant.mlir",
        "irfuse_add_rounded_rms_norm_static_div_fp8.py",
        "report.json",
    ]
    report = json.loads((graph_dir / "report.json").read_text())
    assert report["fused"]["fuse-rms-norm-quant"] == 1
    assert report["launches"] == [
        "irfuse_add_rounded_rms_norm_static_div_fp8: "
        "torch.ops.irfuse.kernel_norm (the inner compiler is eager)"
    ]
    assert (
        "irfuse.fused_add_rms_norm" in (graph_dir / "04-after-fuse-rms-norm-quant.mlir").read_text()
    )
    replay = subprocess.run(
        [
            sys.executable,
            "-m",
            "irfuse.tools.opt",
            str(graph_dir / "00-imported.mlir"),
            "-p",
            Options().passes,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        replay.stdout.strip()
        == (graph_dir / "04-after-fuse-rms-norm-quant.mlir").read_text().strip()
    )


def test_dump_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("IRFUSE_DUMP_DIR", str(tmp_path))
    assert Options.from_dict({}).dump_dir == str(tmp_path)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"passes": "raise-rms-norm,fuse-all"}, "Unrecognized passes: .*'fuse-all'"),
        ({"inner": "tvm"}, "inner must be one of"),
        ({"graph_launch": "always"}, "graph_launch must be one of"),
        # (xDSL raises a BaseException for it, which would pass `except Exception`)
        ({"passes": "raise-rms-norm{standalone=true"}, "1:31: Malformed pass arguments"),
        ({"passes": 5}, "passes must be a pipeline string or a list of pass names, got 5"),
        ({"dump_dir": 5}, "dump_dir must be a path, got 5"),
    ],
)
def test_bad_options_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        Options.from_dict(options)


def test_a_bad_pass_argument_is_named_without_the_list_of_passes():
    with pytest.raises(ValueError) as refused:
        Options.from_dict({"passes": "raise-rms-norm{standalone=maybe}"})
    assert "standalone=maybe" in str(refused.value) and "known passes" not in str(refused.value)
    assert Options.from_dict({"passes": ["raise-rms-norm", "raise-fp8-quant"]}).passes == (
        "raise-rms-norm,raise-fp8-quant"
    )


def test_an_unknown_option_is_refused_with_the_eager_inner_compiler_too():
    """Under Inductor an unknown key is an Inductor config option (Inductor refuses one
    it does not know); with inner='eager' a key neither irfuse nor Inductor knows is an
    error too."""
    x, _, w, s = _norm_inputs()
    compiled = torch.compile(
        models.hf_norm_quant, backend="irfuse", options={"inner": "eager", "dump_dri": "/tmp"}
    )
    with pytest.raises(Exception, match=r"unknown option\(s\) \['dump_dri'\]"):
        compiled(x, w, s)
    torch._dynamo.reset()  # an Inductor option has nothing to configure: no error
    options = {"inner": "eager", "force_disable_caches": True, "triton.cudagraphs": False}
    compiled = torch.compile(models.hf_norm_quant, backend="irfuse", options=options)
    compiled(x, w, s)


def test_a_model_compiled_with_autograd_on_is_told_so():
    """A parameter that requires grad, grad mode on: the forward graph keeps what the
    backward reads, which blocks the fusions; the report says why and what to do."""
    x, _, w, s = _norm_inputs()
    weight = torch.nn.Parameter(w.clone())
    report = irfuse.explain(models.hf_norm_quant, x, weight, s)
    assert AUTOGRAD in report.notes, str(report)
    with torch.no_grad():
        report = irfuse.explain(models.hf_norm_quant, x, weight, s)
    assert AUTOGRAD not in report.notes and report.kernels, str(report)


def test_pass_selection():
    x, r, w, s = _norm_inputs()
    report = irfuse.explain(
        models.add_hf_norm_quant,
        x,
        r,
        w,
        s,
        passes="raise-rms-norm,raise-fp8-quant,fuse-rms-norm-quant",
    )
    assert "fuse-add-rms-norm" not in report.fused
    assert report.kernels == ["irfuse_rms_norm_static_div_fp8"]


def test_cache_key_covers_version_and_options(monkeypatch):
    base = {"attention": "irfuse"}  # attention=auto on a GPU adds its decisions' token
    default = IrfuseGraphPass(Options.from_dict(base)).uuid()
    assert default is not None
    assert (
        IrfuseGraphPass(Options.from_dict({**base, "passes": "raise-rms-norm"})).uuid() != default
    )
    assert IrfuseGraphPass(Options.from_dict({**base, "inner": "eager"})).uuid() != default
    launch_off = IrfuseGraphPass(Options.from_dict({**base, "graph_launch": "off"}))
    assert launch_off.uuid() != default
    monkeypatch.setattr("irfuse.pipeline.__version__", "999")
    assert IrfuseGraphPass(Options.from_dict(base)).uuid() != default
    monkeypatch.undo()
    # an edit of irfuse's source (a pass, the lowering, a kernel) invalidates a cached graph
    monkeypatch.setattr("irfuse.pipeline.source_hash", lambda: "edited")
    assert IrfuseGraphPass(Options.from_dict(base)).uuid() != default
    monkeypatch.undo()
    # what the pass emits differs under the interpreter (kernels on CPU tensors)
    monkeypatch.setattr("irfuse.lowering.runtime.INTERPRET", not runtime_interpret())
    assert IrfuseGraphPass(Options.from_dict(base)).uuid() != default


def runtime_interpret() -> bool:
    from irfuse.lowering import runtime

    return runtime.INTERPRET


def test_a_dump_never_reuses_an_earlier_runs_directory(monkeypatch, tmp_path):
    """In a container every run may have the same pid: a graph's dump directory is a new
    one, not an earlier run's with its files (which described fusions of that run)."""
    import itertools

    from irfuse import dump

    firsts = []
    for _ in range(2):  # two runs: the graph counter starts again
        monkeypatch.setattr(dump, "_GRAPH_IDS", itertools.count())
        firsts.append(dump.GraphDump(str(tmp_path)).path)
    assert firsts[0] != firsts[1] and firsts[0].is_dir() and firsts[1].is_dir()


def test_kernel_cache_dir_files_and_a_corrupt_file(monkeypatch, tmp_path):
    """An empty IRFUSE_CACHE_DIR is unset (not the working directory), `~` expands; a
    cached kernel file gets the umask's mode (a cache dir may be shared); a corrupt one
    (not UTF-8) is written anew."""
    from irfuse.lowering import kernel_cache

    monkeypatch.setenv("IRFUSE_CACHE_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kernel_cache.cache_dir() == tmp_path / "home" / ".cache" / "irfuse" / "kernels"
    monkeypatch.setenv("IRFUSE_CACHE_DIR", "~/kc")
    assert kernel_cache.cache_dir() == tmp_path / "home" / "kc"
    source = "import triton\n\n@triton.jit\ndef probe(x_ptr):\n    pass\n"
    path = tmp_path / "home" / "kc" / f"probe_{kernel_cache.kernel_key(source)}.py"
    path.write_bytes(b"\xff\xfe not a kernel")
    kernel_cache._LOADED.pop(kernel_cache.kernel_key(source), None)
    assert kernel_cache.load_kernel("probe", source) is not None
    assert path.read_text() == source
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_source_hash_covers_every_module_of_the_package(tmp_path):
    import shutil

    from irfuse.version import source_hash, tree_hash

    package = Path(irfuse.__file__).parent
    copy = tmp_path / "irfuse"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert tree_hash(copy) == source_hash()
    with (copy / "transforms" / "raise_rms_norm.py").open("a") as edited:
        edited.write("# a pass edited\n")
    assert tree_hash(copy) != source_hash()


AUTO_PROCESS = """
import json, torch, torch.nn.functional as F
from torch._dynamo.utils import counters

def block(q, k, v, s):
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    o = o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)
    return (o.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn)

q = torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16)
torch.compile(block, backend="irfuse")(q, q, q, torch.tensor([0.02], device="cuda"))
print(json.dumps({**counters["inductor"], **counters["aot_autograd"]}))
"""


@pytest.mark.cuda
def test_gpu_auto_decisions_let_a_later_process_hit_the_inductor_cache(tmp_path):
    """`attention=auto` on the GPU: the first process times the attention and keeps its
    decision; the second compiles nothing (Inductor's FX graph cache serves the graph
    compiled with that decision) and times nothing."""
    env = {**os.environ, "IRFUSE_CACHE_DIR": str(tmp_path / "irfuse"),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # fmt: skip
    decisions = tmp_path / "irfuse" / "attention_auto.json"
    counts, kept = [], []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", AUTO_PROCESS], env=env, capture_output=True,
                             text=True, check=True)  # fmt: skip
        counts.append(json.loads(run.stdout.strip().splitlines()[-1]))
        kept.append(json.loads(decisions.read_text()))
    assert counts[0].get("fxgraph_cache_miss", 0) >= 1, counts
    hits = counts[1].get("fxgraph_cache_hit", 0) + counts[1].get("autograd_cache_hit", 0)
    assert hits >= 1, counts
    assert counts[1].get("fxgraph_cache_miss", 0) == 0, counts
    assert len(kept[0]["decisions"]) == 1 and kept[1] == kept[0]


def test_backend_is_discoverable_without_import():
    import sys

    code = "import torch; print('irfuse' in torch._dynamo.list_backends())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def _no_compile_caches():
    """Graphs served from Inductor's caches skip the pass (and so its report)."""
    return torch._inductor.config.patch(fx_graph_cache=False, autotune_local_cache=False)


@pytest.mark.slow
def test_inductor_path_fuses_and_matches_eager():
    """Inductor's post-grad graph (convert_element_type, clamp_min/clamp_max forms)."""
    x, r, w, s = _norm_inputs()
    compiled = torch.compile(models.add_rms_norm_quant, backend="irfuse")
    with capture_reports() as reports, _no_compile_caches():
        q, h = compiled(x, r, w, s)
    q_ref, h_ref = models.add_rms_norm_quant(x, r, w, s)
    assert reports[0].fused["fuse-rms-norm-quant"] == 1, str(reports[0])
    how = {"cpu": "torch.ops.irfuse.kernel_norm (its tensors are not on the GPU)",
           "cuda": "launched by Inductor's wrapper"}[DEVICE]  # fmt: skip
    assert reports[0].launches == [f"{reports[0].kernels[0]}: {how}"], str(reports[0])
    torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
    assert_fp8_close(q, q_ref, s)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_gpu_inductor_dynamic_and_cuda_graphs(mode):
    x, r, w, s = _norm_inputs(t=16, h=4096)
    compiled = torch.compile(models.add_rms_norm_quant, backend="irfuse", mode=mode, dynamic=True)
    with capture_reports() as reports, _no_compile_caches():
        for t in (16, 33, 1, 257, 33):
            xt = torch.randn(t, 4096, device=DEVICE, dtype=BF16)
            rt = torch.randn(t, 4096, device=DEVICE, dtype=BF16)
            q, h = compiled(xt, rt, w, s)
            q_ref, h_ref = models.add_rms_norm_quant(xt, rt, w, s)
            torch.testing.assert_close(h, h_ref, atol=0, rtol=0)
            assert_fp8_close(q, q_ref, s)
    assert sum(r.fused["fuse-rms-norm-quant"] for r in reports) >= 1
    assert len(reports) <= 2


def test_a_one_element_weight_over_a_symbolic_hidden_size_is_refused():
    """w[1] broadcasts over x [T, ?]: a norm kernel takes a weight of the hidden size (it
    was raised, and the first call failed in the runtime op's check)."""
    x, _, w, s = _norm_inputs(h=16)
    torch._dynamo.mark_dynamic(x, 1)
    with capture_reports() as reports:
        q = torch.compile(models.hf_norm_quant, backend="irfuse", options={"inner": "eager"})(
            x, w[:1], s
        )
    reason = "weight has 1 elements, the hidden size is symbolic"
    assert any(r["reason"] == reason for r in reports[0].rejected), str(reports[0])
    assert_fp8_close(q, models.hf_norm_quant(x, w[:1], s), s)


def test_a_variance_taken_in_fp64_is_refused():
    """mean(..., dtype=float64) makes the variance and the normalised value fp64, not what
    the kernels compute."""

    def fn(x, w, s):
        v = x.float()
        n = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True, dtype=torch.float64) + 1e-6)
        return models.static_quant(w * n.to(x.dtype), s)

    x, _, w, s = _norm_inputs()
    report = irfuse.explain(fn, x, w, s)
    assert any(r["reason"].endswith("is float64") for r in report.rejected), str(report)
    assert not report.kernels


def test_norm_intermediate_read_elsewhere_is_refused():
    def fn(x, w, s):
        v = x.float()
        rstd = torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6)
        n = v * rstd
        return models.static_quant(w * n.to(x.dtype), s), rstd

    x, _, w, s = _norm_inputs()
    report = irfuse.explain(fn, x, w, s)
    assert any("user outside the norm" in r["reason"] for r in report.rejected), str(report)
    assert not report.kernels


@pytest.mark.parametrize(
    "args,reason",
    [
        ("f64", "input dtype float64 is not bf16, fp16 or fp32"),
        ("short_weight", "weight has 1 elements, the hidden size is 64"),
    ],
)
def test_norms_the_kernels_cannot_run_are_refused(args, reason):
    x, _, w, s = _norm_inputs()
    if args == "f64":
        x, w = x.double(), w.double()
    else:
        w = w[:1]
    report = irfuse.explain(models.hf_norm_quant, x, w, s)
    assert any(r["reason"] == reason for r in report.rejected), str(report)
    assert not report.kernels
