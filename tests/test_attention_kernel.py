"""The generated attention kernel against the reference irfuse.ops.attention."""

from __future__ import annotations

import pytest
import torch

import irfuse.ops as ref
from irfuse.lowering.attention import attention_source, kernel_attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter's tl.dot is wrong on bf16: CPU runs fp16/fp32 (TOOLCHAIN.md)
DTYPES = [torch.float16, torch.float32] if DEVICE == "cpu" else [torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _qkv(b, hq, hkv, sq, skv, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda h, s: torch.randn(b, h, s, d, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    return make(hq, sq), make(hkv, skv), make(hkv, skv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize("hq,hkv,sq,skv", [(2, 2, 7, 7), (4, 1, 5, 19), (2, 2, 19, 5)])
def test_attention_matches_reference(dtype, causal, hq, hkv, sq, skv):
    q, k, v = _qkv(1, hq, hkv, sq, skv, 32, dtype)
    out, lse = kernel_attention(q, k, v, None, 0.2, causal, "bhsd", True, "none")
    out_ref, lse_ref = ref.attention(q, k, v, None, 0.2, causal, True)
    tol = TOL[dtype]
    torch.testing.assert_close(out, out_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)


def test_bs_hd_layout_and_static_fp8_epilogue():
    q, k, v = _qkv(2, 2, 2, 9, 9, 16, torch.float16)
    scale = torch.tensor([0.01], device=DEVICE)
    out, _ = kernel_attention(q, k, v, None, 0.25, "top_left", "bs_hd", False, "none")
    ref_out, _ = ref.attention(q, k, v, None, 0.25, "top_left", False)
    layout = ref_out.transpose(1, 2).reshape(2, 9, 32)
    torch.testing.assert_close(out, layout, atol=2e-3, rtol=2e-3)
    q8, _ = kernel_attention(q, k, v, scale, 0.25, "top_left", "bs_hd", False, "static")
    expected = ref.static_fp8_quant(layout, scale)
    torch.testing.assert_close(q8.float() * scale, expected.float() * scale, atol=0.1, rtol=0.1)


def test_fully_masked_rows_are_zero_with_minus_inf_lse():
    q, k, v = _qkv(1, 1, 1, 6, 3, 16, torch.float32)  # bottom-right: queries 0-2 see nothing
    out, lse = kernel_attention(q, k, v, None, 0.25, "bottom_right", "bhsd", True, "none")
    assert torch.all(out[0, 0, :3] == 0) and torch.all(lse[0, 0, :3] == float("-inf"))
    assert not out.isnan().any()


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((1, 3, 4, 16), (1, 2, 4, 16), (1, 2, 4, 16)), "heads"),
        (((1, 2, 4, 24), (1, 2, 4, 24), (1, 2, 4, 24)), "head dims"),
        (((2, 2, 4, 16), (1, 2, 4, 16), (1, 2, 4, 16)), "batch sizes"),
    ],
)
def test_bad_inputs(shapes, match):
    q, k, v = (torch.randn(s, device=DEVICE) for s in shapes)
    with pytest.raises(ValueError, match=match):
        kernel_attention(q, k, v, None, 1.0, "none", "bhsd", False, "none")


def test_source_names_what_it_fuses():
    assert "Fuses: attention + static fp8 quant." in attention_source("static")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", ["none", "top_left", "bottom_right"])
@pytest.mark.parametrize("hq,hkv,sq,skv", [(8, 8, 257, 257), (8, 1, 1, 1031), (8, 2, 7, 1031)])
def test_gpu_attention(dtype, d, causal, hq, hkv, sq, skv):
    q, k, v = _qkv(2, hq, hkv, sq, skv, d, dtype)
    out, lse = kernel_attention(q, k, v, None, d**-0.5, causal, "bhsd", True, "none")
    out_ref, lse_ref = ref.attention(q, k, v, None, d**-0.5, causal, True)
    torch.testing.assert_close(out, out_ref, atol=2e-2, rtol=1.6e-2)
    finite = lse_ref.isfinite()
    torch.testing.assert_close(lse[finite], lse_ref[finite], atol=1e-3, rtol=1e-3)
