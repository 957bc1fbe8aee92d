"""fuse-attention-quant: quantize the attention output inside the attention kernel.

Matches (the usual layout change before the output projection, then a quant):

    o = irfuse.attention(q, k, v [mask m])         # layout bhsd, no lse
    t = o.transpose(1, 2)  (or permute [0, 2, 1, 3]) [.clone(contiguous)]
                                                   (none with one query row, Sq = 1)
    y = t.view / reshape / _unsafe_view([B, Sq, Hq*Dv])  [.view([B*Sq, Hq*Dv])]
    q8 = a quant of y: static fp8 in any form raise-fp8-quant accepts, dynamic per-token
         fp8 in any form raise-dynamic-fp8-quant accepts (torchao's per-row scale too:
         `per_token in_dtype`), or an `irfuse.quant` (static, per_token, nvfp4; from a
         direct torch.ops.irfuse.* call)

Guards: every intermediate has this chain as its only reader; head dims multiples of 16
up to 256; a scale of at least 0; rows of Hq*Dv up to the kernels' MAX_COLS; at a
symbolic batch and query length, a 3-D view only where the importer marks it as keeping
[B, Sq] (irfuse.kept_dims: in the types [Sq, B] looks the same); symbolic heads are
refused (a 2-D [Sq, B*Hq*Dv] looks like [B*Sq, Hq*Dv]); per-token: static shapes on the
decode kernel's side (Hq/Hkv * Sq <= 64, Hkv the kv heads the fused kernel reads,
unrepeated: its scale spans all heads of a token, which only the decode kernel holds;
its scales are [B, Sq, 1], or [B*Sq, 1] for the 2-D view); nvfp4 quantizes the 2-D
[B*Sq, Hq*Dv] view; and the chooser (`attention` option: measured on the GPU in `auto`)
prefers the fused kernel.
Replacement: `irfuse.attention` with layout `bs_hd` and the quant's scheme, writing the
quantized [B, Sq, Hq*Dv] (or its 2-D view) and scales directly. K and V repeated for GQA
in model code (`x[:, :, None].expand(B, Hkv, n, S, D).reshape(B, Hkv*n, S, D)`, HF's
`repeat_kv`) are read unrepeated: the kernel maps heads itself. (The same expand viewed
as [B, Hkv, n*S, D] repeats keys along the sequence: read as it is.)
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern
from xdsl.rewriter import InsertPoint

from irfuse.dialects.aten import CallOp, dtype_name
from irfuse.dialects.irfuse import DYNAMIC, AttentionOp, QuantAttr, QuantOp
from irfuse.frontend.size_examples import Shape
from irfuse.kernels.attention import (
    DECODE_MAX_ROWS,
    DECODE_ONLY,
    EPILOGUES,
    HEAD_DIM_RULE,
    NEGATIVE_SCALE,
    holds_token_rows,
    takes_head_dim,
)
from irfuse.kernels.norm import MAX_COLS
from irfuse.transforms import policy, report
from irfuse.transforms.match import (
    VIEWS,
    call,
    const_arg,
    erase_dead,
    fused_insertion_point,
    int_list_arg,
    keeps_dims,
    position,
    tensor_arg,
    users,
)
from irfuse.transforms.raise_dynamic_fp8_quant import match_dynamic_quant
from irfuse.transforms.raise_fp8_quant import StaticQuantMatch, match_static_quant

NAME = "fuse-attention-quant"


@dataclass
class _Quant:
    """A quant of `source`, whatever form it was written in."""

    source: SSAValue
    quant: QuantAttr
    scale_in: SSAValue | None
    out: SSAValue
    """Replaced by the fused op's `out`."""
    scales: list[SSAValue]
    """Replaced by the fused op's `scale_out`."""
    scale_type: Attribute | None
    dead_ops: list[Operation]
    """Erased once unused (the quant's last op is erased by the rewrite)."""


