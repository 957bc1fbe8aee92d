"""Inductor's generated wrapper for graphs whose fused kernels launch from it, on a CPU.

    python tests/inductor_wrapper.py

prints, as JSON, for each case the wrapper's source and the launches irfuse's runtime
op makes (each kernel's name, its arguments other than tensors and constexprs, grid).

Run in a process of its own by test_graph_launch_codegen.py. Inductor on a CPU machine
generates the wrapper of a graph holding user-defined Triton kernels up to compiling them
for a GPU; this lifts what stops it there (irfuse's device checks, the GPU's SM count,
Triton's backend hash and the kernels' precompile), so that the wrapper's source, with
its buffers and kernel calls, can be read. Nothing is launched. Triton must not run in
its interpreter here (Inductor reads the kernels' source).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from unittest import mock

os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, str(Path(__file__).parent.parent))

import torch  # noqa: E402
import torch._inductor.runtime.triton_heuristics as heuristics  # noqa: E402
import torch.utils._triton as torch_triton  # noqa: E402
from torch._inductor.graph import GraphLowering  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensor  # noqa: E402

from irfuse.lowering import attention, runtime, to_fx, user_kernels  # noqa: E402
from tests import models  # noqa: E402


def _lift_gpu_checks() -> None:
    heuristics.CachingAutotuner.precompile = lambda self, *args, **kwargs: None
    torch_triton.triton_hash_with_backend = lambda: "0" * 64
    to_fx.INTERPRET = True  # plan_lowering's device check
    attention.sm_count = lambda device: 132
    attention.shared_memory_limit = lambda device: 232448
    runtime._check = _without_device_check(runtime._check)
    attention._check = _without_device_check(attention._check)
    to_fx.graph_launch_problem = _norm_problem_on_the_gpu
    to_fx.attention_graph_problem = lambda q, k, v: None
    to_fx.summary_graph_problem = lambda q, k, mask: None


def _without_device_check(check):
    def lifted(*args, **kwargs):
        try:
            check(*args, **kwargs)
        except RuntimeError as error:  # "runs on CUDA tensors"
            if "CUDA" not in str(error):
                raise

    return lifted


def _norm_problem_on_the_gpu(spec, x, eps_input, all_launches):
    on_gpu = FakeTensor(x.fake_mode, torch.empty(x.shape, device="meta"), torch.device("cuda"))
    return user_kernels.graph_launch_problem(spec, on_gpu, eps_input, all_launches)


def _decode_step(q, k, v, scale):
    b, h, s, d = q.shape
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    return torch.ops.irfuse.static_fp8_quant(o.transpose(1, 2).reshape(b * s, h * d), scale)


def _masked_decode_step(q, k, v, mask, scale):
    b, h, s, d = q.shape
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True)
    return torch.ops.irfuse.static_fp8_quant(o.transpose(1, 2).reshape(b * s, h * d), scale)


def _norm_static_fp8(x, w, s):
    return torch.ops.irfuse.static_fp8_quant(torch.ops.irfuse.rms_norm(x, w, 1e-6), s)


def _norm_flattened_per_token(x, w):
    """A model's [B, S, K] norm whose per-token quant reads it flattened to [B*S, K]."""
    y = models.hf_rms_norm(x, w)
    yf = y.reshape(-1, y.shape[-1]).float()
    scale = (yf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (yf / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), scale


def _norm_per_token(x, w):
    return torch.ops.irfuse.per_token_fp8_quant(torch.ops.irfuse.rms_norm(x, w, 1e-6))


def _norm_nvfp4(x, w, s):
    return torch.ops.irfuse.nvfp4_quant(torch.ops.irfuse.rms_norm(x, w, 1e-6), s)


def _norm_per_tensor(x, w):
    return torch.ops.irfuse.per_tensor_fp8_quant(torch.ops.irfuse.rms_norm(x, w, 1e-6))


class _NormTwice(torch.nn.Module):
    """Two residual adds, each with the same HF RMSNorm (one eps input) + static fp8."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = models.AddNormQuant(256)

    def forward(self, x, residual, scale):
        q, h = self.norm(x, residual, scale)
        q2, h2 = self.norm(x, h, scale)
        return q, q2, h2


class _GemmaNorm(torch.nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(0.1 * torch.randn(256))

    def forward(self, x):
        return models.gemma_rms_norm(x, self.weight, self.eps)


class _SandwichModule(torch.nn.Module):
    """Gemma's post-attention norm, the add, the pre-feedforward norm + static fp8, each
    norm with its module eps (inputs under dynamic=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.post, self.pre = _GemmaNorm(1e-6), _GemmaNorm(1e-5)

    def forward(self, x, residual, scale):
        h = residual + self.post(x)
        return models.static_quant(self.pre(h), scale), h


def _wrapper(fn, *args, dynamic: bool | None = None) -> str:
    """The wrapper Inductor generates for `fn` on `args` (its call fails at the first
    kernel, which was never compiled)."""
    torch._dynamo.reset()
    options = {"graph_launch": "all", "attention": "irfuse"}
    compiled = torch.compile(fn, backend="irfuse", options=options, dynamic=dynamic)
    codes: list[str] = []
    with mock.patch.object(GraphLowering, "save_output_code", codes.append):
        try:
            with torch.no_grad():
                compiled(*args)
        except IndexError:
            pass
    return codes[0]


def _scalars(kernel, args: dict) -> list:
    """The arguments Inductor's wrapper passes a kernel that are not tensors (its
    constexprs are compiled in)."""
    constexprs = {p.name for p in kernel.params if p.is_constexpr}
    return [v for name, v in args.items()
            if name not in constexprs and not isinstance(v, torch.Tensor)]  # fmt: skip


def _described(launches) -> list[dict]:
    return [{"kernel": launch.kernel.__name__, "scalars": _scalars(launch.kernel, launch.args),
             "grid": list(launch.grid)} for launch in launches]  # fmt: skip


def _expected_decode(q, k, v, s, mask=None) -> list[dict]:
    """The summary's launches (with a bool mask: PyTorch's where(mask, 0, -inf) is read
    as the bool mask), then the decode's."""
    summary, tiles, hidden = [], None, None
    if mask is not None:
        hidden = float("-inf")
        summary, (tiles,) = attention.summary_graph_launches(q, k, mask, hidden)
    launches, _ = attention.graph_launches(q, k, v, s, q.shape[-1] ** -0.5, "none", "bs_hd",
                                           False, "static", mask, tiles, hidden)  # fmt: skip
    return _described([*summary, *launches])


def _expected_per_tensor(x, w) -> list[dict]:
    spec = runtime.decode("rms_norm/plain/model/per_tensor")
    outputs = runtime.allocate_outputs(spec, x, False)
    expected = []
    for launched, launch in runtime.per_tensor_launches(spec, x, None, w, outputs, 1e-6):
        kernel = runtime.compiled_kernel(launched)
        args = dict(zip(kernel.arg_names, launch.args, strict=True))
        expected.append({"kernel": launched.name, "scalars": _scalars(kernel, args),
                         "grid": list(launch.grid)})  # fmt: skip
    return expected


def _several_rows_a_program(x, w) -> str:
    """The wrapper of a norm + per-token quant over a token count marked dynamic that
    runs several rows a program (over 256 columns from 64 to 255 rows here, thresholds
    SAMPLE_ROWS holds)."""
    x = x.clone()
    torch._dynamo.mark_dynamic(x, 0)
    limits = {"ROWS_COLS": (x.shape[1],), "ROWS_MIN_ROWS": 64, "ROWS_MAX_ROWS": 256}
    with mock.patch.multiple(runtime, **limits):
        return _wrapper(_norm_per_token, x, w)


def main() -> None:
    _lift_gpu_checks()
    torch._inductor.config.fx_graph_cache = False
    torch._inductor.config.compile_threads = 1  # (in this process, where the patches are)
    bf16 = torch.bfloat16
    q, k, v = (torch.randn(2, h, s, 64, dtype=bf16) for h, s in ((8, 1), (2, 300), (2, 300)))
    x, w, s = torch.randn(600, 256, dtype=bf16), torch.randn(256, dtype=bf16), torch.ones(1)
    mask = torch.rand(2, 1, 1, 300) > 0.3  # a padding mask
    marked = x[:16].clone()
    torch._dynamo.mark_dynamic(marked, 0)
    cases = {
        "decode attention": (_wrapper(_decode_step, q, k, v, s), _expected_decode(q, k, v, s)),
        "masked decode attention": (
            _wrapper(_masked_decode_step, q, k, v, mask, s),
            _expected_decode(q, k, v, s, mask),
        ),
        "per-tensor": (_wrapper(_norm_per_tensor, x, w), _expected_per_tensor(x, w)),
        "symbolic rows": (_wrapper(_norm_static_fp8, marked, w, s), []),
        "symbolic rows, several a program": (_several_rows_a_program(x[:100], w), []),
        "symbolic rows, nvfp4": (_wrapper(_norm_nvfp4, marked, w, s), []),
        "dynamic=True": (_wrapper(_NormTwice().to(bf16), x, x, s, dynamic=True), []),
        "flattened per-token": (_wrapper(_norm_flattened_per_token, x.view(6, 100, 256), w), []),
        "sandwich": (_wrapper(models.gemma_sandwich_quant, x, x.flip(0), w, w.flip(0), s), []),
        "sandwich dynamic=True": (
            _wrapper(_SandwichModule().to(bf16), x, x.flip(0), s, dynamic=True),
            [],
        ),
    }
    print(json.dumps({name: {"code": code, "launches": launches}
                      for name, (code, launches) in cases.items()}))  # fmt: skip


if __name__ == "__main__":
    main()
