"""A decoder layer quantized the way torchao's Float8 dynamic activation quant computes
it (per-row or per-tensor scales in the model dtype, `<per_token in_dtype>`,
`<per_tensor in_dtype>`): which quants fuse into which kernels, which are left to the
inner compiler and why, and the layer's results against eager."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import irfuse
from tests.models import Float8Linear, LlamaRMSNorm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # interpreter: no bf16 dot


class DecoderLayer(torch.nn.Module):
    """Llama's decoder layer against a KV cache (GQA), every projection a Float8Linear of
    one granularity. `views`: torchao 0.18's identity views in every quant, and one of the
    attention's output, `view(b, -1, s, d)`, as HF's Phi-3 graph has."""

    def __init__(
        self,
        granularity: str,
        hidden: int = 128,
        heads: int = 4,
        kv_heads: int = 2,
        views: bool = False,
    ):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, hidden // heads
        self.views = views
        kv = kv_heads * self.head_dim

        def linear(n_in: int, n_out: int) -> Float8Linear:
            return Float8Linear(n_in, n_out, granularity, views)

        self.input_layernorm = LlamaRMSNorm(hidden)
        self.q_proj, self.k_proj, self.v_proj = (
            linear(hidden, hidden),
            linear(hidden, kv),
            linear(hidden, kv),
        )
        self.o_proj = linear(hidden, hidden)
        self.post_attention_layernorm = LlamaRMSNorm(hidden)
        self.gate_proj, self.up_proj = linear(hidden, 2 * hidden), linear(hidden, 2 * hidden)
        self.down_proj = linear(2 * hidden, hidden)

    def forward(self, hidden, past_k, past_v):
        b, s, _ = hidden.shape
        x = self.input_layernorm(hidden)
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        o = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
        if self.views:
            o = o.view(b, -1, s, self.head_dim)
        o = o.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        hidden = hidden + self.o_proj(o)
        x = self.post_attention_layernorm(hidden)
        mlp = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return hidden + mlp, k, v


NORM = "irfuse_rms_norm_per_token_in_dtype_fp8"
ADD_NORM = "irfuse_add_rounded_rms_norm_per_token_in_dtype_fp8"
# per tensor: two kernels (the amax, then the quant normalising again with phase 1's rstd)
NORM_2 = ["irfuse_rms_norm_amax", "irfuse_rms_norm_per_tensor_in_dtype_fp8"]
ADD_NORM_2 = ["irfuse_add_rounded_rms_norm_amax", "irfuse_rms_norm_per_tensor_in_dtype_fp8"]
NO_PRODUCER = "no producer to fuse into: left to the inner compiler"


@pytest.mark.parametrize(
    "granularity,new_tokens,kernels,left",
    [
        ("row", 1, [NORM, "irfuse_attention_per_token_in_dtype_fp8", ADD_NORM], [NO_PRODUCER]),
        (
            "row views",
            1,
            [NORM, "irfuse_attention_per_token_in_dtype_fp8", ADD_NORM],
            [NO_PRODUCER],
        ),
        # 40 tokens x 2 query heads per kv head: the prefill kernel, which holds one head
        # of a token, not the whole row a per-token scale spans
        ("row", 40, [NORM, ADD_NORM], [NO_PRODUCER] * 2),
        # no attention kernel ends with a per-tensor quant
        ("tensor", 1, [*NORM_2, *ADD_NORM_2], [NO_PRODUCER] * 2),
    ],
    ids=["row-decode", "row-decode-torchao-0.18-views", "row-prefill", "tensor-decode"],
)
def test_a_torchao_decoder_layer_fuses_every_quant_with_a_producer(
    granularity, new_tokens, kernels, left
):
    """The norm's quant (read by q, k and v: one fused op), the decode attention's
    per-row quant (o_proj's input, in the attention's combine kernel) and the add +
    norm's quant (gate and up) fuse; the quant of silu(gate) * up has no producer to end
    (nor, in prefill or per tensor, has o_proj's) and is left to the inner compiler, with
    that reason in the report. The layer matches eager."""
    torch.manual_seed(0)
    granularity, *views = granularity.split()
    layer = DecoderLayer(granularity, views=bool(views)).to(DEVICE, DTYPE)
    hidden = torch.randn(2, new_tokens, 128, device=DEVICE, dtype=DTYPE)
    past_k, past_v = (torch.randn(2, 2, 12, 32, device=DEVICE, dtype=DTYPE) for _ in range(2))
    with torch.no_grad():
        report = irfuse.explain(layer, hidden, past_k, past_v, attention="irfuse")
        assert report.kernels == kernels, str(report)
        reasons = [r["reason"] for r in report.rejected if r["pass"] == "raise-dynamic-fp8-quant"]
        assert reasons == left, str(report)
        torch._dynamo.reset()
        options = {"inner": "eager", "attention": "irfuse"}
        out, k, v = torch.compile(layer, backend="irfuse", options=options)(hidden, past_k, past_v)
        expected, k_ref, v_ref = layer(hidden, past_k, past_v)
    span = expected.float().abs().amax()
    for got, want in ((out, expected), (k, k_ref), (v, v_ref)):
        torch.testing.assert_close(got.float(), want.float(), atol=0.05 * span, rtol=0)
