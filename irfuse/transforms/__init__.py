"""irfuse passes: one per file; `PASSES` maps each name to a lazy factory."""

from __future__ import annotations

from collections.abc import Callable

from xdsl.passes import ModulePass
from xdsl.utils.exceptions import ArgSpecParseError


def _raise_rms_norm() -> type[ModulePass]:
    from irfuse.transforms.raise_rms_norm import RaiseRmsNorm

    return RaiseRmsNorm


def _raise_fp8_quant() -> type[ModulePass]:
    from irfuse.transforms.raise_fp8_quant import RaiseFp8Quant

    return RaiseFp8Quant


def _raise_dynamic_fp8_quant() -> type[ModulePass]:
    from irfuse.transforms.raise_dynamic_fp8_quant import RaiseDynamicFp8Quant

    return RaiseDynamicFp8Quant


def _fuse_add_rms_norm() -> type[ModulePass]:
    from irfuse.transforms.fuse_add_rms_norm import FuseAddRmsNorm

    return FuseAddRmsNorm


def _fuse_sandwich_norm() -> type[ModulePass]:
    from irfuse.transforms.fuse_sandwich_norm import FuseSandwichNorm

    return FuseSandwichNorm


def _fuse_norm_add_quant() -> type[ModulePass]:
    from irfuse.transforms.fuse_norm_add_quant import FuseNormAddQuant

    return FuseNormAddQuant


def _fuse_rms_norm_quant() -> type[ModulePass]:
    from irfuse.transforms.fuse_quant import FuseRmsNormQuant

    return FuseRmsNormQuant


def _fuse_attention_quant() -> type[ModulePass]:
    from irfuse.transforms.fuse_attention_quant import FuseAttentionQuant

    return FuseAttentionQuant


PASSES: dict[str, Callable[[], type[ModulePass]]] = {
    "fuse-attention-quant": _fuse_attention_quant,
    "raise-rms-norm": _raise_rms_norm,
    "raise-fp8-quant": _raise_fp8_quant,
    "raise-dynamic-fp8-quant": _raise_dynamic_fp8_quant,
    "fuse-add-rms-norm": _fuse_add_rms_norm,
    "fuse-sandwich-norm": _fuse_sandwich_norm,
    "fuse-norm-add-quant": _fuse_norm_add_quant,
    "fuse-rms-norm-quant": _fuse_rms_norm_quant,
}

DEFAULT_PIPELINE = (
    "fuse-attention-quant",  # first: it reads the quant in its aten form
    "raise-rms-norm",
    "raise-fp8-quant",
    "raise-dynamic-fp8-quant",
    "fuse-add-rms-norm",
    "fuse-sandwich-norm",  # after fuse-add-rms-norm: it reads the fused add + norm
    "fuse-norm-add-quant",  # after fuse-add-rms-norm: a sum that a norm reads goes there
    "fuse-rms-norm-quant",
)


def pipeline_error(error: ArgSpecParseError) -> str:
    """xDSL's listing of a malformed pass pipeline as one line: where, then what."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    where = next((line for line in lines if line.startswith("pass-pipeline:")), "")
    return f"{where.removeprefix('pass-pipeline:')}: {lines[-1]}" if where else lines[-1]
