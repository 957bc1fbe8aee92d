"""Tests of the reference custom ops in irfuse.ops (semantics from shared/NUMERICS.md)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.backends.debugging import aot_eager
from torch._subclasses.fake_tensor import FakeTensorMode

import irfuse.ops as ops

FP8 = torch.float8_e4m3fn
BF16_TOL = {"atol": 1e-3, "rtol": 1.6e-2}
FP32_TOL = {"atol": 1e-5, "rtol": 1e-5}
FP8_TOL = {"atol": 1e-1, "rtol": 1e-1}


def tol(dtype: torch.dtype) -> dict[str, float]:
    """NUMERICS.md tolerances by dtype."""
    return {
        torch.float32: FP32_TOL,
        torch.float16: {"atol": 1e-3, "rtol": 1e-3},
        torch.bfloat16: BF16_TOL,
    }[dtype]


def gen(seed: int = 0) -> torch.Generator:
    """Seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Seeded normal tensor."""
    return torch.randn(*shape, generator=gen(seed)).to(dtype)


def fp8_ref(x_f32: torch.Tensor) -> torch.Tensor:
    """Independent saturating fp8 cast."""
    return torch.clamp(x_f32, min=-448.0, max=448.0).to(FP8)


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> None:
    """Assert two fp8 tensors are bit-identical."""
    assert a.dtype == b.dtype == FP8
    assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


# ---------------------------------------------------------------------------------------
# opcheck on every custom op

SCALE = torch.tensor([0.02])
GS = torch.tensor([40.0])


def _opcheck_cases():
    cases = []
    for dt in (torch.float32, torch.bfloat16):
        x = randn(6, 256, dtype=dt)
        x3 = randn(2, 3, 128, dtype=dt, seed=1)
        w = randn(256, dtype=dt, seed=2)
        cases += [
            (ops.static_fp8_quant, (x, SCALE), {}),
            (ops.per_token_fp8_quant, (x3,), {}),
            (ops.per_token_fp8_quant, (x, torch.tensor([1.5])), {}),
            (ops.per_tensor_fp8_quant, (x3,), {}),
            (ops.per_group_fp8_quant, (x, 128), {}),
            (ops.per_group_fp8_quant, (x, 64), {"column_major": True}),
            (ops.per_group_fp8_quant, (x3, 64), {"ue8m0": True}),
            (ops.nvfp4_quant, (x[:, :64], GS), {}),
            (ops.rms_norm, (x, w, 1e-6), {}),
            (ops.rms_norm, (x, w.float(), 1e-6), {"gemma": True}),
            (ops.fused_add_rms_norm, (x, randn(6, 256, dtype=dt, seed=3), w, 1e-5), {}),
            (ops.all_reduce, (x, "0"), {}),
        ]
        q, k, v = (
            randn(1, 4, 5, 16, dtype=dt),
            randn(1, 2, 7, 16, dtype=dt, seed=1),
            randn(1, 2, 7, 8, dtype=dt, seed=2),
        )
        mask = torch.rand(5, 7, generator=gen(4)) > 0.3
        cases += [
            (ops.attention, (q, k, v), {}),
            (ops.attention, (q, k, v), {"causal": "top_left", "return_lse": True}),
            (ops.attention, (q, k, v), {"causal": "bottom_right", "scale": 0.3}),
            (ops.attention, (q, k, v, mask), {"return_lse": True}),
            (ops.attention, (q, k, v, torch.randn(1, 1, 5, 7, generator=gen(5))), {}),
        ]
        t, n, dn, dr, lat, dv = 3, 2, 8, 4, 16, 8
        mla_args = (
            randn(t, n, dn + dr, dtype=dt),
            randn(5, lat, dtype=dt, seed=1),
            randn(5, 1, dr, dtype=dt, seed=2),
            randn(n, dn, lat, dtype=dt, seed=3),
            randn(n, lat, dv, dtype=dt, seed=4),
            0.25,
        )
        cases += [(ops.mla_attention, (*mla_args, True), {})]
        lse = randn(4, 3, seed=6)
        merge_args = (randn(3, 4, 16, dtype=dt), lse, randn(3, 4, 16, dtype=dt, seed=7), lse + 1)
        cases += [
            (ops.merge_attn_states, merge_args, {}),
            (ops.merge_attn_states, merge_args, {"output_scale": SCALE}),
        ]
    return cases


@pytest.mark.parametrize("case", _opcheck_cases(), ids=lambda c: c[0]._name)
def test_opcheck(case) -> None:
    op, args, kwargs = case
    torch.library.opcheck(op, args, kwargs)


def _to(v, device: str):
    return v.to(device) if isinstance(v, torch.Tensor) else v


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", _opcheck_cases(), ids=lambda c: c[0]._name)
def test_cuda_matches_cpu(case) -> None:
    """The same op on CUDA gives the CPU results (bit-exact for quantized outputs)."""
    op, args, kwargs = case
    cuda_args = tuple(_to(a, "cuda") for a in args)
    cuda_kwargs = {k: _to(v, "cuda") for k, v in kwargs.items()}
    torch.library.opcheck(op, cuda_args, cuda_kwargs)
    want = op(*args, **kwargs)
    got = op(*cuda_args, **cuda_kwargs)
    for g, w in zip(
        got if isinstance(got, tuple) else (got,),
        want if isinstance(want, tuple) else (want,),
        strict=True,
    ):
        assert g.is_cuda and g.shape == w.shape and g.dtype == w.dtype and g.stride() == w.stride()
        g = g.cpu()
        if op is ops.merge_attn_states and w.dtype == FP8:  # exp/log differ by ulps
            torch.testing.assert_close(g.float(), w.float(), **FP8_TOL)
        elif w.dtype in (FP8, torch.uint8, torch.int32):
            assert torch.equal(g.view(torch.uint8), w.view(torch.uint8))
        else:
            torch.testing.assert_close(g, w, **tol(w.dtype), equal_nan=False)


def test_overloads_registered() -> None:
    for name in (
        "static_fp8_quant",
        "per_token_fp8_quant",
        "per_tensor_fp8_quant",
        "per_group_fp8_quant",
        "nvfp4_quant",
        "rms_norm",
        "fused_add_rms_norm",
        "attention",
        "mla_attention",
        "merge_attn_states",
        "all_reduce",
    ):
        overload = getattr(torch.ops.irfuse, name).default
        assert isinstance(overload, torch._ops.OpOverload)
        assert callable(getattr(ops, name))


def hint(size: int | torch.SymInt) -> int:
    """A size's value at the shapes traced."""
    return size if isinstance(size, int) else size.node.hint


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == FP8 else t


