"""The generated attention kernel against the reference irfuse.ops.attention."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

import irfuse.lowering.attention as kernels
import irfuse.ops as ref
from irfuse.kernels.attention import (
    ANCHOR_BIAS,
    FLAG_CHUNK,
    HIDDEN_BIAS,
    ROW_BITS_CHUNK,
    uses_decode,
)
from irfuse.lowering.attention import attention_source, kernel_attention
from tests.helpers import (
    assert_fp8_close,
    assert_quant_close,
    dequant,
    garbage_nvfp4_scales,
    reference_quant,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter's tl.dot is wrong on bf16: CPU runs fp16/fp32 (TOOLCHAIN.md)
DTYPES = [torch.float16, torch.float32] if DEVICE == "cpu" else [torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _qkv(b, hq, hkv, sq, skv, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda h, s: torch.randn(b, h, s, d, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    return make(hq, sq), make(hkv, skv), make(hkv, skv)


def _mask_from(keep: torch.Tensor, mask_dtype: torch.dtype, hidden: float = float("-inf")):
    """`keep` (bool, True = keep) on DEVICE as a mask of `mask_dtype`: itself, or additive
    with `hidden` where it is False."""
    keep = keep.to(DEVICE)
    if mask_dtype == torch.bool:
        return keep
    return torch.zeros(keep.shape, device=DEVICE).masked_fill(~keep, hidden).to(mask_dtype)


def _assert_masked_bf16_matches_reference(q, k, v, mask, lse_tol: float) -> None:
    """kernel_attention (no causal mask, lse) of bf16 q, k, v beside `mask` against the
    reference ops."""
    d = q.shape[-1]
    out, lse, _ = kernel_attention(q, k, v, None, d**-0.5, "none", "bhsd", True, "none", mask)
    out_ref, lse_ref = ref.attention(q, k, v, mask, d**-0.5, "none", True)
    torch.testing.assert_close(out, out_ref, atol=TOL[torch.bfloat16], rtol=TOL[torch.bfloat16])
    torch.testing.assert_close(lse, lse_ref, atol=lse_tol, rtol=lse_tol)


@pytest.fixture(params=["pointer", "tma"])
def loads(request, monkeypatch):
    """Run the prefill kernel with pointer loads and with TMA descriptors (both run in
    the interpreter; the runtime picks by head dim and query length, TMA when the strides
    allow)."""
    chosen = kernels.prefill_config
    monkeypatch.setattr(
        kernels,
        "prefill_config",
        lambda d, sq, mask_bytes=0: {**chosen(d, sq, mask_bytes), "loads": request.param},
    )
    return request.param


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize(
    "hq,hkv,sq,skv",
    [(2, 2, 7, 7), (4, 1, 5, 19), (2, 2, 19, 5), (2, 2, 67, 45), (2, 1, 70, 33), (1, 1, 33, 90)],
)
def test_attention_matches_reference(dtype, causal, hq, hkv, sq, skv, loads):
    if loads == "tma" and uses_decode(sq, hq, hkv):
        pytest.skip("the decode path has no TMA variant")
    q, k, v = _qkv(1, hq, hkv, sq, skv, 16, dtype)
    out, lse, _ = kernel_attention(q, k, v, None, 0.2, causal, "bhsd", True, "none")
    out_ref, lse_ref = ref.attention(q, k, v, None, 0.2, causal, True)
    tol = TOL[dtype]
    torch.testing.assert_close(out, out_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)


def _layout_reference(q, k, v, causal):
    out, _ = ref.attention(q, k, v, None, 0.25, causal, False)
    b, h, sq, dv = out.shape
    return out.transpose(1, 2).reshape(b * sq, h * dv)


@pytest.mark.parametrize(
    "scheme", ["static", "static div", "per_token", "per_token in_dtype", "nvfp4"]
)
@pytest.mark.parametrize("hq,hkv,sq,skv", [(4, 2, 3, 37), (2, 2, 70, 33)])  # decode, prefill
def test_epilogues_match_unfused_quant(scheme, hq, hkv, sq, skv, loads):
    if scheme.startswith("per_token") and not uses_decode(sq, hq, hkv):
        pytest.skip("per-token needs the decode kernel (tested to refuse below)")
    q, k, v = _qkv(2, hq, hkv, sq, skv, 32, torch.float16)
    layout = _layout_reference(q, k, v, "bottom_right")
    scale = {"static": torch.tensor([0.01]), "static div": torch.tensor([0.01]),
             "per_token": None, "per_token in_dtype": None,
             "nvfp4": (448 * 6 / layout.float().abs().amax()).reshape(1)}[scheme]  # fmt: skip
    scale = scale.to(DEVICE) if scale is not None else None
    got, _, scales = kernel_attention(q, k, v, scale, 0.25, "bottom_right", "bs_hd", False, scheme)
    if scheme == "per_token in_dtype":  # each scale rounded to the output's dtype
        assert torch.equal(scales.half().float(), scales)
    q_ref, scales_ref = reference_quant(scheme, layout, scale)
    rows, n = layout.shape
    if scheme != "nvfp4":
        assert got.shape == (2, sq, hq * 32)
        got = got.reshape(rows, n)
    if scheme.startswith("per_token"):
        assert scales.shape == (2, sq, 1)
        scales = scales.reshape(rows, 1)
    assert got.dtype == q_ref.dtype and got.shape == q_ref.shape
    assert_quant_close(scheme, dequant(scheme, got, scales, scale, rows, n),
                       dequant(scheme, q_ref, scales_ref, scale, rows, n))  # fmt: skip


# divided by the reciprocal pair where its check passes (0.01, 3.0), else through div_by
# (1e-35: beyond the pair's range; 0.0071062189526855946: the pair misses a bf16 quotient,
# so an fp16 one)
@pytest.mark.parametrize(("scale", "dtype"), [
    (0.01, torch.float16), (3.0, torch.float16), (1e-35, torch.float16),
    (0.0071062189526855946, torch.float16),
    (0.01, torch.bfloat16), (0.0071062189526855946, torch.bfloat16),
])  # fmt: skip
def test_static_div_epilogue_divides_the_output_as_the_graph_does(scale, dtype, loads):
    """`static div` quantizes the kernel's own output byte for byte as the graph's
    division, clamp and cast do (the GPU's Gluon kernel: test_attention_gluon.py)."""
    q, k, v = _qkv(2, 2, 2, 70, 33, 32, dtype)
    s = torch.tensor([scale], device=DEVICE)
    o, _, _ = kernel_attention(q, k, v, None, 0.25, "bottom_right", "bs_hd", False, "none")
    got, _, _ = kernel_attention(q, k, v, s, 0.25, "bottom_right", "bs_hd", False, "static div")
    want = (o.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.parametrize("scheme", ["none", "static", "per_token", "nvfp4"])
@pytest.mark.parametrize("d,dv", [(48, 48), (80, 112)])  # tiles of 64; of 128 and 128
@pytest.mark.parametrize("hq,hkv,sq,skv", [(4, 2, 3, 37), (2, 2, 70, 33)])  # decode, prefill
def test_head_dims_short_of_a_power_of_two(scheme, d, dv, hq, hkv, sq, skv, loads, monkeypatch):
    """Head dims padded to their tiles' power of two: the padded columns add nothing to
    the scores and are never stored (heads sit side by side in [B, Sq, Hq*Dv], and the
    nvfp4 scales start as garbage, so a stray or missing store shows)."""
    if loads == "tma" and uses_decode(sq, hq, hkv):
        pytest.skip("the decode path has no TMA variant")
    if scheme == "per_token" and not uses_decode(sq, hq, hkv):
        pytest.skip("per-token needs the decode kernel")
    monkeypatch.setattr(kernels, "alloc_nvfp4_scales", garbage_nvfp4_scales)
    q, k, _ = _qkv(2, hq, hkv, sq, skv, d, torch.float16)
    v = torch.randn(2, hkv, skv, dv, generator=torch.Generator().manual_seed(1))
    v = v.to(torch.float16).to(DEVICE)
    out_ref, lse_ref = ref.attention(q, k, v, None, d**-0.5, "bottom_right", True)
    layout = out_ref.transpose(1, 2).reshape(2 * sq, hq * dv)
    if scheme == "none":
        out, lse, _ = kernel_attention(q, k, v, None, d**-0.5, "bottom_right", "bs_hd", True,
                                       "none")  # fmt: skip
        tol = TOL[torch.float16]
        torch.testing.assert_close(out.reshape(layout.shape), layout, atol=tol, rtol=tol)
        torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)
        return
    scale = {"static": torch.tensor([0.01]), "per_token": None,
             "nvfp4": (448 * 6 / layout.float().abs().amax()).reshape(1)}[scheme]  # fmt: skip
    scale = scale.to(DEVICE) if scale is not None else None
    got, _, scales = kernel_attention(q, k, v, scale, d**-0.5, "bottom_right", "bs_hd", False,
                                      scheme)  # fmt: skip
    q_ref, scales_ref = reference_quant(scheme, layout, scale)
    rows, n = layout.shape
    got = got.reshape(rows, -1)
    scales = scales.reshape(rows, 1) if scheme == "per_token" else scales
    assert_quant_close(scheme, dequant(scheme, got, scales, scale, rows, n),
                       dequant(scheme, q_ref, scales_ref, scale, rows, n))  # fmt: skip


def test_nvfp4_epilogue_writes_every_scale_of_an_unpadded_output(monkeypatch):
    """[B*Sq, Hq*Dv] = [128, 64]: no padding, so the scale buffer starts as garbage (it is
    not zero-filled) and the kernel must write every byte."""
    monkeypatch.setattr(kernels, "alloc_nvfp4_scales", garbage_nvfp4_scales)
    q, k, v = _qkv(2, 2, 2, 64, 64, 32, torch.float16)
    layout = _layout_reference(q, k, v, "top_left")
    scale = (448 * 6 / layout.float().abs().amax()).reshape(1).to(DEVICE)
    got, _, scales = kernel_attention(q, k, v, scale, 0.25, "top_left", "bs_hd", False, "nvfp4")
    q_ref, scales_ref = reference_quant("nvfp4", layout, scale)
    assert_quant_close("nvfp4", dequant("nvfp4", got, scales, scale, 128, 64),
                       dequant("nvfp4", q_ref, scales_ref, scale, 128, 64))  # fmt: skip


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("d", [64, 96, 128, 192, 256])
@pytest.mark.parametrize("scheme", ["static", "static div", "nvfp4"])
@pytest.mark.parametrize("mask_dtype", [None, torch.bool, torch.bfloat16])
def test_gpu_prefill_epilogues_every_head_dim(d, scheme, mask_dtype):
    """The production tiles with a quant epilogue at every head dim, causal or beside a
    4-D mask's tiles (the largest tiles' registers and shared memory)."""
    q, k, v = _qkv(2, 4, 2, 300, 300, d, torch.float16)
    mask, causal = None, "top_left"
    if mask_dtype is not None:
        keep = torch.rand(2, 1, 300, 300, generator=torch.Generator().manual_seed(d)) > 0.3
        mask, causal = keep.to(DEVICE), "none"
        if mask_dtype != torch.bool:
            mask = torch.zeros(keep.shape, device=DEVICE).masked_fill(~mask, float("-inf"))
            mask = mask.to(mask_dtype)
    out, _ = ref.attention(q, k, v, mask, d**-0.5, causal, False)
    layout = out.transpose(1, 2).reshape(2 * 300, 4 * d)
    scale = {"static": torch.tensor([0.01]), "static div": torch.tensor([0.01]),
             "nvfp4": (448 * 6 / layout.float().abs().amax()).reshape(1)}[scheme]  # fmt: skip
    scale = scale.to(DEVICE)
    got, _, scales = kernel_attention(q, k, v, scale, d**-0.5, causal, "bs_hd", False, scheme,
                                      mask)  # fmt: skip
    q_ref, scales_ref = reference_quant(scheme, layout, scale)
    rows, n = layout.shape
    got = got.reshape(rows, -1)
    assert_quant_close(scheme, dequant(scheme, got, scales, scale, rows, n),
                       dequant(scheme, q_ref, scales_ref, scale, rows, n))  # fmt: skip


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("d", [128, 256])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_gpu_model_layout_gqa_with_a_4d_mask(d, mask_dtype):
    """q, k, v as a model's projections leave them ([B, S, H, D] memory), GQA 16/8, a
    causal + padding mask of a right-padded batch (bool, or fp32 with -inf), 2048 rows:
    the production tiles against the reference."""
    g = torch.Generator().manual_seed(d)
    q, k, v = (torch.randn(2, 2048, h, d, generator=g).to(torch.bfloat16).to(DEVICE)
               .transpose(1, 2) for h in (16, 8, 8))  # fmt: skip
    keep = torch.ones(2048, 2048, dtype=torch.bool).tril().expand(2, 1, 2048, 2048).clone()
    keep[1, ..., 1800:] = False
    mask = keep.to(DEVICE)
    if mask_dtype != torch.bool:
        mask = torch.zeros(keep.shape, device=DEVICE).masked_fill(~mask, float("-inf"))
    out, _, _ = kernel_attention(q, k, v, None, d**-0.5, "none", "bhsd", False, "none", mask)
    out_ref, _ = ref.attention(q, k, v, mask, d**-0.5, "none", False)
    torch.testing.assert_close(out, out_ref, atol=TOL[torch.bfloat16], rtol=TOL[torch.bfloat16])


def test_bhsd_layout_and_static_epilogue():
    q, k, v = _qkv(2, 2, 2, 9, 9, 16, torch.float16)
    scale = torch.tensor([0.01], device=DEVICE)
    out, _, _ = kernel_attention(q, k, v, None, 0.25, "top_left", "bhsd", False, "none")
    ref_out, _ = ref.attention(q, k, v, None, 0.25, "top_left", False)
    torch.testing.assert_close(out, ref_out, atol=2e-3, rtol=2e-3)
    q8, _, _ = kernel_attention(q, k, v, scale, 0.25, "top_left", "bhsd", False, "static")
    assert q8.shape == ref_out.shape
    assert_fp8_close(q8, ref.static_fp8_quant(ref_out, scale), scale)


@pytest.mark.parametrize(
    "epilogue,layout",  # per-token and nvfp4 quantize [B*Sq, Hq*Dv] rows: bs_hd only
    [(e, "bs_hd") for e in ("none", "static", "per_token", "nvfp4")]
    + [("none", "bhsd"), ("static", "bhsd")],
)
@pytest.mark.skipif(DEVICE == "cuda", reason="fp32 kernels run only in the interpreter")
def test_fp32_on_the_gpu_runs_the_reference_laid_out_as_the_kernels(monkeypatch, epilogue, layout):
    """fp32 on the GPU runs the reference ops (exact; the kernels' dots would be tf32):
    the same shapes, strides, dtypes and values as the kernels (here the interpreter's
    exact fp32), with a bool mask whose hidden keys take a finite bias, and lse."""
    q, k, v = _qkv(2, 4, 2, 1, 40, 32, torch.float32)  # decode: per-token may end it
    assert not kernels.runs_reference(q)  # what follows compares with the kernels
    keep = torch.ones(2, 1, 1, 40, dtype=torch.bool)
    keep[1, ..., :7] = False
    scale = {"none": None, "static": torch.tensor([0.01]), "per_token": None,
             "nvfp4": torch.tensor([50.0])}[epilogue]  # fmt: skip
    scale = None if scale is None else scale.to(DEVICE)
    args = (q, k, v, scale, 0.3, "none", layout, True, epilogue, keep.to(DEVICE), None, -5.0)
    kernel_outs = kernel_attention(*args)
    monkeypatch.setattr(kernels, "runs_reference", lambda q: True)
    reference_outs = kernel_attention(*args)
    for got, expected in zip(reference_outs, kernel_outs, strict=True):
        assert (got.shape, got.stride(), got.dtype) == (expected.shape, expected.stride(),
                                                        expected.dtype)  # fmt: skip
    out, lse, scales = reference_outs
    torch.testing.assert_close(lse, kernel_outs[1], atol=1e-5, rtol=1e-5)
    if epilogue == "none":
        torch.testing.assert_close(out, kernel_outs[0], atol=1e-5, rtol=1e-5)
    else:
        rows, n = 2, 4 * 32
        assert_quant_close(epilogue, dequant(epilogue, out.reshape(rows, -1), scales, scale,
                                             rows, n),
                           dequant(epilogue, kernel_outs[0].reshape(rows, -1), kernel_outs[2],
                                   scale, rows, n))  # fmt: skip


@pytest.mark.cuda
@pytest.mark.parametrize("sq", [1, 1100])
def test_gpu_fp32_attention_is_exact(sq, monkeypatch):
    """fp32 on the GPU (head dim 128, prefill and decode) takes the reference path (the
    kernels would round their dots to tf32, their fp32 tiles overflow shared memory),
    and that is fp32-accurate: against attention computed in float64."""
    q, k, v = _qkv(1, 8, 2, sq, 1100, 128, torch.float32)
    calls = []
    reference = kernels._reference
    monkeypatch.setattr(kernels, "_reference", lambda *a: calls.append(1) or reference(*a))
    out, lse, _ = kernel_attention(q, k, v, None, 0.09, "bottom_right", "bhsd", True, "none")
    assert calls == [1]
    kd, vd = (t.double().repeat_interleave(4, dim=1) for t in (k, v))
    scores = q.double() @ kd.transpose(-1, -2) * 0.09
    # bottom-right causal: query i sees keys up to i + (1100 - sq)
    hidden = torch.ones(sq, 1100, dtype=torch.bool, device=DEVICE).triu(1 + 1100 - sq)
    scores = scores.masked_fill(hidden, float("-inf"))
    torch.testing.assert_close(out.double(), scores.softmax(-1) @ vd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1), atol=1e-5, rtol=1e-5)