def _quant_at(op: Operation) -> _Quant | str | None:
    """The quant that ends at `op`, why it cannot be fused, or None if it ends none."""
    if isinstance(op, QuantOp):
        scales = [op.scale_out] if op.scale_out is not None else []
        scale_type = op.scale_out.type if op.scale_out is not None else None
        return _Quant(op.x, op.quant, op.quant_scale, op.out, scales, scale_type, [])
    if not isinstance(op, CallOp):
        return None
    static = match_static_quant(op)
    if isinstance(static, StaticQuantMatch):
        return _Quant(static.source, static.quant, static.scale, op.results[0], [],
                      None, static.dead_ops)  # fmt: skip
    dynamic = match_dynamic_quant(op)
    if dynamic is None or isinstance(dynamic, str):
        return static if isinstance(static, str) else dynamic
    dead = [o for o in dynamic.ops if o is not op] + dynamic.dead_if_unused
    return _Quant(dynamic.source, dynamic.quant, dynamic.ub, dynamic.q, dynamic.scales,
                  dynamic.scale_type, dead)  # fmt: skip


def _layout_chain(y: SSAValue) -> tuple[AttentionOp, list[Operation]] | None:
    """The attention whose [B, H, S, D] output `y` is, moved to [B, S, H*D] (or its 2-D
    view [B*S, H*D]); with one query row (static) the views alone do it."""
    views: list[Operation] = []
    moved: SSAValue | None = y
    while len(views) < 2 and (view := call(moved, *VIEWS)) is not None:
        views.append(view)
        moved = tensor_arg(view, 0)
    if not views or moved is None:
        return None
    chain = views
    clone = call(moved, "aten.clone.default")
    if clone is not None:
        chain.append(clone)
        moved = tensor_arg(clone, 0)
    if isinstance(moved.owner, AttentionOp) and moved.type.get_shape()[2] == 1:
        return moved.owner, chain  # one query row: [B, H, 1, D] is already [B, 1, H*D]
    transpose = call(moved, "aten.transpose.int", "aten.permute.default")
    if transpose is None or (source := tensor_arg(transpose, 0)) is None:
        return None
    if transpose.target.data == "aten.transpose.int":
        swapped = {const_arg(transpose, 1), const_arg(transpose, 2)}
        ok = all(isinstance(d, int) for d in swapped) and {d % 4 for d in swapped} == {1, 2}
    else:
        ok = int_list_arg(transpose, 1) == [0, 2, 1, 3]
    attention = source.owner
    if not ok or not isinstance(attention, AttentionOp):
        return None
    return attention, [*chain, transpose]


def _unrepeated(value: SSAValue) -> tuple[SSAValue, int] | None:
    """(kv, n) if `value` is `kv` [B, Hkv, S, D] repeated n times per head (repeat_kv:
    expanded to [B, Hkv, n, S, D], viewed as [B, Hkv*n, S, D]; the same expand viewed as
    [B, Hkv, n*S, D] repeats the keys along the sequence, and is not this)."""
    view = call(value, *VIEWS)
    expanded = tensor_arg(view, 0) if view is not None else None
    clone = call(expanded, "aten.clone.default")
    if clone is not None:
        expanded = tensor_arg(clone, 0)
    expand = call(expanded, "aten.expand.default")
    unsqueeze = call(tensor_arg(expand, 0), "aten.unsqueeze.default") if expand else None
    if unsqueeze is None or const_arg(unsqueeze, 1) != 2:
        return None
    source = tensor_arg(unsqueeze, 0)
    sizes = int_list_arg(expand, 1)
    if source is None or sizes is None or len(sizes) != 5:
        return None
    b, hkv, s, d = source.type.get_shape()
    if sizes[:2] != [b, hkv] or sizes[3:] != [s, d] or sizes[2] < 1:
        return None
    if value.type.get_shape() != (b, hkv * sizes[2], s, d):  # type: ignore[attr-defined]
        return None
    return source, sizes[2]


def _repeat_ops(value: SSAValue) -> list[Operation]:
    """The ops of a repeat_kv chain ending at `value` (empty if it is none)."""
    ops: list[Operation] = []
    while isinstance(value.owner, CallOp) and value.owner.target.data in (
        *VIEWS,
        "aten.clone.default",
        "aten.expand.default",
        "aten.unsqueeze.default",
    ):
        ops.append(value.owner)
        value = value.owner.inputs[0]
    return ops


