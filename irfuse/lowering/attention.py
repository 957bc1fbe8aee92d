"""irfuse.attention -> generated Triton attention kernel, and its runtime op.

`torch.ops.irfuse.kernel_attention` launches the flash-attention forward of
irfuse/kernels/attention.py with an epilogue (none or static fp8), writing the
[B, H, Sq, Dv] or [B, Sq, H*Dv] layout. Checks shapes, dtypes and devices only.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import triton

from irfuse.kernels import attention as pieces
from irfuse.kernels.norm import ROUND_TO
from irfuse.kernels.quant import ROUND_TO_E4M3
from irfuse.lowering.kernel_cache import load_kernel
from irfuse.lowering.runtime import FP8, INTERPRET

EPILOGUES = tuple(pieces.EPILOGUE)
CAUSAL = {"none": 0, "top_left": 1, "bottom_right": 2}
HEAD_DIMS = (16, 32, 64, 128, 256)


def kernel_name(epilogue: str) -> str:
    return "irfuse_attention" + ("" if epilogue == "none" else f"_{epilogue}_fp8")


def attention_source(epilogue: str) -> str:
    if epilogue not in EPILOGUES:
        raise ValueError(f"no attention epilogue {epilogue!r} (have {EPILOGUES})")
    fuses = "attention" + ("" if epilogue == "none" else f" + {epilogue} fp8 quant")
    body = (
        pieces.SIGNATURE.format(name=kernel_name(epilogue))
        + pieces.PRELOAD[epilogue] + pieces.BODY + pieces.EPILOGUE[epilogue]
    )  # fmt: skip
    return (
        f'"""irfuse generated kernel {kernel_name(epilogue)}.\n\nFuses: {fuses}.\n'
        'Flash-attention forward; see irfuse/kernels/attention.py."""\n\n'
        "import triton\nimport triton.language as tl\n"
        f"{ROUND_TO}{ROUND_TO_E4M3}\n{body}"
    )


@functools.cache
def compiled_attention(epilogue: str) -> Any:
    return load_kernel(kernel_name(epilogue), attention_source(epilogue))


def attention_config(head_dim: int, seq_q: int, seq_kv: int) -> dict[str, int]:
    """Tiles and warps (TOOLCHAIN.md's best seen on H200; small for the interpreter)."""
    if INTERPRET:
        return {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1}
    if head_dim <= 64:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}
    if head_dim <= 128:
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2}
    return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 8, "num_stages": 2}


def _check(q, k, v, scale, causal, layout, epilogue) -> None:
    what = f"irfuse.kernel_attention ({epilogue})"
    if epilogue not in EPILOGUES or causal not in CAUSAL or layout not in ("bhsd", "bs_hd"):
        raise ValueError(f"{what}: unknown epilogue, causal kind or layout")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4 or t.dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise TypeError(f"{what}: {name} must be a 4-D bf16/fp16/fp32 tensor")
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{what}: q, k, v must share dtype and device")
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"{what}: batch sizes {q.shape[0]} / {k.shape[0]} / {v.shape[0]} differ")
    if q.shape[1] % k.shape[1] or k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"{what}: heads {q.shape[1]} / {k.shape[1]} / {v.shape[1]} mismatch")
    if q.shape[-1] != k.shape[-1] or q.shape[-1] not in HEAD_DIMS or v.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"{what}: head dims must be equal for q, k and in {HEAD_DIMS}")
    if epilogue == "static" and (scale is None or scale.numel() != 1 or
                                 scale.dtype != torch.float32):  # fmt: skip
        raise ValueError(f"{what}: static fp8 needs a one-element float32 scale")
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(f"{what}: runs on CUDA tensors (CPU needs TRITON_INTERPRET=1)")


def _allocate(q: torch.Tensor, v: torch.Tensor, layout: str, epilogue: str, return_lse: bool):
    b, h, sq, dv = q.shape[0], q.shape[1], q.shape[2], v.shape[-1]
    dtype = FP8 if epilogue == "static" else q.dtype
    shape = (b, h, sq, dv) if layout == "bhsd" else (b, sq, h * dv)
    lse = q.new_empty((b, h, sq), dtype=torch.float32) if return_lse else q.new_empty(0)
    return q.new_empty(shape, dtype=dtype), lse


@torch.library.custom_op("irfuse::kernel_attention", mutates_args=())
def kernel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: torch.Tensor | None,
    sm_scale: float,
    causal: str,
    layout: str,
    return_lse: bool,
    epilogue: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [B,Hq,Sq,D] against k, v [B,Hkv,Skv,D(v)]; returns (out, lse)."""
    _check(q, k, v, scale, causal, layout, epilogue)
    out, lse = _allocate(q, v, layout, epilogue, return_lse)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    b, h, sq, d = q.shape
    seq_kv, dv = k.shape[2], v.shape[-1]
    if out.numel() == 0:
        return out, lse
    if layout == "bhsd":
        o_strides = out.stride()[:3]
    else:  # [B, S, H*Dv]: head h starts at column h*Dv
        o_strides = (out.stride(0), dv, out.stride(1))
    config = attention_config(d, sq, seq_kv)
    grid = (triton.cdiv(sq, config["BLOCK_M"]), b * h)
    compiled_attention(epilogue)[grid](
        q, k, v, scale if scale is not None else q, out, lse if return_lse else out,
        sm_scale, sq, seq_kv, h // k.shape[1],
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o_strides, h,
        HEAD_DIM=d, HEAD_DIM_V=dv, CAUSAL=CAUSAL[causal], HAS_LSE=return_lse,
        INTERPRET=INTERPRET, **config,
    )  # fmt: skip
    return out, lse


@kernel_attention.register_fake
def _(q, k, v, scale, sm_scale, causal, layout, return_lse, epilogue):
    _check(q, k, v, scale, causal, layout, epilogue)
    return _allocate(q, v, layout, epilogue, return_lse)