def test_per_token_refuses_the_prefill_kernel():
    q, k, v = _qkv(1, 2, 2, 70, 70, 16, torch.float16)
    with pytest.raises(ValueError, match="per-token scale spans all heads"):
        kernel_attention(q, k, v, None, 0.25, "none", "bs_hd", False, "per_token")


def test_fully_masked_rows_are_zero_with_minus_inf_lse():
    q, k, v = _qkv(1, 1, 1, 6, 3, 16, torch.float32)  # bottom-right: queries 0-2 see nothing
    out, lse, _ = kernel_attention(q, k, v, None, 0.25, "bottom_right", "bhsd", True, "none")
    assert torch.all(out[0, 0, :3] == 0) and torch.all(lse[0, 0, :3] == float("-inf"))
    assert not out.isnan().any()


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((1, 3, 4, 16), (1, 2, 4, 16), (1, 2, 4, 16)), "heads"),
        (((1, 2, 4, 24), (1, 2, 4, 24), (1, 2, 4, 24)), "head dims"),
        (((1, 2, 4, 272), (1, 2, 4, 272), (1, 2, 4, 272)), "head dims"),
        (((1, 2, 4, 16), (1, 2, 4, 16), (1, 2, 4, 40)), "head dims"),
        (((2, 2, 4, 16), (1, 2, 4, 16), (1, 2, 4, 16)), "batch sizes"),
        (((1, 2, 4, 16), (1, 0, 4, 16), (1, 0, 4, 16)), "heads 2 / 0 / 0 mismatch"),
    ],
)
def test_bad_inputs(shapes, match):
    q, k, v = (torch.randn(s, device=DEVICE) for s in shapes)
    with pytest.raises(ValueError, match=match):
        kernel_attention(q, k, v, None, 1.0, "none", "bhsd", False, "none")