def test_dynamic_shapes_compile() -> None:
    """Fake impls work with symbolic sizes (dynamic=True, several shapes, one graph): the
    outputs Dynamo's fake tensors describe (traced at the first shape) have the real
    outputs' shapes and strides, and the compiled function runs at every shape."""

    def fn(x, w, res, scale, q, k, v, p_lse):
        y, r = ops.fused_add_rms_norm(x, res, w, 1e-6)
        qg, sg = ops.per_group_fp8_quant(y, 64, column_major=True)
        qt, st = ops.per_token_fp8_quant(r)
        fq, fs = ops.nvfp4_quant(y, scale)
        o, lse = ops.attention(q, k, v, causal="bottom_right", return_lse=True)
        m, m_lse = ops.merge_attn_states(o[0].transpose(0, 1), lse[0], o[0].transpose(0, 1), p_lse)
        outs = (qg, sg, qt, st, fq, fs, ops.static_fp8_quant(y, scale), o, lse, m, m_lse)
        return (*outs, ops.all_reduce(y, "0"))

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    compiled = torch.compile(fn, backend=capture, dynamic=True, fullgraph=True)
    for t in (3, 5, 7):
        args = (
            randn(t, 128),
            randn(128, seed=1),
            randn(t, 128, seed=2),
            torch.tensor([50.0]),
            randn(1, 4, t, 8),
            randn(1, 2, t + 2, 8, seed=1),
            randn(1, 2, t + 2, 8, seed=2),
            randn(4, t, seed=3),
        )
        wants = fn(*args)
        for got, want in zip(compiled(*args), wants, strict=True):
            assert got.shape == want.shape and got.stride() == want.stride()
            assert torch.equal(_bits(got), _bits(want))
        if t == 3:  # the fake outputs, at the sizes traced (their hints)
            (graph,) = graphs
            fakes = [n.meta["example_value"] for n in graph.graph.output_node().args[0]]
            for fake, want in zip(fakes, wants, strict=True):
                assert not all(isinstance(d, int) for d in fake.shape)  # symbolic
                assert [hint(d) for d in fake.shape] == list(want.shape), fake
                assert [hint(d) for d in fake.stride()] == list(want.stride()), fake
                assert fake.dtype == want.dtype
    assert len(graphs) == 1


def test_fake_impl_runs_checks() -> None:
    with FakeTensorMode():
        x = torch.empty(4, 64, dtype=torch.bfloat16)
        with pytest.raises(TypeError, match="weight dtype"):
            ops.rms_norm(x, torch.empty(64, dtype=torch.float16), 1e-6)
        with pytest.raises(ValueError, match="scale must be a float32 tensor with one element"):
            ops.static_fp8_quant(x, torch.empty(4))
        q, s = ops.per_group_fp8_quant(x, 64, column_major=True)
        assert q.dtype == FP8 and s.shape == (4, 1) and s.stride() == (1, 4)


