"""End to end: a decode step of a Hugging Face Llama whose projections quantize their
input per row as torchao does (`PerRow()`, `KernelPreference.TORCH`), eager vs Inductor
vs irfuse.

    python bench/hf_decode.py [--layers 4] [--batch 1 16 64] [--cache 4096] [--rounds 5]

The model is transformers' `LlamaForCausalLM` at Llama-3-8B's layer sizes (hidden 4096,
32 query heads, 8 kv heads, head dim 128, MLP 14336), fewer layers, random weights, bf16.
Each linear of its layers is a `RowFp8Linear`: torchao's per-row activation scale
(`amax / 448` in bf16, widened), its fp8 weight and per-row weight scales, and
`torch._scaled_mm` (what torchao runs with `KernelPreference.TORCH`; torchao itself is
not needed). A step is one token per sequence against a `StaticCache` filled to half its
length; Inductor and irfuse compile it with `mode="reduce-overhead"` (CUDA graphs, as a
server runs decode), eager runs it as written. Timed per step: back-to-back calls, one
synchronisation, median of alternating rounds (host and GPU together: what a step costs).
The table goes to bench/RESULTS.md with irfuse's kernels for the step.

transformers is not on the offline GPU machine: `bash bench/hf_wheels.sh` downloads its
wheels into .whl-hf/ (carry it), `bash bench/gpu_session.sh hf` installs them and runs
this. On a CPU machine (TRITON_INTERPRET=1) it runs one step of a tiny model through the
interpreter against eager: a smoke run, no timing, no table.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import append_results  # noqa: E402

from irfuse.pipeline import capture_reports  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPE = torch.bfloat16 if CUDA else torch.float16  # the interpreter has no bf16 dot
FP8 = torch.float8_e4m3fn
LLAMA_3_8B = dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128)  # fmt: skip
TINY = dict(hidden_size=128, intermediate_size=256, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32)  # fmt: skip


class RowFp8Linear(torch.nn.Module):
    """A linear with fp8 weights (a scale per output row) whose input is quantized per
    row with torchao's formula, then `torch._scaled_mm`. Off the GPU (no fp8 matmul),
    the dequantized product stands in."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = (w.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1e-12)
        self.register_buffer("weight_fp8", (w / scale).clamp(-448.0, 448.0).to(FP8))
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, N]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = (x.abs().amax(-1, keepdim=True) / 448.0).to(torch.float32)
        q = (x.to(torch.float32) / scale).clamp(-448.0, 448.0).to(FP8)
        rows = q.reshape(-1, q.shape[-1])
        if CUDA:
            out = torch._scaled_mm(
                rows, self.weight_fp8.t(), scale.reshape(-1, 1), self.weight_scale,
                out_dtype=x.dtype,
            )  # fmt: skip
        else:
            w = self.weight_fp8.float() * self.weight_scale.t()
            out = ((rows.float() * scale.reshape(-1, 1)) @ w.t()).to(x.dtype)
        return out.reshape(*x.shape[:-1], -1)


def build(layers: int, sizes: dict[str, int]) -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        **sizes, num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=16384,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(DEVICE, DTYPE).eval()
    for layer in model.model.layers:
        for module in list(layer.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(module, name, RowFp8Linear(child))
    return model


def step(model, token, cache, position):
    return model(token, past_key_values=cache, cache_position=position, use_cache=True).logits


def filled_cache(model, batch: int, length: int):
    """A static cache of `length` slots with its first half filled (the same prompt for
    the same batch size); the next token."""
    cache = transformers.StaticCache(config=model.config, max_cache_len=length)
    torch.manual_seed(batch)
    prompt = torch.randint(3, model.config.vocab_size, (batch, length // 2), device=DEVICE)
    with torch.no_grad():
        logits = step(model, prompt, cache, torch.arange(length // 2, device=DEVICE))
    return cache, logits[:, -1:].argmax(-1)


def candidates(model, batch: int, length: int) -> tuple[dict, str]:
    """The step run eagerly and compiled by Inductor and by irfuse (reduce-overhead,
    compiled and recorded here); irfuse's kernels."""
    cache, token = filled_cache(model, batch, length)
    position = torch.tensor([length // 2], device=DEVICE)
    fns = {"eager": lambda: step(model, token, cache, position)}
    kernels = ""
    torch._dynamo.reset()  # once: a reset between the two would drop Inductor's arm
    for backend in ("inductor", "irfuse"):
        compiled = torch.compile(step, backend=backend, mode="reduce-overhead")
        with torch.no_grad(), capture_reports() as reports:
            for _ in range(3):  # compiles, records the CUDA graph
                compiled(model, token, cache, position)
        if backend == "irfuse":  # every graph's (a graph break makes more than one)
            made = collections.Counter(kernel for report in reports for kernel in report.kernels)
            kernels = ", ".join(f"{name} x{count}" for name, count in made.items())
        fns[backend] = lambda c=compiled: c(model, token, cache, position)
    return fns, kernels


def per_step_us(fns: dict, calls: int, rounds: int) -> dict[str, float]:
    """Median over alternating rounds of the wall time per step (us), one sync a round."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # every arm warm (a recompile, a graph recorded) before timing
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            samples[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(times) for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--cache", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not CUDA:
        return smoke()
    torch._inductor.config.fx_graph_cache = False  # every compile runs irfuse's pass
    model = build(args.layers, LLAMA_3_8B)
    rows = []
    for batch in args.batch:
        fns, kernels = candidates(model, batch, args.cache)
        with torch.no_grad():
            times = per_step_us(fns, args.calls, args.rounds)
        eager, inductor, irfuse = times["eager"], times["inductor"], times["irfuse"]
        rows.append([
            f"B{batch}", f"{eager:.1f}", f"{inductor:.1f}", f"{irfuse:.1f}",
            f"{inductor / irfuse:.3f}x", kernels or "none",
        ])  # fmt: skip
        print(rows[-1], flush=True)
    title = (
        f"HF Llama decode step, {args.layers} layers at Llama-3-8B sizes, per-row fp8 "
        f"activations (torchao's formula, `_scaled_mm`), StaticCache {args.cache} half "
        "full, reduce-overhead, us per step (host + GPU)"
    )
    header = ["batch", "eager", "Inductor", "irfuse", "irfuse vs Inductor", "irfuse's kernels"]
    print(append_results(title, header, rows))


def smoke() -> None:
    """One step of a tiny model through the interpreter, against eager."""
    model = build(2, TINY)
    cache, token = filled_cache(model, 2, 16)
    eager_cache, _ = filled_cache(model, 2, 16)
    position = torch.tensor([8])
    with torch.no_grad():
        expected = step(model, token, eager_cache, position)
        compiled = torch.compile(step, backend="irfuse", options={"inner": "eager"})
        with capture_reports() as reports:
            got = compiled(model, token, cache, position)
    print(reports[0])
    diff = (got.float() - expected.float()).abs().max().item()
    print(f"smoke run: max |irfuse - eager| {diff:.4f} (logits up to "
          f"{expected.float().abs().max().item():.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
