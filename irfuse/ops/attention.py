"""Attention reference ops (see shared/NUMERICS.md, "Attention")."""

from __future__ import annotations

import math

import torch

from ._checks import (
    FLOAT_DTYPES,
    broadcasts_to,
    check_dim,
    check_same_shape,
    check_scalar_scale,
    check_tensor,
    fmt_shape,
    known_true,
)
from .quant import fp8_cast

CAUSAL_KINDS = ("none", "top_left", "bottom_right")
_NEG_INF = float("-inf")


def causal_keep(sq: int, skv: int, kind: str, device: torch.device) -> torch.Tensor | None:
    """Boolean keep-mask ``[sq, skv]`` for a causal kind (None for "none")."""
    if kind == "none":
        return None
    i = torch.arange(sq, device=device).unsqueeze(-1)
    j = torch.arange(skv, device=device).unsqueeze(0)
    offset = 0 if kind == "top_left" else skv - sq
    return j <= i + offset


def _softmax_v(
    scores: torch.Tensor, keep: torch.Tensor | None, vf: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(scores) @ vf in fp32 with fully masked rows giving 0 and lse -inf. The max
    is subtracted before the sum is taken, so that a row whose every score carries the
    same huge finite bias (a dtype-min mask) averages v, as softmax does."""
    if keep is not None:
        scores = scores.masked_fill(~keep, _NEG_INF)
    if scores.shape[-1] == 0:  # no keys: every row is fully masked
        return scores.new_zeros((*scores.shape[:-1], vf.shape[-1])), scores.new_full(
            scores.shape[:-1], _NEG_INF
        )
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max = torch.where(row_max == _NEG_INF, torch.zeros_like(row_max), row_max)
    p = torch.exp(scores - row_max)
    total = p.sum(dim=-1, keepdim=True)
    out = (p @ vf) / torch.where(total > 0, total, torch.ones_like(total))
    return out, (row_max + torch.log(total)).squeeze(-1)


# ---------------------------------------------------------------------------------------
# attention


def _check_attention(q, k, v, attn_mask, causal) -> None:
    op = "attention"
    check_tensor(op, "q", q, dtypes=FLOAT_DTYPES, ndim=4)
    check_tensor(op, "k", k, dtypes=(q.dtype,), ndim=4, device=q.device)
    check_tensor(op, "v", v, dtypes=(q.dtype,), ndim=4, device=q.device)
    check_dim(op, "k", k, 0, q.shape[0], "batch of q")
    check_dim(op, "v", v, 0, q.shape[0], "batch of q")
    check_dim(op, "k", k, 3, q.shape[3], "head dim of q")
    check_dim(op, "v", v, 1, k.shape[1], "kv heads of k")
    check_dim(op, "v", v, 2, k.shape[2], "kv length of k")
    hq, hkv = q.shape[1], k.shape[1]
    if known_true(hkv == 0) or known_true(hq % hkv != 0):
        raise ValueError(
            f"irfuse.{op}: query heads ({hq}) must be a multiple of kv heads ({hkv}) "
            f"(Hq % Hkv == 0), got q {fmt_shape(q)} and k {fmt_shape(k)}"
        )
    if causal not in CAUSAL_KINDS:
        raise ValueError(f"irfuse.{op}: causal must be one of {CAUSAL_KINDS}, got {causal!r}")
    if attn_mask is not None:
        if causal != "none":
            raise ValueError(f"irfuse.{op}: attn_mask and causal={causal!r} cannot be combined")
        check_tensor(
            op, "attn_mask", attn_mask, dtypes=(torch.bool, *FLOAT_DTYPES), device=q.device
        )
        target = (q.shape[0], hq, q.shape[2], k.shape[2])
        if not broadcasts_to(attn_mask.shape, target):
            raise ValueError(
                f"irfuse.{op}: attn_mask of shape {fmt_shape(attn_mask)} does not broadcast "
                f"to [B, Hq, Sq, Skv] = {list(target)}"
            )


@torch.library.custom_op("irfuse::attention", mutates_args=())
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    causal: str = "none",
    return_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q k^T * scale + mask) v with GQA; returns (out [B,Hq,Sq,Dv], lse [B,Hq,Sq] | [0]).

    causal: "none", "top_left" (tril) or "bottom_right" (query i sees keys j <= i + Skv - Sq).
    attn_mask: bool (True = keep) or additive float, broadcastable to [B, Hq, Sq, Skv].
    """
    _check_attention(q, k, v, attn_mask, causal)
    hq, hkv = q.shape[1], k.shape[1]
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    kf, vf = k.float(), v.float()
    if hq != hkv:
        kf = kf.repeat_interleave(hq // hkv, dim=1)
        vf = vf.repeat_interleave(hq // hkv, dim=1)
    scores = (q.float() @ kf.transpose(-2, -1)) * sm_scale
    keep = causal_keep(q.shape[2], k.shape[2], causal, q.device)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            keep = attn_mask
        else:
            scores = scores + attn_mask.float()
    out, lse = _softmax_v(scores, keep, vf)
    if not return_lse:
        lse = q.new_empty((0,), dtype=torch.float32)
    return out.to(q.dtype).contiguous(), lse.contiguous()


@attention.register_fake
def _(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    scale: float | None = None,
    causal: str = "none",
    return_lse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_attention(q, k, v, attn_mask, causal)
    b, hq, sq = q.shape[0], q.shape[1], q.shape[2]
    out = q.new_empty((b, hq, sq, v.shape[3]))
    lse_shape = (b, hq, sq) if return_lse else (0,)
    return out, q.new_empty(lse_shape, dtype=torch.float32)


# ---------------------------------------------------------------------------------------
# MLA (DeepSeek-style latent attention)


def _check_mla(q, kv_c, k_pe, w_uk, w_uv) -> None:
    op = "mla_attention"
    check_tensor(op, "q", q, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor(op, "kv_c", kv_c, dtypes=(q.dtype,), ndim=2, device=q.device)
    check_tensor(op, "k_pe", k_pe, dtypes=(q.dtype,), ndim=3, device=q.device)
    check_tensor(op, "w_uk", w_uk, dtypes=FLOAT_DTYPES, ndim=3, device=q.device)
    check_tensor(op, "w_uv", w_uv, dtypes=FLOAT_DTYPES, ndim=3, device=q.device)
    check_dim(op, "k_pe", k_pe, 0, kv_c.shape[0], "Tk (kv_c.shape[0])")
    check_dim(op, "k_pe", k_pe, 1, 1, "1")
    check_dim(op, "w_uk", w_uk, 0, q.shape[1], "N (q.shape[1])")
    check_dim(op, "w_uk", w_uk, 2, kv_c.shape[1], "L (kv_c.shape[1])")
    check_dim(op, "w_uv", w_uv, 0, q.shape[1], "N (q.shape[1])")
    check_dim(op, "w_uv", w_uv, 1, kv_c.shape[1], "L (kv_c.shape[1])")
    check_dim(op, "q", q, 2, w_uk.shape[1] + k_pe.shape[2], "Dn + Dr")


@torch.library.custom_op("irfuse::mla_attention", mutates_args=())
def mla_attention(
    q: torch.Tensor,
    kv_c: torch.Tensor,
    k_pe: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    scale: float,
    causal: bool,
) -> torch.Tensor:
    """MLA in the expanded form, fp32 math; causal is bottom-right; out [T, N*Dv] in q dtype."""
    _check_mla(q, kv_c, k_pe, w_uk, w_uv)
    t, n = q.shape[0], q.shape[1]
    tk = kv_c.shape[0]
    dr = k_pe.shape[2]
    kvf = kv_c.float()
    k_nope = torch.einsum("ndl,tl->tnd", w_uk.float(), kvf)
    v = torch.einsum("tl,nlv->ntv", kvf, w_uv.float())
    k = torch.cat((k_nope, k_pe.float().expand(tk, n, dr)), dim=-1)
    scores = torch.einsum("tnd,snd->nts", q.float(), k) * scale
    keep = causal_keep(t, tk, "bottom_right" if causal else "none", q.device)
    out, _ = _softmax_v(scores, keep, v)  # [N, T, Dv]
    return out.transpose(0, 1).reshape(t, n * w_uv.shape[2]).to(q.dtype).contiguous()


@mla_attention.register_fake
def _(
    q: torch.Tensor,
    kv_c: torch.Tensor,
    k_pe: torch.Tensor,
    w_uk: torch.Tensor,
    w_uv: torch.Tensor,
    scale: float,
    causal: bool,
) -> torch.Tensor:
    _check_mla(q, kv_c, k_pe, w_uk, w_uv)
    return q.new_empty((q.shape[0], q.shape[1] * w_uv.shape[2]))


# ---------------------------------------------------------------------------------------
# merge of two partial attention states


def _check_merge(p_out, p_lse, s_out, s_lse, output_scale) -> None:
    op = "merge_attn_states"
    check_tensor(op, "p_out", p_out, dtypes=FLOAT_DTYPES, ndim=3)
    check_tensor(op, "s_out", s_out, dtypes=(p_out.dtype,), device=p_out.device)
    check_same_shape(op, "s_out", s_out, "p_out", p_out)
    check_tensor(op, "p_lse", p_lse, dtypes=(torch.float32,), ndim=2, device=p_out.device)
    check_tensor(op, "s_lse", s_lse, dtypes=(torch.float32,), device=p_out.device)
    check_dim(op, "p_lse", p_lse, 0, p_out.shape[1], "H (p_out.shape[1])")
    check_dim(op, "p_lse", p_lse, 1, p_out.shape[0], "T (p_out.shape[0])")
    check_same_shape(op, "s_lse", s_lse, "p_lse", p_lse)
    if output_scale is not None:
        check_scalar_scale(op, "output_scale", output_scale, p_out.device)


def _weighted(partial: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """partial * weight in fp32, 0 where the weight is 0 (the partial then counts for
    nothing, NaN or not)."""
    return torch.where(weight > 0, partial.float() * weight, 0.0)


@torch.library.custom_op("irfuse::merge_attn_states", mutates_args=())
def merge_attn_states(
    p_out: torch.Tensor,
    p_lse: torch.Tensor,
    s_out: torch.Tensor,
    s_lse: torch.Tensor,
    output_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial attention results by their lse; returns (out [T,H,D], lse [H,T]).

    +inf lse counts as -inf; both -inf gives out 0 and lse -inf. A partial of weight 0
    (lse -inf: no keys) adds nothing, even where its output is NaN (a naive softmax over
    no keys gives 0/0). With output_scale the output is static fp8 quantized.
    """
    _check_merge(p_out, p_lse, s_out, s_lse, output_scale)
    inf = float("inf")
    pl = p_lse.masked_fill(p_lse == inf, _NEG_INF)
    sl = s_lse.masked_fill(s_lse == inf, _NEG_INF)
    m = torch.maximum(pl, sl)
    m = torch.where(m == _NEG_INF, torch.zeros_like(m), m)
    ps, ss = torch.exp(pl - m), torch.exp(sl - m)
    total = ps + ss
    denom = torch.where(total > 0, total, torch.ones_like(total))
    wp = (ps / denom).t().unsqueeze(-1)
    ws = (ss / denom).t().unsqueeze(-1)
    out = _weighted(p_out, wp) + _weighted(s_out, ws)
    out_lse = (torch.log(total) + m).contiguous()
    if output_scale is not None:
        return fp8_cast(out * (1.0 / output_scale.reshape(()))), out_lse
    return out.to(p_out.dtype).contiguous(), out_lse


@merge_attn_states.register_fake
def _(
    p_out: torch.Tensor,
    p_lse: torch.Tensor,
    s_out: torch.Tensor,
    s_lse: torch.Tensor,
    output_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_merge(p_out, p_lse, s_out, s_lse, output_scale)
    dtype = p_out.dtype if output_scale is None else torch.float8_e4m3fn
    out = p_out.new_empty(p_out.shape, dtype=dtype)
    return out, p_lse.new_empty(p_lse.shape, dtype=torch.float32)