# ---------------------------------------------------------------------------------------
# fp8 quantization


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_static_fp8_quant(dtype: torch.dtype) -> None:
    x = randn(16, 96, dtype=dtype) * 4
    x[0, :4] = torch.tensor([1e4, -1e4, 0.0, -0.0]).to(dtype)  # saturation
    scale = torch.tensor([0.05])  # max |x| / scale < 448
    q = ops.static_fp8_quant(x, scale)
    assert q.shape == x.shape
    same_bytes(q, fp8_ref(x.float() * (1.0 / scale)))
    assert q[0, 0].float() == 448 and q[0, 1].float() == -448
    deq = ops.dequant_fp8(q, scale)
    torch.testing.assert_close(deq[1:], x[1:].float(), **FP8_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_token_fp8_quant(dtype: torch.dtype) -> None:
    x = randn(2, 5, 64, dtype=dtype) * torch.logspace(-3, 2, 5).view(1, 5, 1).to(dtype)
    x[1, 2] = 0
    q, s = ops.per_token_fp8_quant(x)
    assert q.shape == x.shape and q.dtype == FP8
    assert s.shape == (2, 5, 1) and s.dtype == torch.float32
    amax = x.float().abs().amax(-1, keepdim=True)
    want_s = torch.clamp(amax / 448.0, min=1.0 / (448.0 * 512.0))
    assert torch.equal(s, want_s)
    assert s[1, 2, 0] == 1.0 / (448 * 512) and (q[1, 2].float() == 0).all()
    same_bytes(q, fp8_ref(x.float() / want_s))
    # the row maximum maps to +-448
    assert torch.allclose(q.float().abs().amax(-1)[amax[..., 0] > 0], torch.tensor(448.0))
    torch.testing.assert_close(ops.dequant_fp8(q, s), x.float(), **FP8_TOL)


def test_per_token_fp8_quant_scale_ub() -> None:
    x = randn(8, 32) * torch.arange(1, 9).view(8, 1)
    ub = torch.tensor([3.0])
    q, s = ops.per_token_fp8_quant(x, ub)
    amax = x.abs().amax(-1, keepdim=True)
    want = torch.clamp(torch.minimum(amax, ub) / 448, min=1 / (448 * 512))
    assert torch.equal(s, want)
    assert (s <= 3.0 / 448 + 1e-12).all()
    same_bytes(q, fp8_ref(x / want))


def test_per_tensor_fp8_quant() -> None:
    x = randn(3, 7, 40, dtype=torch.bfloat16) * 3
    q, s = ops.per_tensor_fp8_quant(x)
    assert s.shape == (1,) and s.dtype == torch.float32
    want = torch.clamp(x.float().abs().amax() / 448, min=1 / (448 * 512))
    assert torch.equal(s[0], want)
    same_bytes(q, fp8_ref(x.float() / want))
    torch.testing.assert_close(ops.dequant_fp8(q, s), x.float(), **FP8_TOL)
    _, s0 = ops.per_tensor_fp8_quant(torch.zeros(4, 4))
    assert s0.item() == pytest.approx(1 / (448 * 512))


@pytest.mark.parametrize("group", [64, 128])
@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_per_group_fp8_quant(group: int, column_major: bool, ue8m0: bool) -> None:
    t, k = 6, 256
    x = randn(t, k, dtype=torch.bfloat16) * torch.logspace(-2, 1, k // 32).repeat_interleave(32)
    x = x.to(torch.bfloat16)
    x[2, :group] = 0
    q, s = ops.per_group_fp8_quant(x, group, column_major=column_major, ue8m0=ue8m0)
    assert q.shape == x.shape and q.dtype == FP8
    assert s.shape == (t, k // group) and s.dtype == torch.float32
    if column_major:
        assert s.stride() == (1, t)
    else:
        assert s.stride() == (k // group, 1)
    amax = x.float().view(t, k // group, group).abs().amax(-1)
    want = torch.clamp(amax, min=1e-10) / 448
    if ue8m0:
        want = 2.0 ** torch.ceil(torch.log2(want))
        assert torch.equal(torch.log2(s), torch.round(torch.log2(s)))  # powers of two
    assert torch.equal(s, want)
    want_q = fp8_ref(x.float().view(t, k // group, group) / want.unsqueeze(-1)).view(t, k)
    same_bytes(q, want_q)
    deq = ops.dequant_fp8_per_group(q, s, group)
    torch.testing.assert_close(deq, x.float(), **FP8_TOL)


def test_per_group_leading_dims() -> None:
    x = randn(2, 3, 128)
    q, s = ops.per_group_fp8_quant(x, 64)
    assert s.shape == (2, 3, 2)
    torch.testing.assert_close(ops.dequant_fp8_per_group(q, s, 64), x, **FP8_TOL)


# ---------------------------------------------------------------------------------------
# nvfp4


def _nvfp4_global_scale(x: torch.Tensor) -> torch.Tensor:
    return (448.0 * 6.0 / x.float().abs().amax()).reshape(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("m", "n"), [(4, 64), (130, 96), (1, 16)])
def test_nvfp4_roundtrip(dtype: torch.dtype, m: int, n: int) -> None:
    x = (randn(m, n) * torch.logspace(-1, 1, n // 16).repeat_interleave(16)).to(dtype)
    gs = _nvfp4_global_scale(x)
    q, bs = ops.nvfp4_quant(x, gs)
    assert q.shape == (m, n // 2) and q.dtype == torch.uint8
    kc = math.ceil(n / 64)
    assert bs.shape == (math.ceil(m / 128) * 128, kc) and bs.dtype == torch.int32
    deq = ops.nvfp4_dequant(q, bs, gs, m, n)
    xf = x.float()
    block_amax = xf.view(m, n // 16, 16).abs().amax(-1, keepdim=True).expand(m, n // 16, 16)
    bound = 0.35 * xf.abs() + 0.05 * block_amax.reshape(m, n)
    assert ((deq - xf).abs() <= bound).all()
    torch.testing.assert_close(deq, xf, atol=3e-1 * xf.abs().max().item(), rtol=3e-1)


def test_nvfp4_e2m1_rounding() -> None:
    # amax 6 and global scale 1 -> SF = e4m3(1.0) = 1, so the nibbles are e2m1(x) directly
    vals = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0, 0.3, 1.0, 4.9, 5.1, -0.5, -6.0, -3.0, 2.9]
    codes = [0, 2, 2, 4, 4, 6, 6, 7, 1, 2, 6, 7, 9, 15, 13, 5]
    x = torch.tensor([vals])
    q, bs = ops.nvfp4_quant(x, torch.tensor([1.0]))
    got = torch.stack((q & 0xF, q >> 4), dim=-1).reshape(-1).tolist()
    assert got == codes
    assert bs.view(torch.uint8).reshape(-1)[0].item() == 0x38  # e4m3 1.0
    # saturation at 6 when the block scale is forced small by the global scale cap
    x2 = torch.full((1, 16), 0.0)
    x2[0, 0], x2[0, 1] = 600.0, -600.0
    q2, _ = ops.nvfp4_quant(x2, torch.tensor([10.0]))  # SF saturates at 448 -> x*inv > 6
    assert (q2[0, 0] & 0xF).item() == 7 and (q2[0, 0] >> 4).item() == 15


def test_nvfp4_swizzled_layout() -> None:
    m, n = 200, 16 * 6  # two row tiles (padded to 256), 6 blocks (padded to 8)
    row_mag = torch.logspace(-2, 2, m).view(m, 1)
    blk_mag = torch.logspace(0, 1, n // 16).repeat_interleave(16).view(1, n)
    x = randn(m, n) * row_mag * blk_mag
    gs = torch.tensor([0.37])
    _, bs = ops.nvfp4_quant(x, gs)
    raw = bs.contiguous().view(torch.uint8).reshape(-1)
    assert raw.numel() == 256 * 8
    amax = x.view(m, n // 16, 16).abs().amax(-1)
    sf_bytes = torch.clamp(gs * amax / 6, max=448).to(FP8).view(torch.uint8)
    seen = torch.zeros_like(raw, dtype=torch.bool)
    ceil_n64 = math.ceil(n / 64)
    for r in range(m):
        for k in range(n // 16):
            off = ((r >> 7) * ceil_n64 + (k >> 2)) * 512 + (r & 31) * 16 + ((r >> 5) & 3) * 4
            off += k & 3
            assert raw[off] == sf_bytes[r, k], (r, k)
            seen[off] = True
    assert (raw[~seen] == 0).all()  # zero-filled padding
    assert len(set(sf_bytes.reshape(-1).tolist())) > 20  # the check is not vacuous


# ---------------------------------------------------------------------------------------
# rms norm


def test_rms_norm_fp32_matches_torch() -> None:
    x, w = randn(5, 7, 128), randn(128, seed=1)
    for eps in (1e-5, 1e-6, 1e-12):
        y = ops.rms_norm(x, w, eps)
        torch.testing.assert_close(y, F.rms_norm(x, (128,), w, eps), **FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rms_norm_low_precision(dtype: torch.dtype) -> None:
    x, w = randn(9, 64, dtype=dtype) * 5, randn(64, dtype=dtype, seed=1)
    xf = x.float()
    want = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype) * w
    y = ops.rms_norm(x, w, 1e-6)
    assert y.dtype == dtype
    torch.testing.assert_close(y, want, atol=0, rtol=0)


@pytest.mark.parametrize("w_dtype", [torch.bfloat16, torch.float32])
def test_rms_norm_gemma(w_dtype: torch.dtype) -> None:
    x, w = randn(9, 64, dtype=torch.bfloat16), randn(64, seed=1).to(w_dtype)
    xf = x.float()
    r = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)
    want = (r * (1.0 + w.float())).to(torch.bfloat16)
    y = ops.rms_norm(x, w, 1e-6, gemma=True)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, want, **BF16_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gemma", [False, True])
def test_fused_add_rms_norm(dtype: torch.dtype, gemma: bool) -> None:
    x, res, w = (
        randn(4, 3, 64, dtype=dtype),
        randn(4, 3, 64, dtype=dtype, seed=1),
        randn(64, dtype=dtype, seed=2),
    )
    y, r = ops.fused_add_rms_norm(x, res, w, 1e-5, gemma=gemma)
    s = x.float() + res.float()
    assert torch.equal(r, s.to(dtype))
    norm = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + 1e-5)
    want = (norm * (1 + w.float())).to(dtype) if gemma else norm.to(dtype) * w
    torch.testing.assert_close(y, want, **tol(dtype))
    if dtype == torch.float32 and not gemma:
        torch.testing.assert_close(y, F.rms_norm(x + res, (64,), w, 1e-5), **FP32_TOL)


def test_norm_non_contiguous_input() -> None:
    x = randn(64, 6).t()
    w = randn(64, seed=1)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), F.rms_norm(x, (64,), w, 1e-6))


# ---------------------------------------------------------------------------------------
# attention


def _sdpa_ref(q, k, v, **kw):
    return F.scaled_dot_product_attention(
        q.float(), k.float(), v.float(), enable_gqa=q.shape[1] != k.shape[1], **kw
    ).to(q.dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("hkv", [4, 2, 1])
def test_attention_vs_sdpa(dtype: torch.dtype, hkv: int) -> None:
    b, hq, sq, skv, d = 2, 4, 6, 9, 16
    q = randn(b, hq, sq, d, dtype=dtype)
    k = randn(b, hkv, skv, d, dtype=dtype, seed=1)
    v = randn(b, hkv, skv, 24, dtype=dtype, seed=2)
    t = tol(dtype)
    out, lse = ops.attention(q, k, v)
    assert out.shape == (b, hq, sq, 24) and out.dtype == dtype and lse.shape == (0,)
    torch.testing.assert_close(out, _sdpa_ref(q, k, v), **t)
    out, _ = ops.attention(q, k, v, scale=0.2)
    torch.testing.assert_close(out, _sdpa_ref(q, k, v, scale=0.2), **t)
    qs = q[:, :, :, :]
    k_sq = k[:, :, :sq]
    v_sq = v[:, :, :sq]
    out, _ = ops.attention(qs, k_sq, v_sq, causal="top_left")
    torch.testing.assert_close(out, _sdpa_ref(qs, k_sq, v_sq, is_causal=True), **t)
    mask = torch.rand(b, 1, sq, skv, generator=gen(3)) > 0.4
    mask[..., 0] = True
    out, _ = ops.attention(q, k, v, mask)
    torch.testing.assert_close(out, _sdpa_ref(q, k, v, attn_mask=mask), **t)
    add = torch.randn(sq, skv, generator=gen(4))
    out, _ = ops.attention(q, k, v, add)
    torch.testing.assert_close(out, _sdpa_ref(q, k, v, attn_mask=add), **t)


def test_attention_top_left_rectangular() -> None:
    q, k, v = randn(1, 2, 5, 8), randn(1, 2, 9, 8, seed=1), randn(1, 2, 9, 8, seed=2)
    out, _ = ops.attention(q, k, v, causal="top_left")
    torch.testing.assert_close(out, _sdpa_ref(q, k, v, is_causal=True), **FP32_TOL)


@pytest.mark.parametrize(("sq", "skv"), [(4, 10), (1, 7), (6, 6)])
def test_attention_bottom_right(sq: int, skv: int) -> None:
    q, k, v = randn(2, 4, sq, 8), randn(2, 2, skv, 8, seed=1), randn(2, 2, skv, 8, seed=2)
    keep = torch.tensor([[j <= i + skv - sq for j in range(skv)] for i in range(sq)])
    out, lse = ops.attention(q, k, v, causal="bottom_right", return_lse=True)
    torch.testing.assert_close(out, _sdpa_ref(q, k, v, attn_mask=keep), **FP32_TOL)
    kk = k.repeat_interleave(2, dim=1)
    scores = (q @ kk.transpose(-1, -2)) / math.sqrt(8)
    want_lse = torch.logsumexp(scores.masked_fill(~keep, float("-inf")), -1)
    torch.testing.assert_close(lse, want_lse, **FP32_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_lse(dtype: torch.dtype) -> None:
    q, k, v = (
        randn(1, 6, 5, 16, dtype=dtype),
        randn(1, 3, 8, 16, dtype=dtype, seed=1),
        randn(1, 3, 8, 16, dtype=dtype, seed=2),
    )
    add = torch.randn(1, 6, 5, 8, generator=gen(3))
    out, lse = ops.attention(q, k, v, add, scale=0.5, return_lse=True)
    assert lse.shape == (1, 6, 5) and lse.dtype == torch.float32
    scores = q.float() @ k.float().repeat_interleave(2, 1).transpose(-1, -2) * 0.5 + add
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), **FP32_TOL)
    _, lse_tl = ops.attention(q, k, v, causal="top_left", return_lse=True)
    tl = torch.ones(5, 8, dtype=torch.bool).tril()
    s_tl = q.float() @ k.float().repeat_interleave(2, 1).transpose(-1, -2) / 4.0
    want = torch.logsumexp(s_tl.masked_fill(~tl, float("-inf")), -1)
    torch.testing.assert_close(lse_tl, want, **FP32_TOL)


def test_attention_fully_masked_rows() -> None:
    q, k, v = randn(1, 2, 4, 8), randn(1, 2, 5, 8, seed=1), randn(1, 2, 5, 8, seed=2)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1] = False
    out, lse = ops.attention(q, k, v, mask, return_lse=True)
    assert not out.isnan().any() and not lse.isnan().any()
    assert (out[:, :, 1] == 0).all() and (lse[:, :, 1] == float("-inf")).all()
    add = torch.zeros(4, 5)
    add[2] = float("-inf")
    out, lse = ops.attention(q, k, v, add, return_lse=True)
    assert (out[:, :, 2] == 0).all() and (lse[:, :, 2] == float("-inf")).all()
    # bottom-right with Sq > Skv: the first Sq - Skv queries see nothing
    q2 = randn(1, 2, 7, 8)
    out, lse = ops.attention(q2, k, v, causal="bottom_right", return_lse=True)
    assert not out.isnan().any()
    assert (out[:, :, :2] == 0).all() and (lse[:, :, :2] == float("-inf")).all()
    assert torch.isfinite(lse[:, :, 2:]).all()


# ---------------------------------------------------------------------------------------
# MLA


def _mla_naive(q, kv_c, k_pe, w_uk, w_uv, scale, causal):
    t, n, _ = q.shape
    tk = kv_c.shape[0]
    dv = w_uv.shape[2]
    out = torch.zeros(t, n * dv)
    for h in range(n):
        k_nope = kv_c.float() @ w_uk[h].float().t()  # [Tk, Dn]
        k = torch.cat((k_nope, k_pe[:, 0].float()), dim=-1)
        v = kv_c.float() @ w_uv[h].float()
        s = (q[:, h].float() @ k.t()) * scale
        if causal:
            for i in range(t):
                s[i, i + tk - t + 1 :] = float("-inf")
        p = torch.softmax(s, -1).nan_to_num(0.0)
        out[:, h * dv : (h + 1) * dv] = p @ v
    return out.to(q.dtype)


def _mla_absorbed(q, kv_c, k_pe, w_uk, w_uv, scale):
    dn = w_uk.shape[1]
    q_lat = torch.einsum("tnd,ndl->tnl", q[..., :dn].float(), w_uk.float())
    s = torch.einsum("tnl,sl->nts", q_lat, kv_c.float())
    s = s + torch.einsum("tnr,sr->nts", q[..., dn:].float(), k_pe[:, 0].float())
    o_lat = torch.softmax(s * scale, -1) @ kv_c.float()  # [N, T, L]
    out = torch.einsum("ntl,nlv->tnv", o_lat, w_uv.float())
    return out.reshape(q.shape[0], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("t", "tk", "causal"), [(4, 9, True), (5, 5, True), (3, 6, False)])
def test_mla_attention(dtype: torch.dtype, t: int, tk: int, causal: bool) -> None:
    n, dn, dr, lat, dv = 3, 16, 8, 32, 12
    q = randn(t, n, dn + dr, dtype=dtype)
    kv_c = randn(tk, lat, dtype=dtype, seed=1)
    k_pe = randn(tk, 1, dr, dtype=dtype, seed=2)
    w_uk = (randn(n, dn, lat, seed=3) / math.sqrt(lat)).to(dtype)
    w_uv = (randn(n, lat, dv, seed=4) / math.sqrt(lat)).to(dtype)
    scale = 1 / math.sqrt(dn + dr)
    out = ops.mla_attention(q, kv_c, k_pe, w_uk, w_uv, scale, causal)
    assert out.shape == (t, n * dv) and out.dtype == dtype
    want = _mla_naive(q, kv_c, k_pe, w_uk, w_uv, scale, causal)
    torch.testing.assert_close(out, want, **tol(dtype))
    if not causal and dtype == torch.float32:
        torch.testing.assert_close(
            out, _mla_absorbed(q, kv_c, k_pe, w_uk, w_uv, scale), atol=1e-4, rtol=1e-4
        )


# ---------------------------------------------------------------------------------------
# merge_attn_states


def _merge_ref(p_out, p_lse, s_out, s_lse):
    inf = float("inf")
    out = torch.zeros(p_out.shape)
    lse = torch.zeros(p_lse.shape)
    t, h, _ = p_out.shape
    for i in range(t):
        for j in range(h):
            a, b = p_lse[j, i].item(), s_lse[j, i].item()
            a, b = (-inf if a == inf else a), (-inf if b == inf else b)
            m = max(a, b)
            if m == -inf:
                lse[j, i] = -inf
                continue
            pa, pb = math.exp(a - m), math.exp(b - m)
            out[i, j] = p_out[i, j].float() * (pa / (pa + pb)) + s_out[i, j].float() * (
                pb / (pa + pb)
            )
            lse[j, i] = math.log(pa + pb) + m
    return out, lse


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_attn_states(dtype: torch.dtype) -> None:
    t, h, d = 5, 4, 16
    inf = float("inf")
    p_out, s_out = randn(t, h, d, dtype=dtype), randn(t, h, d, dtype=dtype, seed=1)
    p_lse, s_lse = randn(h, t, seed=2) * 3, randn(h, t, seed=3) * 3
    p_lse[0, 0], s_lse[0, 0] = -inf, -inf  # both -inf
    p_lse[1, 1], s_lse[1, 1] = inf, 2.0  # +inf counts as -inf
    p_lse[2, 2], s_lse[2, 2] = inf, inf
    p_lse[3, 3], s_lse[3, 3] = 1.0, -inf
    out, lse = ops.merge_attn_states(p_out, p_lse, s_out, s_lse)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (h, t)
    assert not out.isnan().any() and not lse.isnan().any()
    want_out, want_lse = _merge_ref(p_out, p_lse, s_out, s_lse)
    torch.testing.assert_close(out, want_out.to(dtype), **tol(dtype))
    torch.testing.assert_close(lse, want_lse, **FP32_TOL)
    assert (out[0, 0] == 0).all() and lse[0, 0] == -inf
    assert (out[2, 2] == 0).all() and lse[2, 2] == -inf
    torch.testing.assert_close(out[1, 1], s_out[1, 1])
    torch.testing.assert_close(out[3, 3], p_out[3, 3])
    assert lse[1, 1] == 2.0 and lse[3, 3] == 1.0


def test_merge_attn_states_ignores_the_output_of_a_partial_with_no_keys() -> None:
    """A partial with lse -inf (no keys) has weight 0: its output, NaN where a naive
    softmax divided 0 by 0, adds nothing (NUMERICS: never NaN)."""
    t, h, d = 2, 2, 8
    inf, nan = float("inf"), float("nan")
    p_out, s_out = randn(t, h, d), randn(t, h, d, seed=1)
    p_lse, s_lse = randn(h, t, seed=2), randn(h, t, seed=3)
    p_out[0, 0], s_out[0, 0] = nan, nan  # both partials empty
    p_lse[0, 0], s_lse[0, 0] = -inf, -inf
    p_out[1, 1] = nan  # one empty partial
    p_lse[1, 1] = -inf
    out, lse = ops.merge_attn_states(p_out, p_lse, s_out, s_lse)
    assert (out[0, 0] == 0).all() and lse[0, 0] == -inf
    torch.testing.assert_close(out[1, 1], s_out[1, 1])
    assert not out.isnan().any()


def test_merge_attn_states_fp8_output() -> None:
    t, h, d = 3, 2, 32
    p_out, s_out = randn(t, h, d, dtype=torch.bfloat16), randn(t, h, d, dtype=torch.bfloat16)
    p_lse, s_lse = randn(h, t, seed=2), randn(h, t, seed=3)
    p_lse[0, 0] = float("-inf")
    s_lse[0, 0] = float("-inf")
    scale = torch.tensor([0.01])
    q, lse = ops.merge_attn_states(p_out, p_lse, s_out, s_lse, output_scale=scale)
    assert q.dtype == FP8 and q.shape == (t, h, d)
    want_out, want_lse = _merge_ref(p_out, p_lse, s_out, s_lse)
    torch.testing.assert_close(lse, want_lse, **FP32_TOL)
    torch.testing.assert_close(ops.dequant_fp8(q, scale), want_out, **FP8_TOL)
    assert (q[0, 0].float() == 0).all()


# ---------------------------------------------------------------------------------------
# all_reduce


def test_all_reduce_without_dist() -> None:
    x = randn(4, 8, dtype=torch.bfloat16)
    y = ops.all_reduce(x, "0")
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


_ALL_REDUCE_SCRIPT = """
import os
import sys
import torch
import torch.distributed as dist
import irfuse.ops as ops

rank, world, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=world)
xs = [torch.randn(3, 16, generator=torch.Generator().manual_seed(10 + r)).bfloat16()
      for r in range(world)]
y = ops.all_reduce(xs[rank], dist.group.WORLD.group_name)
want = sum(x.float() for x in xs).to(torch.bfloat16)
assert y.dtype == torch.bfloat16 and torch.equal(y, want), (y, want)
singles = [dist.new_group([r]) for r in range(world)]
assert torch.equal(ops.all_reduce(xs[rank], singles[rank].group_name), xs[rank])
dist.barrier()
dist.destroy_process_group()
print("ok", rank, flush=True)
os._exit(0)  # skip interpreter teardown: gloo's threads have aborted it at exit
"""


def test_all_reduce_two_ranks(tmp_path) -> None:
    """Sum over two gloo ranks (separate processes) and over single-rank groups."""
    root = Path(__file__).resolve().parents[1]
    script = tmp_path / "worker.py"
    script.write_text(_ALL_REDUCE_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), "2", str(store)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outs


# ---------------------------------------------------------------------------------------
# bad inputs


def test_bad_scale() -> None:
    x = randn(4, 64, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"static_fp8_quant: scale must be a float32 .*bfloat16"):
        ops.static_fp8_quant(x, torch.tensor([0.1], dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"scale must be a float32 tensor .* got shape \[4\]"):
        ops.static_fp8_quant(x, torch.ones(4))
    with pytest.raises(ValueError, match="scale_ub must be a float32 tensor with one element"):
        ops.per_token_fp8_quant(x, torch.ones(2, 2))
    with pytest.raises(TypeError, match="global_scale must be a float32"):
        ops.nvfp4_quant(x, torch.ones(1, dtype=torch.float16))
    with pytest.raises(ValueError, match="output_scale must be a float32 tensor"):
        o = randn(2, 2, 8)
        ops.merge_attn_states(o, randn(2, 2), o, randn(2, 2), torch.ones(3))
    with pytest.raises(TypeError, match="x must have dtype"):
        ops.static_fp8_quant(torch.ones(4, dtype=torch.int32), torch.ones(1))


def test_bad_group() -> None:
    x = randn(4, 192)
    with pytest.raises(ValueError, match="group_size 128 must divide the last dim of x"):
        ops.per_group_fp8_quant(x, 128)
    with pytest.raises(ValueError, match="group_size must be 64 or 128, got 32"):
        ops.per_group_fp8_quant(x, 32)
    with pytest.raises(ValueError, match="x must be 2-D"):
        ops.per_group_fp8_quant(randn(2, 2, 128), 64, column_major=True)
    with pytest.raises(ValueError, match="multiple of 16"):
        ops.nvfp4_quant(randn(4, 40), torch.ones(1))


def test_bad_norm() -> None:
    x = randn(4, 64, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="rms_norm: weight dtype must equal x dtype"):
        ops.rms_norm(x, randn(64), 1e-6)
    with pytest.raises(ValueError, match=r"weight must have shape \[64\]"):
        ops.rms_norm(x, randn(32, dtype=torch.bfloat16), 1e-6)
    with pytest.raises(TypeError, match="fused_add_rms_norm: weight dtype"):
        ops.fused_add_rms_norm(x, x, randn(64, dtype=torch.float16), 1e-6)
    with pytest.raises(ValueError, match="residual must have the shape of x"):
        ops.fused_add_rms_norm(x, x[:2], randn(64, dtype=torch.bfloat16), 1e-6)


def test_bad_attention() -> None:
    q, k, v = randn(1, 6, 4, 8), randn(1, 4, 5, 8), randn(1, 4, 5, 8)
    with pytest.raises(ValueError, match=r"Hq % Hkv == 0"):
        ops.attention(q, k, v)
    q = randn(1, 4, 4, 8)
    with pytest.raises(ValueError, match="cannot be combined"):
        ops.attention(q, k, v, torch.ones(4, 5, dtype=torch.bool), causal="top_left")
    with pytest.raises(ValueError, match="causal must be one of"):
        ops.attention(q, k, v, causal="bottom")
    with pytest.raises(ValueError, match="does not broadcast"):
        ops.attention(q, k, v, torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="k must have dtype float32"):
        ops.attention(q, k.bfloat16(), v)
    with pytest.raises(ValueError, match=r"k.shape\[3\] must equal head dim"):
        ops.attention(q, randn(1, 4, 5, 4), v)
    with pytest.raises(ValueError, match=r"q.shape\[2\] must equal Dn \+ Dr"):
        ops.mla_attention(
            randn(2, 2, 10), randn(3, 8), randn(3, 1, 4), randn(2, 4, 8), randn(2, 8, 4), 0.1, True
        )