def _kv_operands(attention: AttentionOp) -> tuple[SSAValue, SSAValue]:
    """K and V as the kernel should read them: unrepeated when both were repeated alike."""
    k, v = _unrepeated(attention.k), _unrepeated(attention.v)
    if k is not None and v is not None and k[1] == v[1]:
        return k[0], v[0]
    return attention.k, attention.v


@dataclass
class FuseAttentionQuantPattern(RewritePattern):
    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        found = _quant_at(op)
        if not isinstance(found, _Quant) or (layout := _layout_chain(found.source)) is None:
            return
        attention, chain = layout
        scales = [found.scale_in] if found.scale_in is not None else []
        operands = [*attention.operands, *scales]
        before = fused_insertion_point([attention, *chain, op], operands)
        before = before or _at_the_quant(op, operands, found)
        reason = _guard(attention, chain, found)
        if reason is None and before is None:
            reason = "no place for the fused op"
        if reason is None:  # last: under attention=auto this times both candidates
            kind = f"attention+{found.quant.text}"  # the epilogue the kernel runs
            fuse, reason = policy.choose(kind, *_signatures(attention))
            if fuse:  # the measurement (or the option) that chose the fused kernel
                report.note(f"{NAME} chose the fused kernel: {reason}")
                reason = None
        if reason is not None or before is None:
            report.rejected(NAME, op, reason or "no place for the fused op")
            return
        props = {
            "scale": attention.scale, "causal": attention.causal,
            "layout": StringAttr("bs_hd"), "quant": found.quant,
        }  # fmt: skip
        k, v = _kv_operands(attention)
        new = AttentionOp.build(
            operands=[attention.q, k, v, [attention.mask] if attention.mask else [], scales],
            result_types=[found.out.type, [], [found.scale_type] if found.scales else []],
            properties=props,
        )
        rewriter.insert(new, InsertPoint.before(before))
        new.out.name_hint = found.out.name_hint
        rewriter.replace_all_uses_with(found.out, new.out)
        for scale in found.scales:
            assert new.scale_out is not None
            new.scale_out.name_hint = scale.name_hint
            rewriter.replace_all_uses_with(scale, new.scale_out)
        rewriter.erase(op)
        repeats = [op for kv in (attention.k, attention.v) for op in _repeat_ops(kv)]
        erase_dead(rewriter, [*found.dead_ops, *chain, attention, *repeats])
        report.fused(NAME)


def _at_the_quant(op: Operation, operands: list[SSAValue], found: _Quant) -> Operation | None:
    """The quant's last op `op` as the fused op's place, where its scale is made after the
    attention (Inductor schedules a cast or view of it late): every operand is defined
    before it, and the scales the fused op replaces are read, outside the quant's own
    ops, only after it."""
    if fused_insertion_point([op], operands) is not op:
        return None
    own = [op, *found.dead_ops]
    readers = [user for scale in found.scales for user in users(scale) if user not in own]
    return op if all(position(user) > position(op) for user in readers) else None