def test_a_scale_without_an_epilogue_is_refused():
    q, k, v = (torch.randn(1, 2, 4, 16, device=DEVICE) for _ in range(3))
    scale = torch.ones(1, device=DEVICE)
    with pytest.raises(ValueError, match="takes no scale"):
        kernel_attention(q, k, v, scale, 1.0, "none", "bhsd", False, "none")


def test_sources_name_what_they_fuse():
    assert "Fuses: attention + static fp8 quant." in attention_source("static")
    assert "Fuses: merge of split-KV attention states + nvfp4 quant." in attention_source("nvfp4")
    assert "TMA loads" in attention_source("none")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 80, 128, 256])
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize("hq,hkv,sq,skv", [(8, 8, 257, 257), (8, 1, 1, 1031), (8, 2, 7, 1031)])
def test_gpu_attention(dtype, d, causal, hq, hkv, sq, skv, loads):
    q, k, v = _qkv(2, hq, hkv, sq, skv, d, dtype)
    out, lse, _ = kernel_attention(q, k, v, None, d**-0.5, causal, "bhsd", True, "none")
    out_ref, lse_ref = ref.attention(q, k, v, None, d**-0.5, causal, True)
    torch.testing.assert_close(out, out_ref, atol=2e-2, rtol=1.6e-2)
    finite = lse_ref.isfinite()
    torch.testing.assert_close(lse[finite], lse_ref[finite], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("d,dv,batch_kv,seq_kv,block_n", [
    (128, 128, 512, 4096, 128), (64, 64, 512, 4096, 128), (256, 256, 512, 4096, 64),
    (128, 128, 264, 4096, 64), (128, 128, 512, 1024, 64),
])  # fmt: skip
def test_decode_wide_key_tiles_rule(monkeypatch, d, dv, batch_kv, seq_kv, block_n):
    """More than two (batch, kv head)s per SM over more than 1024 keys take 128-key tiles
    up to head dim 128 (K and V rows of 256); head dim 256 keeps 64-key ones."""
    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setattr(kernels, "DECODE_BLOCK_N", 64)  # the GPU's
    monkeypatch.setattr(kernels, "sm_count", lambda device: 132)
    monkeypatch.setattr(kernels, "shared_memory_limit", lambda device: 232448)
    assert kernels.split_config(batch_kv, seq_kv, (d, dv), "cuda")["BLOCK_N"] == block_n


@pytest.mark.parametrize("d,batch_kv,block_m,mask_bytes,stages", [
    (256, 136, 64, 0, 3), (256, 136, 64, 1, 2), (256, 136, 64, 4, 2), (256, 136, 32, 4, 3),
    (128, 272, 64, 1, 3), (128, 272, 64, 2, 2), (128, 272, 64, 4, 2), (128, 136, 64, 4, 3),
])  # fmt: skip
def test_decode_stages_fit_in_shared_memory(monkeypatch, d, batch_kv, block_m, mask_bytes, stages):
    """Long slices take 3 stages unless the K and V tiles, the query rows and the mask
    tiles would pass the GPU's shared memory (H200: 227 KB); the configs that ran out
    there (64 rows with a 4-D mask at head dim 256, or at 128 with 128-key tiles) take 2."""
    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setattr(kernels, "DECODE_BLOCK_N", 64)
    monkeypatch.setattr(kernels, "sm_count", lambda device: 132)
    monkeypatch.setattr(kernels, "shared_memory_limit", lambda device: 232448)
    config = kernels.split_config(batch_kv, 2048, (d, d), "cuda", block_m, mask_bytes)
    assert config["num_stages"] == stages
    used = kernels.shared_bytes(block_m, config["BLOCK_N"], (d, d), stages, mask_bytes)
    assert used <= 232448


@pytest.mark.parametrize("d", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("seq_q", [300, 2053])
@pytest.mark.parametrize("mask_bytes", [0, 1, 2, 4])
def test_prefill_configs_fit_any_value_head_dim(monkeypatch, d, seq_q, mask_bytes):
    """The tuned prefill configs (value head dim = head dim) keep their stages; wider value
    rows keep the tiles (the mask summary's) but drop the register cap and the stages that
    would pass shared memory (H200: head dim 128, value 256, 3 stages asked 321 KB)."""
    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setattr(kernels, "shared_memory_limit", lambda device: 232448)
    tuned = kernels.prefill_config(d, seq_q, mask_bytes)
    assert kernels.wide_values_config(tuned, d, d, mask_bytes, "cuda") == tuned
    for dv in (v for v in (16, 64, 128, 256) if v != d):
        config = kernels.wide_values_config(tuned, d, dv, mask_bytes, "cuda")
        tiles = ("BLOCK_M", "BLOCK_N", "num_warps", "loads")
        assert [config[key] for key in tiles] == [tuned[key] for key in tiles]
        assert ("maxnreg" in config) == ("maxnreg" in tuned and dv <= d)
        block = (config["BLOCK_M"], config["BLOCK_N"])
        assert kernels.shared_bytes(*block, (d, dv), config["num_stages"], mask_bytes) <= 232448
        assert config["num_stages"] == tuned["num_stages"] or dv > d


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("d", [128, 256])
def test_gpu_decode_of_many_rows_over_long_keys(d):
    """Past two (batch, kv head)s per SM over more than 1024 keys (the rule for wide key
    tiles): 128-key tiles at head dim 128, 64-key ones at 256, against the reference."""
    q, k, v = _qkv(40, 32, 8, 1, 1100, d, torch.bfloat16)  # 320 (batch, kv head)s
    out, lse, _ = kernel_attention(q, k, v, None, d**-0.5, "none", "bhsd", True, "none")
    out_ref, lse_ref = ref.attention(q, k, v, None, d**-0.5, "none", True)
    torch.testing.assert_close(out, out_ref, atol=TOL[torch.bfloat16], rtol=TOL[torch.bfloat16])
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("d,batch", [(128, 34), (256, 17)])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.bfloat16, torch.float32])
def test_gpu_decode_of_64_rows_with_a_4d_mask(d, batch, mask_dtype):
    """64 query rows per (batch, kv head) (GQA 8, 8 tokens) beside a 4-D mask over one long
    slice: 3 stages of these tiles would pass shared memory (they ran out of resources
    before split_config counted them), against the reference."""
    q, k, v = _qkv(batch, 64, 8, 8, 2048, d, torch.bfloat16)
    keep = torch.rand(batch, 1, 8, 2048, generator=torch.Generator().manual_seed(d)) > 0.3
    keep[..., 0] = True
    mask = _mask_from(keep, mask_dtype)
    _assert_masked_bf16_matches_reference(q, k, v, mask, lse_tol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("d,dv", [(16, 256), (64, 256), (128, 256), (256, 64), (192, 128)])
@pytest.mark.parametrize("seq", [300, 2053])
def test_gpu_prefill_of_value_rows_wider_than_the_keys(d, dv, seq):
    """Value head dims other than the keys' with the production tiles (ptxas failed on
    the register cap of head dim 64's long-sequence tiles and shared memory ran out at
    128 / 256 before), with the static epilogue, against the reference."""
    q, k, _ = _qkv(2, 4, 2, seq, seq, d, torch.bfloat16)
    v = torch.randn(2, 2, seq, dv, device=DEVICE, dtype=torch.bfloat16)
    out, lse, _ = kernel_attention(q, k, v, None, d**-0.5, "top_left", "bhsd", True, "none")
    out_ref, lse_ref = ref.attention(q, k, v, None, d**-0.5, "top_left", True)
    torch.testing.assert_close(out, out_ref, atol=TOL[torch.bfloat16], rtol=TOL[torch.bfloat16])
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)
    scale = torch.tensor([0.05], device=DEVICE)
    q8 = kernel_attention(q, k, v, scale, d**-0.5, "top_left", "bs_hd", False, "static")[0]
    expected = ref.static_fp8_quant(out_ref.transpose(1, 2).reshape(2, seq, -1), scale)
    assert_fp8_close(q8, expected, scale)


