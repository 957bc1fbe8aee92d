"""A small Gemma-3-style model (two layers: `(1 + w)` norms, sandwich norms around the
attention and the MLP, q / k norms over the head dim, a scaled embedding) whose linears
quantize their flattened input per token. Each sandwich (a norm, the residual add, the
next norm and the quant of its value) becomes one kernel; the first layer's input norm
fuses with its quant; the q / k norms, read by RoPE, and the final norm, which no quant
reads, are left to Inductor. The results follow eager's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irfuse.pipeline import Options, capture_reports, transform_graph
from irfuse.transforms.raise_rms_norm import NO_QUANT
from tests.gpu_placement import captured_graph, placed_on_gpu
from tests.test_model_generate import (
    HEAD_DIM,
    HEADS,
    HIDDEN,
    KV_HEADS,
    add_projections,
    rotate_half,
)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter


class GemmaRMSNorm(torch.nn.Module):
    """Gemma3RMSNorm.forward: normalised in fp32, times `1 + w` in fp32, cast back."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(0.1 * torch.randn(dim))

    def forward(self, x):
        v = x.float()
        v = v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + self.eps)
        return (v * (1.0 + self.weight.float())).type_as(x)


class Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = GemmaRMSNorm(HIDDEN)
        self.post_attention_layernorm = GemmaRMSNorm(HIDDEN)
        self.pre_feedforward_layernorm = GemmaRMSNorm(HIDDEN)
        self.post_feedforward_layernorm = GemmaRMSNorm(HIDDEN)
        self.q_norm, self.k_norm = GemmaRMSNorm(HEAD_DIM), GemmaRMSNorm(HEAD_DIM)
        add_projections(self)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        residual, h = x, self.input_layernorm(x)
        q = self.q_norm(self.q_proj(h).view(b, s, HEADS, HEAD_DIM)).transpose(1, 2)
        k = self.k_norm(self.k_proj(h).view(b, s, KV_HEADS, HEAD_DIM)).transpose(1, 2)
        v = self.v_proj(h).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        attn = self.o_proj(attn.transpose(1, 2).reshape(b, s, -1))
        x = residual + self.post_attention_layernorm(attn)
        residual = x
        gate, up = self.up_proj(self.pre_feedforward_layernorm(x)).chunk(2, -1)
        mlp = self.down_proj(F.gelu(gate, approximate="tanh") * up)
        return residual + self.post_feedforward_layernorm(mlp)


class TinyGemma(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Layer(), Layer()])
        self.norm = GemmaRMSNorm(HIDDEN)

    def forward(self, embeds, positions):
        x = embeds * torch.tensor(HIDDEN**0.5, dtype=embeds.dtype)  # Gemma's embedding scale
        steps = torch.arange(0, HEAD_DIM, 2, device=x.device).float()
        freqs = positions[:, None].float() * (1.0 / (10000 ** (steps / HEAD_DIM)))[None]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)


def test_under_dynamic_true_the_norms_eps_are_read_at_each_call():
    """`dynamic=True` makes each norm module's float eps a graph input: the sandwiches
    still fuse (both eps read at launch), and a changed eps changes the results as in
    eager without a recompile."""
    torch.manual_seed(0)
    model = TinyGemma().to(DEVICE, torch.float16).eval()
    options = {"inner": "eager", "attention": "sdpa"}
    compiled = torch.compile(model, backend="irfuse", options=options, dynamic=True)
    embeds = torch.randn(1, 8, HIDDEN, dtype=torch.float16, device=DEVICE)
    positions = torch.arange(8, device=DEVICE)
    with torch.no_grad(), capture_reports() as reports:
        for post_eps, other_eps in ((1e-6, 1e-6), (0.5, 0.05)):  # then a sandwich's differ
            for name, norm in model.named_modules():
                if isinstance(norm, GemmaRMSNorm):
                    norm.eps = post_eps if "post_" in name else other_eps
            torch.testing.assert_close(
                compiled(embeds, positions), model(embeds, positions), atol=0.05, rtol=0.02
            )
    assert len(reports) == 1, reports  # one graph for both eps values
    assert reports[0].fused["fuse-sandwich-norm"] == 3, str(reports[0])


def test_on_a_gpu_eps_read_at_each_call_stay_on_the_host_and_still_fuse():
    """On a GPU, `dynamic=True`'s eps inputs are 0-d CPU tensors beside CUDA ones: a
    sandwich's two eps (x_eps and eps) are read at launch and do not count as operands
    on another device (a sandwich's x_eps did: "operands on several devices" left the
    whole graph unfused). The graph is captured on the CPU and placed as on a GPU."""
    torch.manual_seed(0)
    model = TinyGemma().to("cpu", torch.float16).eval()
    embeds = torch.randn(1, 8, HIDDEN, dtype=torch.float16)
    graph = placed_on_gpu(captured_graph(model, embeds, torch.arange(8), dynamic=True)).graph
    vals = [n.meta["val"] for n in graph.nodes if n.op == "placeholder"]
    assert any(isinstance(v, torch.Tensor) and v.dim() == 0 for v in vals)  # the eps inputs
    report = transform_graph(graph, Options.from_dict({"inner": "eager", "attention": "sdpa"}))
    assert report.fused["fuse-sandwich-norm"] == 3, str(report)
    assert not any("several devices" in note for note in report.notes), str(report)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gemma_sandwiches_fuse_into_one_kernel_each_and_follow_eager(dtype):
    if dtype == torch.bfloat16 and DEVICE == "cpu":
        pytest.skip("bf16 dot in the interpreter (TOOLCHAIN.md); the norms run in fp16 here")
    torch.manual_seed(0)
    model = TinyGemma().to(DEVICE, dtype).eval()
    compiled = torch.compile(model, backend="irfuse", options={"inner": "eager"})
    embeds = torch.randn(1, 8, HIDDEN, dtype=dtype, device=DEVICE)
    positions = torch.arange(8, device=DEVICE)
    with torch.no_grad(), capture_reports() as reports:
        out = compiled(embeds, positions)
        ref = model(embeds, positions)
    # activations quantized to fp8 before each projection: a value one fp8 step apart
    # moves the result by a few hundredths at these magnitudes
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.02)
    assert len(reports) == 1, reports
    report = reports[0]
    # the post-attention sandwich of each layer, and the first layer's post-feedforward
    # norm with the second layer's input norm
    assert report.kernels.count("irfuse_normed_add_rounded_rms_norm_gemmaw_per_token_fp8") == 3
    assert report.kernels.count("irfuse_rms_norm_gemmaw_per_token_fp8") == 1, str(report)
    assert report.fused["fuse-sandwich-norm"] == 3, str(report)
    # raised: the input norm and both norms of each sandwich; left to Inductor (the report
    # names each place once): the q / k norms (RoPE reads them), the last post-feedforward
    # norm and the final norm
    assert report.fused["raise-rms-norm"] == 7, str(report)
    norm_reasons = {r["reason"] for r in report.rejected if r["pass"] == "raise-rms-norm"}
    assert norm_reasons == {NO_QUANT}, str(report)