def _guard(attention: AttentionOp, chain: list[Operation], found: _Quant) -> str | None:
    scheme = found.quant.scheme
    if scheme not in EPILOGUES:
        return f"no attention kernel ends with a {scheme} quant (have {EPILOGUES[1:]})"
    if attention.lse is not None or attention.output_quant() is not None:
        return "the attention already has an lse output or an epilogue"
    # each value on the way is read only by the next op or the quant (in fp32 the amax and
    # the division of a dynamic quant both read the view, with no cast between)
    own = {*chain, *found.dead_ops, found.out.owner}
    for value in [attention.out, *(o.results[0] for o in chain)]:
        if any(user not in own for user in users(value)):
            return f"%{value.name_hint} is also read outside the attention and its quant"
    head_dims = (attention.q.type.get_shape()[-1], attention.v.type.get_shape()[-1])
    if not all(takes_head_dim(d) for d in head_dims):
        shown = ", ".join("?" if d == DYNAMIC else str(d) for d in head_dims)
        return f"head dims ({shown}) are not {HEAD_DIM_RULE}"
    if attention.scale.value.data < 0:
        return f"a negative scale ({attention.scale.value.data}: {NEGATIVE_SCALE})"
    b, h, s, dv = attention.out.type.get_shape()
    if DYNAMIC in (h, dv):  # [S, B*H*D] would compare equal to [B*S, H*D]
        return (
            "symbolic heads: the output's views cannot be told apart ([Sq, B*Hq*Dv] from "
            "[B*Sq, Hq*Dv])"
        )
    hd = h * dv
    if hd > MAX_COLS:
        return f"rows of Hq*Dv = {hd} (the kernels take {MAX_COLS})"
    rows = b * s if DYNAMIC not in (b, s) else DYNAMIC
    shape = found.source.type.get_shape()
    if shape not in ((b, s, hd), (rows, hd)):
        return f"the output is reshaped to {found.source.type}, not [B, Sq, Hq*Dv]"
    # [Sq, B, Hq*Dv] compares equal in the types: the importer marks a view that keeps
    # its input's first two dims, which every view from the transposed [B, Sq, Hq, Dv] on
    # must
    views = [op for op in chain if isinstance(op, CallOp) and op.target.data in VIEWS]
    if len(shape) == 3 and b == s == DYNAMIC and not all(keeps_dims(v, 2) for v in views):
        return (
            "the output is reshaped to [?, ?, Hq*Dv], not known to be [B, Sq] (at a symbolic "
            "batch and query length [Sq, B] looks the same; the 2-D [B*Sq, Hq*Dv] view fuses)"
        )
    if scheme == "nvfp4" and len(shape) != 2:
        return "an nvfp4 quant of the 3-D output (its packed bytes and scales are 2-D)"
    hkv = _kv_operands(attention)[0].type.get_shape()[1]  # as the fused op reads K/V
    if scheme in DECODE_ONLY:
        if not holds_token_rows(s, h, hkv):
            return (
                f"a {scheme} scale spans all heads of a token: only the decode kernel "
                f"(Hq/Hkv * Sq <= {DECODE_MAX_ROWS}, static shapes) fuses it"
            )
    return None


def _signatures(attention: AttentionOp) -> tuple[dict[str, object], list[dict[str, object]]]:
    """What the chooser times: the operands' shapes (K and V as the fused kernel reads
    them, unrepeated), and when some are dynamic, the same at the example sizes."""
    values = [attention.q, _kv_operands(attention)[1], attention.mask]
    shapes = [None if x is None else tuple(x.type.get_shape()) for x in values]  # type: ignore[attr-defined]
    signature = _signature(attention, *shapes)
    if not any(DYNAMIC in shape for shape in shapes if shape is not None):
        return signature, []
    return signature, [_signature(attention, *point) for point in policy.example_shapes(values)]


def _signature(
    attention: AttentionOp, q: Shape | None, v: Shape | None, mask: Shape | None
) -> dict[str, object]:
    assert q is not None and v is not None
    b, hq, sq, d = q
    _, hkv, skv, dv = v
    dtype = dtype_name(attention.q.type.element_type)
    return {
        "batch": b, "heads_q": hq, "heads_kv": hkv, "seq_q": sq, "seq_kv": skv,
        "head_dim": d, "head_dim_v": dv, "dtype": dtype,
        "causal": attention.causal.data, "scale": attention.scale.value.data,
        "mask": _mask_signature(attention, mask),
    }  # fmt: skip


def _mask_signature(attention: AttentionOp, shape: Shape | None) -> str:
    """ "none", or the explicit mask's dtype and shape ("bool 1x1x128x128", "?": dynamic)."""
    if shape is None:  # no mask
        return "none"
    dims = "x".join(str(d) if d != DYNAMIC else "?" for d in shape)
    return f"{dtype_name(attention.mask.type.element_type)} {dims}"  # type: ignore[attr-defined]


@dataclass(frozen=True)
class FuseAttentionQuant(ModulePass):
    name = NAME

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        pattern = FuseAttentionQuantPattern()
        PatternRewriteWalker(pattern, apply_recursively=False).rewrite_module(op)