def test_heads_per_sweep_rule(monkeypatch):
    """Uneven blocks (causal, masked) of small head dims launched in a few waves interleave
    as many heads as keep their keys and values in SWEEP_KV_BYTES (GQA heads share
    theirs), at least one, at most all; even ones, larger head dims and launches of many
    waves go one head at a time."""
    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setattr(kernels, "sm_count", lambda device: 100)

    def sweep(b, hq, hkv, s, d, uneven=True, programs=1000, per_sm=1):
        q = torch.empty(b, hq, s, d, dtype=torch.bfloat16, device="meta")
        kv = torch.empty(b, hkv, s, d, dtype=torch.bfloat16, device="meta")
        return kernels.heads_per_sweep(q, kv, kv, uneven, programs, per_sm)

    budget, max_waves = kernels.SWEEP_KV_BYTES, kernels.SWEEP_MAX_WAVES
    assert sweep(8, 16, 16, 1024, 64, uneven=False) == 1
    assert sweep(8, 16, 16, 1024, 64) == budget // (1024 * 256)
    assert sweep(8, 16, 4, 4096, 64) == 4 * budget // (4096 * 256)
    assert sweep(1, 2, 2, 64, 64) == 2
    assert sweep(1, 32, 32, 1 << 20, 64) == 1
    assert sweep(8, 16, 16, 1024, 128) == 1  # past SWEEP_MAX_HEAD_DIM
    assert sweep(8, 16, 16, 1024, 64, programs=max_waves * 100 * 4, per_sm=4) > 1
    assert sweep(8, 16, 16, 1024, 64, programs=max_waves * 100 * 4 + 1, per_sm=4) == 1


def _forced_sweeps(monkeypatch, heads: int) -> None:
    monkeypatch.setattr(kernels, "heads_per_sweep", lambda *args: heads)


