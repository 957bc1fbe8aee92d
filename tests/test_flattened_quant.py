"""A norm over a model's [B, S, K] hidden states whose quant reads them flattened to
[B*S, K] (a linear flattens its input before quantizing it): the quant still fuses into
the norm's kernel, whose outputs are viewed as the graph's [T, ...] shapes."""

from __future__ import annotations

import pytest
import torch

import irfuse
from irfuse.pipeline import capture_reports
from tests import models
from tests.helpers import assert_fp8_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
BF16 = torch.bfloat16
FP8 = torch.float8_e4m3fn
B, S, K = 2, 3, 256


def _static(y, s):
    return (models.static_quant(y, s),)


def _per_token(y, s):
    yf = y.float()
    scale = (yf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (yf / scale).clamp(-448.0, 448.0).to(FP8), scale


def _per_tensor(y, s):
    yf = y.float()
    scale = (yf.abs().amax() / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (yf / scale).clamp(-448.0, 448.0).to(FP8), scale


def _per_group(y, s, group=64):
    t, k = y.shape
    yg = y.float().view(t, k // group, group)
    scale = yg.abs().amax(-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (yg / scale).clamp(-448.0, 448.0).to(FP8).view(t, k), scale.squeeze(-1)


QUANTS = {"static": _static, "per_token": _per_token, "per_tensor": _per_tensor}
QUANTS["per_group"] = _per_group
KERNELS = {
    "static": ["irfuse_add_rounded_rms_norm_static_div_fp8"],
    "per_token": ["irfuse_add_rounded_rms_norm_per_token_fp8"],
    "per_tensor": ["irfuse_add_rounded_rms_norm_amax", "irfuse_rms_norm_per_tensor_fp8"],
    "per_group": ["irfuse_add_rounded_rms_norm_per_group64_fp8"],
}
FLATTENS = {
    "reshape": lambda y: y.reshape(-1, y.shape[-1]),
    "view": lambda y: y.view(-1, y.shape[-1]),
    "float-then-flatten": lambda y: y.float().flatten(0, -2),
}


def _block(scheme: str, flatten: str):
    def block(x, residual, weight, s):
        h = x + residual
        y = models.hf_rms_norm(h, weight)
        return (*QUANTS[scheme](FLATTENS[flatten](y), s), h)

    return block


def _inputs():
    g = torch.Generator().manual_seed(3)
    x, residual = (torch.randn(B, S, K, generator=g).to(BF16).to(DEVICE) for _ in range(2))
    weight = (torch.rand(K, generator=g) + 0.5).to(BF16).to(DEVICE)
    return x, residual, weight, torch.tensor([0.02], device=DEVICE)


def _check(outputs, expected, scheme: str) -> None:
    q, *scales, h = outputs
    q_ref, *scales_ref, h_ref = expected
    assert torch.equal(h, h_ref) and q.shape == q_ref.shape == (B * S, K)
    for got, want in zip(scales, scales_ref, strict=True):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-2, atol=0)  # the norm may round apart
    if scheme == "static":
        per_element = expected_scale = torch.tensor(0.02, device=DEVICE)
    else:
        expected_scale = scales_ref[0]
        per_element = (
            expected_scale
            if expected_scale.dim() == 0
            else expected_scale.repeat_interleave(K // expected_scale.shape[-1], dim=-1)
        )
    assert_fp8_close(q, q_ref, per_element)


@pytest.mark.parametrize("flatten", list(FLATTENS))
@pytest.mark.parametrize("scheme", list(QUANTS))
def test_the_quant_of_flattened_hidden_states_fuses_into_the_norm(scheme, flatten):
    block = _block(scheme, flatten)
    args = _inputs()
    report = irfuse.explain(block, *args)
    assert report.fused["fuse-rms-norm-quant"] == 1, str(report)
    assert report.kernels == KERNELS[scheme] and not report.rejected, str(report)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="irfuse", options={"inner": "eager"})
    _check(compiled(*args), block(*args), scheme)


@pytest.mark.parametrize("scheme", ["static", "per_token"])
def test_through_inductor(scheme):
    """Inductor's post-grad graph (on the CPU the kernel runs through kernel_norm; on a
    GPU it launches from Inductor's wrapper, its results viewed to [T, ...])."""
    block = _block(scheme, "reshape")
    args = _inputs()
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="irfuse", options={"force_disable_caches": True})
    with capture_reports() as reports:
        outputs = compiled(*args)
    (report,) = reports
    assert report.kernels == KERNELS[scheme], str(report)
    if DEVICE == "cuda":
        assert len(report.launches) == len(KERNELS[scheme])
        assert all("launched by Inductor's wrapper" in line for line in report.launches)
    _check(outputs, block(*args), scheme)


def test_a_flatten_that_moves_the_hidden_dim_is_not_looked_through():
    """[B, S, K] viewed as [B, S*K]: not a flatten of the token dims, the quant is not the
    norm's epilogue (the rows it would scale are not the norm's rows)."""

    def block(x, residual, weight, s):
        y = models.hf_rms_norm(x + residual, weight)
        return _per_token(y.reshape(B, S * K), s)

    report = irfuse.explain(block, *_inputs())
    assert "fuse-rms-norm-quant" not in report.fused, str(report)
    assert report.rejected[-1]["reason"] == "no producer to fuse into: left to the inner compiler"


def test_the_flattened_value_also_read_unquantized_is_kept():
    """The flattened hidden states also feed an unquantized matmul: the kernel writes the
    [B, S, K] value too, and the matmul reads it through the graph's flatten."""

    def block(x, residual, weight, s):
        h = x + residual
        flat = models.hf_rms_norm(h, weight).reshape(-1, K)
        return (*_per_token(flat, s), h, flat @ weight.view(K, 1))

    args = _inputs()
    report = irfuse.explain(block, *args)
    assert report.kernels == ["irfuse_add_rounded_rms_norm_per_token_fp8_keep"], str(report)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="irfuse", options={"inner": "eager"})
    *outputs, product = compiled(*args)
    *expected, product_ref = block(*args)
    _check(outputs, expected, "per_token")
    torch.testing.assert_close(product, product_ref)


@pytest.mark.parametrize("inner", ["eager", "inductor"])
def test_a_symbolic_batch_flattens_too(inner):
    """The view back to [T, ...] reads the batch with sym_size (no recompile)."""
    block = _block("per_token", "reshape")
    x, residual, weight, s = _inputs()
    torch._dynamo.reset()
    options = {"inner": inner, "force_disable_caches": True}
    compiled = torch.compile(block, backend="irfuse", options=options)
    with capture_reports() as reports:
        for batch in (2, 5):
            xb, rb = (t[:1].expand(batch, S, K).contiguous() + batch for t in (x, residual))
            for t in (xb, rb):
                torch._dynamo.mark_dynamic(t, 0)
            q, scale, h = compiled(xb, rb, weight, s)
            q_ref, scale_ref, h_ref = block(xb, rb, weight, s)
            assert q.shape == (batch * S, K) and scale.shape == (batch * S, 1)
            assert torch.equal(h, h_ref)
            assert_fp8_close(q, q_ref, scale_ref)
    assert len(reports) == 1 and reports[0].fused["fuse-rms-norm-quant"] == 1, reports


def test_a_per_tensor_scale_of_more_dims_than_x_is_refused():
    """A per-tensor scale viewed to [1, 1, 1] over the flattened [T, K] broadcasts the
    quant to [1, T, K]: refused with the reason (at a symbolic batch it was fused, and the
    norm kernel's [B, S, K] came back in its place; static, the verifier refused the op
    and the whole graph went unfused)."""

    def block(x, residual, weight):
        yf = models.hf_rms_norm(x + residual, weight).flatten(0, -2).float()
        s = (yf.abs().amax() / 448.0).clamp(min=1.0 / (448.0 * 512.0)).reshape(1, 1, 1)
        return (yf / s).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), s

    x, residual, weight, _ = _inputs()
    for symbolic in (False, True):
        torch._dynamo.reset()
        if symbolic:
            for t in (x, residual):
                torch._dynamo.mark_dynamic(t, 0)
        compiled = torch.compile(block, backend="irfuse", options={"inner": "eager"})
        with capture_reports() as reports:
            q, _ = compiled(x, residual, weight)
        q_ref, _ = block(x, residual, weight)
        assert q.shape == q_ref.shape and torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
        reasons = [r["reason"] for r in reports[0].rejected]
        assert any("has more dims than x" in r for r in reasons), str(reports[0])
