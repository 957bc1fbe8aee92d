"""Reference implementations of the irfuse ops as ``torch.library`` custom ops.

Every op lives in the ``irfuse`` library namespace (``torch.ops.irfuse.<name>.default``);
the module-level names are the callable custom-op objects. The bodies are plain,
device-generic PyTorch that follow shared/NUMERICS.md exactly; the fake (meta)
implementations run the same argument checks, so tracing reports bad inputs too.
The dequantizers are plain functions for tests and references.
"""

from .attention import attention, merge_attn_states, mla_attention
from .collective import all_reduce
from .norm import fused_add_rms_norm, rms_norm
from .quant import (
    dequant_fp8,
    dequant_fp8_per_group,
    nvfp4_dequant,
    nvfp4_quant,
    per_group_fp8_quant,
    per_tensor_fp8_quant,
    per_token_fp8_quant,
    static_fp8_quant,
)

__all__ = [
    "all_reduce",
    "attention",
    "dequant_fp8",
    "dequant_fp8_per_group",
    "fused_add_rms_norm",
    "merge_attn_states",
    "mla_attention",
    "nvfp4_dequant",
    "nvfp4_quant",
    "per_group_fp8_quant",
    "per_tensor_fp8_quant",
    "per_token_fp8_quant",
    "rms_norm",
    "static_fp8_quant",
]