@pytest.mark.parametrize("heads", [1, 2, 4])  # 6 (batch, head)s: none; 2; 4 then 2
@pytest.mark.parametrize("masking", ["top_left", "bottom_right", "mask"])
def test_sweeps_over_heads_visit_every_block_once(heads, masking, monkeypatch):
    """Programs ordered in sweeps over several heads (a ragged last sweep, a ragged last
    block, GQA, a mask's summary indexed by block) compute what the reference does."""
    _forced_sweeps(monkeypatch, heads)
    q, k, v = _qkv(2, 3, 1, 60, 65, 16, torch.float16)  # 4 blocks of 16 rows on the CPU
    mask = _causal_padded_keep(60, 65).to(DEVICE) if masking == "mask" else None
    causal = "none" if mask is not None else masking
    out, lse, _ = kernel_attention(q, k, v, None, 0.3, causal, "bhsd", True, "none", mask)
    out_ref, lse_ref = ref.attention(q, k, v, mask, 0.3, causal, True)
    torch.testing.assert_close(out, out_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("heads", [1, 3])
def test_gpu_sweeps_over_heads_with_production_tiles(d, heads, monkeypatch):
    _forced_sweeps(monkeypatch, heads)
    q, k, v = _qkv(2, 5, 5, 1031, 1031, d, torch.bfloat16)
    out, _, _ = kernel_attention(q, k, v, None, d**-0.5, "top_left", "bhsd", False, "none")
    out_ref, _ = ref.attention(q, k, v, None, d**-0.5, "top_left", False)
    torch.testing.assert_close(out, out_ref, atol=2e-2, rtol=1.6e-2)


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
def test_gpu_decode_past_65535_batch_heads():
    """A batch whose (batch, kv head)s and (batch, mask head)s pass the 65535 a grid's y
    dimension holds: the decode and the mask summary run their 1-D grids, same results
    as the reference."""
    b, hq, hkv, skv = 16400, 8, 4, 40  # 65600 (batch, kv head)s, 131200 mask rows
    q, k, v = _qkv(b, hq, hkv, 1, skv, 16, torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    keep = (torch.rand(b, hq, 1, skv, generator=g) > 0.3).to(DEVICE)
    summary = torch.ops.irfuse.kernel_attention_mask_summary(q, k, keep)
    out, lse, _ = kernel_attention(q, k, v, None, 0.25, "none", "bhsd", True, "none", keep, summary)
    out_ref, lse_ref = ref.attention(q, k, v, keep, 0.25, "none", True)
    torch.testing.assert_close(out, out_ref, atol=TOL[torch.bfloat16], rtol=TOL[torch.bfloat16])
    torch.testing.assert_close(lse, lse_ref, atol=1e-2, rtol=1e-2)


def test_grids_past_cuda_limits_get_a_clear_error(monkeypatch):
    """A 1-D grid past CUDA's limit (lowered to 3 programs here) is refused with the
    reason before any launch."""
    monkeypatch.setattr(kernels, "MAX_GRID_X", 3)
    q, k, v = _qkv(2, 4, 2, 1, 40, 16, torch.float16)  # decode: 2 x 2 (batch, kv head)s
    with pytest.raises(ValueError, match="split-KV decode: .* programs > 3"):
        kernel_attention(q, k, v, None, 0.25, "none", "bhsd", False, "none")
    mask = torch.ones(2, 4, 1, 40, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="mask summary: .* programs > 3"):
        torch.ops.irfuse.kernel_attention_mask_summary(q, k, mask)


@pytest.mark.parametrize("hkv", [0, 3])
def test_mask_summary_checks_the_heads(hkv):
    """k with no heads, or heads that do not divide q's, get a clear error (no heads was
    a ZeroDivisionError, 3 for q's 2 was summarised)."""
    q, k, _ = _qkv(1, 2, max(hkv, 1), 4, 8, 16, torch.float16)
    k = k[:, :0] if hkv == 0 else k
    mask = torch.ones(1, 1, 4, 8, dtype=torch.bool, device=DEVICE)
    with pytest.raises(ValueError, match="batch or heads mismatch"):
        torch.ops.irfuse.kernel_attention_mask_summary(q, k, mask)


def test_prefill_past_the_grid_rows_takes_the_one_dimensional_grid(monkeypatch):
    """More (batch, head)s than a grid has rows (the limit lowered to 3 here): the prefill
    kernel runs its 1-D grid, same results."""
    monkeypatch.setattr(kernels, "MAX_GRID_YZ", 3)
    grids = []
    kernel = kernels.prefill_kernel

    class Recorded:
        def __init__(self, launcher):
            self.launcher = launcher

        def __getitem__(self, grid):
            grids.append(grid)
            return self.launcher[grid]

    monkeypatch.setattr(kernels, "prefill_kernel", lambda *key: Recorded(kernel(*key)))
    q, k, v = _qkv(2, 2, 2, 70, 70, 16, torch.float16)
    assert not uses_decode(70, 2, 2)
    n_blocks = -(-70 // kernels.prefill_config(16, 70)["BLOCK_M"])
    out, _, _ = kernel_attention(q, k, v, None, 0.3, "none", "bhsd", False, "none")
    expected, _ = ref.attention(q, k, v, None, 0.3, "none", False)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)
    assert grids == [(n_blocks * 4,)]


def test_unaligned_strides_fall_back_to_pointer_loads():
    q, k, v = _qkv(1, 2, 2, 70, 70, 16, torch.float16)
    assert kernels.tma_ok(q, k, v)
    k_odd = torch.randn(1, 2, 70, 17, device=DEVICE).to(torch.float16)[..., :16]  # row: 34 B
    assert not kernels.tma_ok(q, k_odd, v)
    out, _, _ = kernel_attention(q, k_odd, v, None, 0.25, "none", "bhsd", False, "none")
    expected, _ = ref.attention(q, k_odd, v, None, 0.25, "none", False)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)


def test_model_layout_inputs(loads):
    """q, k, v as models pass them: [B, S, H, D] transposed to [B, H, S, D] (the head
    stride below the sequence stride), GQA, a ragged last tile; TMA and pointers agree
    with the reference."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 37, h, 16, generator=g).to(torch.float16).to(DEVICE)
               .transpose(1, 2) for h in (4, 2, 2))  # fmt: skip
    assert kernels.tma_ok(q, k, v)
    out, _, _ = kernel_attention(q, k, v, None, 0.25, "top_left", "bhsd", False, "none")
    expected, _ = ref.attention(q, k, v, None, 0.25, "top_left", False)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)


def test_wide_offsets(loads, monkeypatch):
    """Sequences whose row offsets pass 2^31 elements take 64-bit offsets (forced here by a
    lower threshold): same results."""
    assert kernels.wide_offsets((131072, 16384)) and not kernels.wide_offsets((4096, 128))
    monkeypatch.setattr(kernels, "INT32_OFFSETS", 1)
    q, k, v = _qkv(1, 2, 1, 37, 45, 16, torch.float16)
    out, _, _ = kernel_attention(q, k, v, None, 0.25, "bottom_right", "bs_hd", False, "none")
    expected, _ = ref.attention(q, k, v, None, 0.25, "bottom_right", False)
    torch.testing.assert_close(out, expected.transpose(1, 2).reshape(1, 37, 32), atol=2e-3,
                               rtol=2e-3)  # fmt: skip


def _decode_wide(k: torch.Tensor, monkeypatch) -> bool:
    """Whether the decode of meta tensors takes 64-bit offsets (its configs as for the
    interpreter: a GPU's would ask the meta device for its SMs)."""
    q = torch.empty(1, 4, 1, 16, device="meta", dtype=torch.float16)
    out = q.new_empty(1, 4, 1, 16)
    masking = kernels._mask_args(None, q, k)
    with monkeypatch.context() as patch:
        patch.setattr(kernels, "INTERPRET", True)
        split = kernels.decode_launches(q, k, k, masking, None, None, 0.25, "none", "none",
                                        out, q.new_empty(0), q.new_empty(0))[0]  # fmt: skip
    return split.args["WIDE_OFFSETS"]


def test_decode_wide_offsets(loads, monkeypatch):
    """The split-KV decode takes 64-bit key offsets where key * stride reaches 2^31
    elements (a KV cache laid out [B, S, H, D] with key stride 2^20, past 2048 keys, or a
    tile's margin short of them; it read 2^31 elements before the key), and the same
    results with them."""
    cache = torch.empty(1, 2100, 2**16, 16, device="meta", dtype=torch.float16)
    keys = cache.transpose(1, 2)[:, :1]
    assert _decode_wide(keys, monkeypatch) and not _decode_wide(keys[:, :, :1000], monkeypatch)
    monkeypatch.setattr(kernels, "INT32_OFFSETS", 1)
    q, k, v = _qkv(2, 4, 2, 1, 45, 16, torch.float16)
    out, lse, _ = kernel_attention(q, k, v, None, 0.25, "none", "bhsd", True, "none")
    expected, lse_ref = ref.attention(q, k, v, None, 0.25, "none", True)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse, lse_ref, atol=1e-4, rtol=1e-4)


def test_tma_check_keeps_no_tensor_alive():
    """tma_ok runs per call: it must not cache (a cache would hold every q/k/v)."""
    q = torch.randn(1, 1, 16, 16, device=DEVICE)
    ref_q = weakref.ref(q)
    assert kernels.tma_ok(q)
    del q
    gc.collect()
    assert ref_q() is None


def test_broadcast_heads_fall_back_to_pointer_loads(loads):
    """K/V heads expanded from one (stride 0) have no TMA descriptor: pointer loads."""
    q, k, v = _qkv(1, 2, 2, 70, 70, 16, torch.float16)
    k1, v1 = k[:, :1].expand(1, 2, 70, 16), v[:, :1].expand(1, 2, 70, 16)
    assert not kernels.tma_ok(q, k1, v1)
    out, _, _ = kernel_attention(q, k1, v1, None, 0.25, "none", "bhsd", False, "none")
    expected, _ = ref.attention(q, k1, v1, None, 0.25, "none", False)
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("sq", [1, 70])  # decode, prefill
def test_no_keys_gives_zeros_and_minus_inf_lse(sq):
    q, k, v = _qkv(1, 2, 2, sq, 0, 16, torch.float16)
    out, lse, _ = kernel_attention(q, k, v, None, 0.25, "none", "bhsd", True, "none")
    assert torch.all(out == 0) and torch.all(lse == float("-inf"))
    out_ref, lse_ref = ref.attention(q, k, v, None, 0.25, "none", True)
    assert torch.equal(out, out_ref) and torch.equal(lse, lse_ref)


def _mask(kind: str, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    """A bool (True = keep) or additive mask; additive uses -inf and bf16's dtype-min
    bias, and one query row is masked everywhere (0 / -inf with bool and -inf; the mean
    of v with a finite bias, as in the reference)."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape, generator=g) > 0.3
    keep[..., 0, :] = False
    if kind == "bool":
        return keep.to(DEVICE)
    bias = torch.randn(shape, generator=g)
    low = float("-inf") if kind == "additive -inf" else torch.finfo(torch.bfloat16).min
    return torch.where(keep, bias, low).to(DEVICE)


@pytest.mark.parametrize("kind", ["bool", "bool hidden", "additive -inf", "additive min"])
@pytest.mark.parametrize(
    "hq,hkv,sq,skv,mask_shape",
    [
        (2, 2, 37, 45, (2, 2, 37, 45)),  # prefill, a full mask
        (4, 2, 33, 21, (2, 1, 33, 21)),  # prefill, broadcast over heads
        (2, 1, 19, 40, (19, 40)),  # prefill, one mask for every batch and head
        (4, 2, 70, 40, (2, 1, 1, 40)),  # prefill, a padding mask (keys only)
        (4, 2, 3, 37, (2, 1, 1, 37)),  # decode, a padding mask over the keys
    ],
)
def test_explicit_masks_match_reference(kind, hq, hkv, sq, skv, mask_shape, loads):
    if loads == "tma" and uses_decode(sq, hq, hkv):
        pytest.skip("the decode path has no TMA variant")
    q, k, v = _qkv(2, hq, hkv, sq, skv, 16, torch.float16)
    mask = _mask("bool" if kind == "bool hidden" else kind, mask_shape)
    # a bool mask whose hidden keys take bf16's min as their bias (as a compiled model's do)
    hidden = torch.finfo(torch.bfloat16).min if kind == "bool hidden" else None
    out, lse, _ = kernel_attention(
        q, k, v, None, 0.3, "none", "bhsd", True, "none", mask, None, hidden
    )
    bias = mask if hidden is None else torch.where(mask, 0.0, hidden)
    out_ref, lse_ref = ref.attention(q, k, v, bias, 0.3, "none", True)
    if kind in ("additive min", "bool hidden"):  # query 0 sees only dtype-min biases:
        # softmax averages v
        mean_v = v.float().mean(dim=2).repeat_interleave(hq // hkv, dim=1)
        torch.testing.assert_close(out_ref[:, :, 0].float(), mean_v, atol=1e-3, rtol=1e-3)
        # its lse, -3.4e38, is past fp32 in base 2: the kernel clamps it (at -2.4e38)
        huge = lse_ref < -1e38
        assert bool(huge[..., 0].all()) and bool((lse[huge] < -2e38).all())
        lse, lse_ref = lse[~huge], lse_ref[~huge]
    torch.testing.assert_close(out, out_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)


def _causal_padded_keep(sq: int, skv: int) -> torch.Tensor:
    """[2, 1, sq, skv] bool: causal (bottom-right); batch 1 with its first 20 keys padded
    away; batch 0's last rows without key 24 (a hole in a run of full tiles)."""
    keep = torch.ones(2, 1, sq, skv, dtype=torch.bool).tril(diagonal=skv - sq)
    keep[1, :, :, :20] = False
    keep[0, :, 48:, 24] = False
    return keep


def test_mask_tiles_skip_hidden_keys_and_leave_full_tiles_unmasked():
    """The mask summary per block of 16 query rows, in 16-key tiles: (first tile seen,
    full run start, full run end, last tile seen + 1); a block that sees nothing visits
    nothing; with no full tile the run is empty at the end; of equal runs the first."""
    q, k, _ = _qkv(2, 2, 2, 64, 64, 16, torch.float16)
    keep = _causal_padded_keep(64, 64)
    expected = torch.tensor(
        [[(0, 1, 1, 1), (0, 0, 1, 2), (0, 0, 2, 3), (0, 0, 1, 4)],
         [(0, 0, 0, 0), (1, 2, 2, 2), (1, 3, 3, 3), (1, 2, 3, 4)]], dtype=torch.int32,
    )  # fmt: skip
    additive = torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))
    nonzero_bias = additive.clone()
    nonzero_bias[0, :, 16, 3] = 0.5  # batch 0, block 1: tile 0 is no longer full
    expected_bias = expected.clone()
    expected_bias[0, 1] = torch.tensor((0, 2, 2, 2))
    # PyTorch's bias for cuDNN (-65536): rows that see no key weigh all of them, so the
    # blocks that hold such rows (batch 1, blocks 0 and 1) visit every tile
    cudnn_bias = torch.zeros(keep.shape).masked_fill(~keep, -65536.0)
    expected_cudnn = expected.clone()
    expected_cudnn[1, :2] = torch.tensor((0, 4, 4, 4))
    config = {"BLOCK_M": 16, "BLOCK_N": 16}
    cases = ((keep, expected), (additive, expected), (nonzero_bias, expected_bias),
             (cudnn_bias, expected_cudnn))  # fmt: skip
    for mask, want in cases:
        masking = kernels._mask_args(mask.to(DEVICE), q, k)
        tiles, heads = kernels._mask_tiles(masking, 2, 2, 64, 64, config)
        assert heads == 1  # the same for every head: summarised once
        assert torch.equal(tiles.view(2, 4, 4).cpu(), want)


