"""A small HF-style Llama (two layers: RMSNorm modules, separate q / k / v projections,
RoPE, GQA, a KV cache grown by concatenation) whose linears quantize their flattened
input per token, through a generate loop: prefill, then decode steps (the second one
recompiles with the key count dynamic). Every quantized norm fuses with its quant, the three
projections' identical quants become one, the final norm (no quant) is left to
Inductor, and the results follow eager's."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from irfuse.lowering.user_kernels import GRAPH_LAUNCH
from irfuse.pipeline import capture_reports
from irfuse.transforms.raise_rms_norm import NO_QUANT
from tests.models import LlamaRMSNorm as RMSNorm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
FP8 = torch.float8_e4m3fn
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN = 128, 4, 2, 32, 128


class QuantLinear(torch.nn.Linear):
    """Quantizes its flattened input per token, then dequantizes (the fp8 GEMM itself is
    not the point)."""

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1]).float()
        scale = (flat.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
        q = (flat / scale).clamp(-448.0, 448.0).to(FP8)
        y = (q.to(x.dtype) * scale.to(x.dtype)) @ self.weight.t()
        return y.view(*x.shape[:-1], -1)


def add_projections(layer: torch.nn.Module) -> None:
    """A decoder layer's q / k / v / o and gated-MLP projections, each a QuantLinear."""
    layer.q_proj = QuantLinear(HIDDEN, HEADS * HEAD_DIM, bias=False)
    layer.k_proj = QuantLinear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
    layer.v_proj = QuantLinear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
    layer.o_proj = QuantLinear(HEADS * HEAD_DIM, HIDDEN, bias=False)
    layer.up_proj = QuantLinear(HIDDEN, 2 * FFN, bias=False)
    layer.down_proj = QuantLinear(FFN, HIDDEN, bias=False)


def rotate_half(x):
    a, b = x.chunk(2, -1)
    return torch.cat((-b, a), -1)


class Layer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_norm, self.post_norm = RMSNorm(HIDDEN), RMSNorm(HIDDEN)
        add_projections(self)

    def forward(self, x, cos, sin, cache):
        b, s, _ = x.shape
        residual, h = x, self.input_norm(x)
        q = self.q_proj(h).view(b, s, HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(h).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(h).view(b, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None, enable_gqa=True)
        x = residual + self.o_proj(attn.transpose(1, 2).reshape(b, s, -1))
        gate, up = self.up_proj(self.post_norm(x)).chunk(2, -1)
        return x + self.down_proj(F.silu(gate) * up), (k, v)


class TinyLlama(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Layer(), Layer()])
        self.norm = RMSNorm(HIDDEN)

    def forward(self, x, positions, caches):
        steps = torch.arange(0, HEAD_DIM, 2, device=x.device).float()
        inv_freq = 1.0 / (10000 ** (steps / HEAD_DIM))
        freqs = positions[:, None].float() * inv_freq[None]
        emb = torch.cat([freqs, freqs], -1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        new_caches = []
        for layer, cache in zip(self.layers, caches, strict=True):
            x, cache = layer(x, cos, sin, cache)
            new_caches.append(cache)
        return self.norm(x), new_caches


def _model() -> TinyLlama:
    torch.manual_seed(0)
    model = TinyLlama().to(DEVICE, torch.float16).eval()
    with torch.no_grad():
        for norm in (m for m in model.modules() if isinstance(m, RMSNorm)):
            norm.weight.add_(0.1 * torch.randn_like(norm.weight))
    return model


def _generate(model: TinyLlama, compiled, steps: int = 3):
    """Prefill 8 tokens, then `steps` decode steps; the compiled and eager outputs."""
    x = torch.randn(1, 8, HIDDEN, dtype=torch.float16, device=DEVICE)
    with torch.no_grad():
        positions = torch.arange(8, device=DEVICE)
        out, caches = compiled(x, positions, [None, None])
        ref, ref_caches = model(x, positions, [None, None])
        outputs, expected = [out], [ref]
        for step in range(steps):
            token = torch.randn(1, 1, HIDDEN, dtype=torch.float16, device=DEVICE)
            position = torch.tensor([8 + step], device=DEVICE)
            out, caches = compiled(token, position, caches)
            ref, ref_caches = model(token, position, ref_caches)
            outputs.append(out)
            expected.append(ref)
    return outputs, expected


def _generate_compiled(options: dict[str, str]) -> list:
    """The loop compiled with `options` follows eager's; the reports of its graphs."""
    torch._dynamo.reset()
    model = _model()
    compiled = torch.compile(model, backend="irfuse", options=options)
    # a graph served from Inductor's cache skips the pass, and so its report
    no_cache = torch._inductor.config.patch(fx_graph_cache=False, autotune_local_cache=False)
    with capture_reports() as reports, no_cache:
        outputs, expected = _generate(model, compiled)
    for got, want in zip(outputs, expected, strict=True):
        # activations quantized to fp8 before each projection: a value one fp8 step
        # apart moves the result by a few hundredths at these magnitudes
        torch.testing.assert_close(got, want, atol=0.05, rtol=0.02)
    assert len(reports) == 3, reports  # prefill, decode, decode with a dynamic key count
    return reports


def test_a_generate_loop_fuses_each_norm_with_its_quant_and_follows_eager():
    reports = _generate_compiled({"inner": "eager", "attention": "irfuse"})
    for report in reports:
        # per layer: the input norm with the projections' one quant, the residual add +
        # post norm with the up projection's
        assert report.fused["fuse-rms-norm-quant"] == 4, str(report)
        assert report.fused["fuse-attention-quant"] == 2, str(report)
        assert report.kernels.count("irfuse_rms_norm_per_token_fp8") == 1, str(report)
        assert report.kernels.count("irfuse_add_rounded_rms_norm_per_token_fp8") == 3
        # left to Inductor: the down projection's quant of silu(gate) * up, and the final
        # norm, which no quant reads
        reasons = {r["reason"] for r in report.rejected}
        assert reasons == {"no producer to fuse into: left to the inner compiler", NO_QUANT}


@pytest.mark.cuda
def test_gpu_a_generate_loop_under_inductor_launches_from_its_wrapper():
    """The same loop compiled by Inductor with graph_launch="all": the results follow
    eager's, every fused norm launches from Inductor's wrapper, and so does the static
    decode step's attention (the decode whose key count is dynamic keeps
    kernel_attention: its slices follow the key count)."""
    reports = _generate_compiled({"attention": "irfuse", "graph_launch": "all"})
    for report in reports:
        assert report.fused["fuse-rms-norm-quant"] == 4, str(report)
        norms = [n for n in report.launches if "rms_norm" in n]
        assert len(norms) == 4 and all(n.endswith(GRAPH_LAUNCH) for n in norms), norms
    _, static_decode, dynamic_decode = (
        [n for n in r.launches if "attention" in n] for r in reports
    )
    assert len(static_decode) == 2 and all(n.endswith(GRAPH_LAUNCH) for n in static_decode)
    assert len(dynamic_decode) == 2 and not any(n.endswith(GRAPH_LAUNCH) for n in dynamic_decode)
