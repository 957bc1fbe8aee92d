"""The README's demo: a Llama-style decoder block with fp8 activation quant, compiled
with irfuse. Prints the fusion report, the max error against eager, and on a GPU the
time against Inductor.

    python -m irfuse.demo            # CPU: kernels run in Triton's interpreter
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # before triton is imported: CPU runs the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

FP8 = torch.float8_e4m3fn


def static_quant(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp8 activation quant as model code writes it."""
    return (y.float() / scale).clamp(-448, 448).to(FP8)


class DecoderBlock(torch.nn.Module):
    """Pre-norm attention + gated MLP. Activations are quantized to fp8 before each
    projection (the attention output before o_proj too), which then dequantizes (the fp8
    GEMM itself is not the point here)."""

    def __init__(self, hidden: int = 64, ffn: int = 128, heads: int = 4, eps: float = 1e-6):
        super().__init__()
        self.eps, self.heads = eps, heads
        self.attn_norm = torch.nn.Parameter(1 + 0.1 * torch.randn(hidden))
        self.mlp_norm = torch.nn.Parameter(1 + 0.1 * torch.randn(hidden))
        self.qkv = torch.nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = torch.nn.Linear(hidden, hidden, bias=False)
        self.up = torch.nn.Linear(hidden, 2 * ffn, bias=False)
        self.down = torch.nn.Linear(ffn, hidden, bias=False)
        self.register_buffer("act_scale", torch.tensor([0.05]))

    def _qlinear(self, linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        q = static_quant(x, self.act_scale)
        return linear(q.to(x.dtype) * self.act_scale.to(x.dtype))

    def forward(self, x: torch.Tensor, residual: torch.Tensor):
        b, s, h = x.shape
        hidden = x + residual
        y = F.rms_norm(hidden, (h,), self.attn_norm, self.eps)
        q, k, v = self._qlinear(self.qkv, y).view(b, s, 3, self.heads, -1).unbind(2)
        a = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        x = self._qlinear(self.out, a.transpose(1, 2).reshape(b, s, h))
        hidden = x + hidden
        y = F.rms_norm(hidden, (h,), self.mlp_norm, self.eps)
        gate, up = self._qlinear(self.up, y).chunk(2, dim=-1)
        return self._qlinear(self.down, F.silu(gate) * up), hidden


def main() -> int:
    import irfuse
    from irfuse.pipeline import capture_reports

    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    hidden, ffn, heads, tokens = (4096, 11008, 32, 512) if cuda else (64, 128, 4, 16)
    block = DecoderBlock(hidden, ffn, heads).to(device, dtype).eval()
    block.act_scale = block.act_scale.float()  # quant scales stay fp32
    x = torch.randn(1, tokens, hidden, device=device, dtype=dtype)
    # Inductor on CPU compiles C++: slow. On the GPU, Inductor's cache is off so that the
    # pass runs (and reports) on every run of the demo.
    options = {"fx_graph_cache": False} if cuda else {"inner": "eager"}
    print(
        f"irfuse {irfuse.__version__} demo on {torch.cuda.get_device_name() if cuda else 'CPU'}"
        f": decoder block, hidden {hidden}, {tokens} tokens, {dtype}"
    )
    with torch.no_grad():
        expected = block(x, x)
        compiled = torch.compile(block, backend="irfuse", options=options)
        with capture_reports() as reports:
            out = compiled(x, x)
        for report in reports:
            print(report)
        pairs = zip(out, expected, strict=True)
        errors = [(a.float() - b.float()).abs().max().item() for a, b in pairs]
        print(f"max |irfuse - eager|: output {errors[0]:.3g}, residual {errors[1]:.3g}")
        if cuda:
            import triton.testing

            inductor = torch.compile(block)
            inductor(x, x)
            t_irfuse = triton.testing.do_bench_cudagraph(lambda: compiled(x, x))
            t_inductor = triton.testing.do_bench_cudagraph(lambda: inductor(x, x))
            print(
                f"time: irfuse {t_irfuse * 1e3:.1f} us, Inductor {t_inductor * 1e3:.1f} us "
                f"({t_inductor / t_irfuse:.3f}x)"
            )
    fused = sum(r.fused.get("fuse-rms-norm-quant", 0) for r in reports)
    return 0 if fused and max(errors) < 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