def _summary_model(mask: torch.Tensor, block_m: int, block_n: int) -> list[tuple]:
    """The documented mask summary of one [Sq, Skv] mask, tile by tile in Python."""
    additive = mask.dtype != torch.bool
    seen = mask > HIDDEN_BIAS if additive else mask
    whole = mask == 0 if additive else mask
    skv = mask.shape[1]
    n_tiles = -(-skv // block_n)
    summary = []
    for lo in range(0, mask.shape[0], block_m):
        rows = slice(lo, lo + block_m)
        tile = lambda t, m, rows=rows: m[rows, t * block_n : (t + 1) * block_n]  # noqa: E731
        seen_at = [t for t in range(n_tiles) if tile(t, seen).any()]
        start, end = (seen_at[0], seen_at[-1] + 1) if seen_at else (0, 0)
        full_start = full_end = run = 0
        for t in range(n_tiles):
            run = run + 1 if tile(t, whole).all() and (t + 1) * block_n <= skv else 0
            if run > full_end - full_start:  # the first of equal runs stays
                full_start, full_end = t + 1 - run, t + 1
        if additive:
            anchored = (mask[rows] >= ANCHOR_BIAS).any(dim=1)
            finite_hidden = ((mask[rows] <= HIDDEN_BIAS) & (mask[rows] > float("-inf"))).any(1)
            if (finite_hidden & ~anchored).any():
                start, end = 0, n_tiles
        if full_start == full_end:
            full_start = full_end = end
        summary.append((start, full_start, full_end, end))
    return summary


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_mask_summary_scans_past_a_chunk_of_tiles(kind):
    """300 key tiles (more than the scan's chunks of flags and row bits): the longest full
    run crosses the chunk boundary; a row of finite hidden biases with no anchor sends its
    block to every tile; a NaN bias breaks a run. Against a Python model of the summary."""
    block, n_tiles = 16, 300
    assert n_tiles > FLAG_CHUNK and n_tiles > ROW_BITS_CHUNK
    keep = torch.ones(48, n_tiles * block - 5, dtype=torch.bool)  # a ragged last tile
    keep[:, : 5 * block] = False  # tiles 0-4 hidden
    keep[3, 10 * block] = keep[7, 100 * block + 7] = keep[12, 290 * block] = False
    keep[33:48, 140 * block :] = False  # the third block sees nothing from tile 140
    mask = keep
    if kind == "additive":
        mask = torch.zeros(keep.shape).masked_fill(~keep, -65536.0)
        mask[17, :] = -65536.0  # the second block: a row with no anchor
        mask[40, 50 * block + 3] = float("nan")  # not a full key: the reference gives NaN
    q, k, _ = _qkv(1, 1, 1, 48, mask.shape[1], 16, torch.float16)
    masking = kernels._mask_args(mask.to(DEVICE), q, k)
    tiles, _ = kernels._mask_tiles(
        masking, 1, 1, 48, mask.shape[1], {"BLOCK_M": block, "BLOCK_N": block}
    )
    expected = _summary_model(mask, block, block)
    assert expected[0] == (5, 101, 290, 300)  # the longest run crosses tile 256
    assert expected[1] == ((0, 300, 300, 300) if kind == "additive" else (5, 5, 299, 300))
    assert expected[2] == ((5, 51, 140, 300) if kind == "additive" else (5, 5, 140, 300))
    assert tiles.view(3, 4).cpu().tolist() == [list(t) for t in expected]


@pytest.mark.parametrize("hidden", [-65536.0, -3.0])
@pytest.mark.parametrize("sq", [64, 1])  # the prefill and the decode kernels
def test_a_bool_mask_with_a_hidden_bias_is_the_where_it_stands_for(hidden, sq):
    """mask_hidden: a bool mask whose hidden keys take a bias gives what the additive
    mask where(mask, 0, bias) gives, bit for bit (summary included), rows that see
    nothing averaging as the reference does."""
    q, k, v = _qkv(2, 2, 1, sq, 64, 16, torch.float16)
    keep = _causal_padded_keep(64, 64)[:, :, 64 - sq :].to(DEVICE)
    where = torch.zeros(keep.shape, device=DEVICE).masked_fill(~keep, hidden)
    args = (q, k, v, None, 0.3, "none", "bhsd", True, "none")
    got = kernel_attention(*args, keep, None, hidden)
    want = kernel_attention(*args, where)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    out_ref, lse_ref = ref.attention(q, k, v, where, 0.3, "none", True)
    torch.testing.assert_close(got[0], out_ref, atol=2e-3, rtol=2e-3)
    if sq > 1:
        summary = torch.ops.irfuse.kernel_attention_mask_summary(q, k, keep, hidden)
        assert torch.equal(summary, torch.ops.irfuse.kernel_attention_mask_summary(q, k, where))
    with pytest.raises(ValueError, match="biases a bool mask"):
        kernel_attention(*args, where, None, hidden)


def test_a_precomputed_mask_summary_is_used_and_checked():
    """kernel_attention takes the summary kernel_attention_mask_summary made for its shapes
    (same results as computing it itself), and refuses one made for other shapes or one
    without its mask; the decode path needs none."""
    q, k, v = _qkv(2, 2, 1, 64, 64, 16, torch.float16)
    mask = _causal_padded_keep(64, 64).to(DEVICE)
    summary = torch.ops.irfuse.kernel_attention_mask_summary(q, k, mask)
    args = (q, k, v, None, 0.3, "none", "bhsd", True, "none", mask)
    for got, want in zip(kernel_attention(*args, summary), kernel_attention(*args), strict=True):
        assert torch.equal(got, want)
    per_head = mask.expand(2, 2, 64, 64).contiguous()  # a summary per head: twice the size
    other = torch.ops.irfuse.kernel_attention_mask_summary(q, k, per_head)
    with pytest.raises(ValueError, match="not kernel_attention_mask_summary's"):
        kernel_attention(*args, other)
    with pytest.raises(ValueError, match="without its mask"):
        kernel_attention(*args[:-1], None, summary)
    decode_q = q[:, :, :1]  # the decode's: one block of query rows per (batch, mask head)
    assert torch.ops.irfuse.kernel_attention_mask_summary(decode_q, k, mask[:, :, :1]).numel() == 8


def _decode_keep(pattern: str, b: int, hq: int, sq: int, skv: int) -> torch.Tensor:
    """[b, 1 or hq, sq, skv] bool (hq = 4). Left padding hides a prefix per sequence, an
    unfilled static cache a suffix, per head both by head; the last sequence sees
    nothing."""
    heads = hq if pattern == "per head" else 1
    keep = torch.zeros(b, heads, sq, skv, dtype=torch.bool)
    for i in range(b - 1):
        for h in range(heads):
            lo, hi = (37 + 50 * i, skv) if pattern == "left padding" else (0, 45 + 60 * i)
            if pattern == "per head":  # the widest range is not a program's first head's
                lo, hi = (30, 5, 50, 0)[h] + 3 * i, skv - (0, 40, 10, 70)[h] - i
            keep[i, h, :, lo:hi] = True
    keep[0, :, :, 2] = False  # a hole inside the seen keys
    return keep


def _wider_decode_tiles(monkeypatch) -> None:
    """The decode's key tiles twice its mask summary's (as on the GPU beyond two (batch,
    kv head) rows per SM)."""
    import irfuse.lowering.attention as kernels

    real = kernels.split_config

    def wider(batch_kv, seq_kv, *args):
        config = real(batch_kv, seq_kv, *args)
        block_n = 2 * config["BLOCK_N"]
        split_len = -(-config["split_len"] // block_n) * block_n
        splits = max(1, -(-seq_kv // split_len))
        return {**config, "BLOCK_N": block_n, "split_len": split_len, "splits": splits}

    monkeypatch.setattr(kernels, "split_config", wider)


@pytest.mark.parametrize("kind", ["bool", "additive -inf", "additive -65536", "bool hidden"])
@pytest.mark.parametrize("pattern", ["left padding", "static cache", "per head"])
@pytest.mark.parametrize("key_tiles", ["summary's", "twice the summary's"])
def test_decode_with_a_mask_summary_splits_only_the_keys_rows_see(
    monkeypatch, kind, pattern, key_tiles
):
    """Decode with the mask summary a compiled model passes: its slices split only the
    keys some row of a (batch, kv head) sees (union over the program's mask heads), the
    same results as without a summary (every key, the mask read per tile) and as the
    reference; a sequence that sees nothing gives 0 and lse -inf. Also with key tiles
    twice the summary's."""
    if key_tiles != "summary's":
        _wider_decode_tiles(monkeypatch)
    b, hq, hkv, sq, skv = 3, 4, 2, 2, 200
    q, k, v = _qkv(b, hq, hkv, sq, skv, 16, torch.float16)
    assert uses_decode(sq, hq, hkv)
    keep = _decode_keep(pattern, b, hq, sq, skv)
    hidden = None
    if kind == "bool hidden":  # a bool mask whose hidden keys take a finite bias
        mask, hidden = keep, -65536.0
    elif kind == "bool":
        mask = keep
    else:
        low = float("-inf") if kind == "additive -inf" else -65536.0
        mask = torch.zeros(keep.shape).masked_fill(~keep, low)
    mask = mask.to(DEVICE)
    summary = torch.ops.irfuse.kernel_attention_mask_summary(q, k, mask, hidden)
    args = (q, k, v, None, 0.3, "none", "bhsd", True, "none", mask)
    out, lse, _ = kernel_attention(*args, summary, hidden)
    out_all, lse_all, _ = kernel_attention(*args, None, hidden)
    bias = mask if hidden is None else torch.where(mask, 0.0, hidden)
    out_ref, lse_ref = ref.attention(q, k, v, bias, 0.3, "none", True)
    torch.testing.assert_close(out, out_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out, out_all, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(lse, lse_all, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["bool", "additive -inf", "additive -65536"])
@pytest.mark.parametrize("sq,skv", [(64, 64), (60, 70)])
def test_structured_masks_skip_tiles_and_match_reference(kind, sq, skv, loads):
    """Causal-with-padding masks (full, mixed, hidden and ragged tiles, a block of rows
    that sees nothing): the kernel skips and unmasks tiles by the summary, same results."""
    q, k, v = _qkv(2, 2, 1, sq, skv, 16, torch.float16)  # 2 x 60+ rows per kv head: prefill
    assert not uses_decode(sq, 2, 1)
    keep = _causal_padded_keep(sq, skv)
    hidden = float("-inf") if kind == "additive -inf" else -65536.0
    mask = keep if kind == "bool" else torch.zeros(keep.shape).masked_fill(~keep, hidden)
    mask = mask.to(DEVICE)
    out, lse, _ = kernel_attention(q, k, v, None, 0.3, "none", "bhsd", True, "none", mask)
    out_ref, lse_ref = ref.attention(q, k, v, mask, 0.3, "none", True)
    torch.testing.assert_close(out, out_ref, atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)


def test_explicit_mask_with_an_epilogue():
    q, k, v = _qkv(2, 2, 2, 40, 40, 32, torch.float16)
    mask = _mask("bool", (2, 1, 40, 40))
    scale = torch.tensor([0.01], device=DEVICE)
    got, _, _ = kernel_attention(q, k, v, scale, 0.25, "none", "bs_hd", False, "static", mask)
    out, _ = ref.attention(q, k, v, mask, 0.25, "none", False)
    layout = out.transpose(1, 2).reshape(2 * 40, 2 * 32)
    q_ref, _ = reference_quant("static", layout, scale)
    assert_fp8_close(got.reshape(2 * 40, 2 * 32), q_ref, scale)


@pytest.mark.parametrize(
    "mask,causal,match",
    [
        (torch.ones(3, 5, dtype=torch.bool), "none", "does not broadcast"),
        (torch.ones(5, 7, dtype=torch.int32), "none", "bool or bf16"),
        (torch.ones(5, 7, dtype=torch.bool), "top_left", "cannot be combined"),
    ],
)
def test_bad_masks_are_refused(mask, causal, match):
    q, k, v = _qkv(1, 2, 2, 5, 7, 16, torch.float16)
    with pytest.raises((ValueError, TypeError), match=match):
        kernel_attention(q, k, v, None, 0.3, causal, "bhsd", False, "none", mask.to(DEVICE))


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mask_shape", [(2, 1, 257, 300), (2, 1, 1, 300)])
def test_gpu_explicit_masks_every_head_dim(d, mask_dtype, mask_shape):
    """The production tiles with a mask tile in every pipeline stage (shared memory), and
    the padding-mask path (keys only)."""
    q, k, v = _qkv(2, 4, 2, 257, 300, d, torch.bfloat16)
    keep = torch.rand(mask_shape, generator=torch.Generator().manual_seed(d)) > 0.3
    mask = _mask_from(keep, mask_dtype)
    _assert_masked_bf16_matches_reference(q, k, v, mask, lse_tol=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize(
    "mask_dtype,hidden",
    [
        (torch.bool, None),
        (torch.bfloat16, -65536.0),
        (torch.bfloat16, float("-inf")),
        (torch.float32, -65536.0),
    ],
)
@pytest.mark.parametrize("seq", [1031, 2048, 2053])  # 2053: head dim 64's long-sequence tiles
def test_gpu_structured_masks_with_production_tiles(d, mask_dtype, hidden, seq):
    """A causal + padding mask ([B, 1, S, S], a model's padded batch): hidden tiles
    skipped, full tiles unmasked, mixed ones masked, with the production tiles."""
    q, k, v = _qkv(2, 4, 2, seq, seq, d, torch.bfloat16)
    keep = torch.ones(seq, seq, dtype=torch.bool).tril().expand(2, 1, seq, seq).clone()
    keep[1, ..., seq * 9 // 10 :] = False
    keep[0, :, seq // 2 :, 100:140] = False  # a hole in the full tiles of later rows
    mask = _mask_from(keep, mask_dtype, hidden)
    _assert_masked_bf16_matches_reference(q, k, v, mask, lse_tol=1e-2)
