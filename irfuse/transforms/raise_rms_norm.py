"""raise-rms-norm: recognise RMSNorm written in plain PyTorch.

Matches, for any eps and hidden size (`xf` is `x` cast to fp32, or `x` if fp32):

    n = xf * rsqrt(mean(xf ** 2, [-1], keepdim=True) + eps)    (mul in either order;
        `xf * xf` for the square; the product's xf may be x itself, promoted by the fp32
        rsqrt as T5's norm writes it, or a second cast of x to fp32)
    y = n.to(dt) * w              -- HF LlamaRMSNorm (w * n.to(dt) too)
    y = (n * w).to(dt)            -- F.rms_norm's decomposition        -> fp32_weight_mul
    y = n * w  [.to(float32)]     -- the same, Inductor having dropped the round trip
                                     through dt before an fp32 consumer -> f32 result
    y = (n * (w.float() + 1)).to(dt)  -- Gemma                        -> gemma
                                     (`1 + w` in bf16/fp16 rounds: it is then the weight
                                     of the form above, computed outside the norm)

in both the AOT form (`_to_copy`, `add.Tensor`) and Inductor's post-grad form
(`convert_element_type`, `add.Scalar`).

A norm of `h = a.float() + b.float()` (`a`, `b` 16-bit, one type: vLLM's native
RMSNorm keeps the residual sum in fp32), with the forms above after its cast back,
becomes `irfuse.fused_add_rms_norm(a, b, w)` with the unrounded sum (NUMERICS.md's: the
variance on the fp32 sum); `h.to(dt)`, the residual stream, reads its `residual_out`.
Guards: `h` has no other fp32 reader; the fused op has a place where a, b, w are defined
and before every reader of its results.

eps is a constant, or a graph input marked `irfuse.host_scalar` (a 0-d f32/f64 CPU
tensor: what `torch.compile(dynamic=True)` makes of a module's float eps), seen through
casts to f64 / f32; the raised op then reads it at each launch (its `eps` operand).

Not matched, with its reason: `xf / sqrt(mean(xf ** 2) + eps)` (the kernels' rsqrt may
round differently).

Unless `standalone=true`, a norm is raised only where irfuse's kernel beats the one
Inductor makes of it: one fp8 quant (that the raise passes take) reads its value (or
identical ones, which they make one), not several that differ (Inductor writes them all
from the norm's kernel; an irfuse norm kernel ends with one quant), its value is not
also read by pointwise ops (which Inductor computes in the same kernel; a matmul
reading it is fine, the kernel also writes the value), and its input is not
computed from another reduction through pointwise ops (a sandwich norm: Inductor
computes both in one kernel). A norm with no quant makes the same one pass over memory
in Inductor's kernel, which also takes in the ops around it; except a sandwich's first
norm, whose result only a residual add reads, the sum's norm quantized as above (same
weight form, and a place for the add and that norm to be one op): both are raised, and
fuse-sandwich-norm makes one kernel of the two norms, the add and the quant; and a
post-norm (OLMo 2's `h = r + norm(x)`), whose result only a residual add reads, one
quant reads the sum and no norm does: fuse-norm-add-quant makes one kernel of the norm,
the add and the quant.

Guards: the mean is over the last dim with keepdim; the eps add has alpha 1 (Gemma's
`1 + w` too: `w + 1 * alpha` is a computed weight, of the fp32 form); the weight is 1-D
of the hidden size with the input's dtype (fp32 allowed for Gemma); no intermediate value
has a user outside the chain; an input eps is on the host, and Inductor's CUDA graphs are off (they
cannot replay a kernel reading a host value). Replacement: one `irfuse.rms_norm`.
"""

from __future__ import annotations

from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects.builtin import Float64Type, FloatAttr, ModuleOp, UnitAttr
from xdsl.ir import Attribute, BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from irfuse.dialects.aten import CallOp, dtype_name
from irfuse.dialects.irfuse import DYNAMIC, FLOAT_TYPES, FusedAddRmsNormOp, QuantOp, RmsNormOp
from irfuse.transforms import report
from irfuse.transforms.fuse_quant import flattening_of, two_dim_only
from irfuse.transforms.match import (
    CASTS,
    F32,
    F64,
    VIEWS,
    alpha_is_one,
    call,
    cast_of,
    const_arg,
    element_type,
    erase_dead,
    escaping_intermediate,
    fused_insertion_point,
    host_reason,
    int_list_arg,
    is_host_scalar,
    mul_operands,
    position,
    rank,
    shape,
    tensor_arg,
    users,
)
from irfuse.transforms.raise_dynamic_fp8_quant import DynamicQuantMatch, match_dynamic_quant
from irfuse.transforms.raise_fp8_quant import StaticQuantMatch, match_static_quant

NAME = "raise-rms-norm"


@dataclass
class _Norm:
    """The normalised fp32 value `n` and what it was computed from."""

    x: SSAValue
    xf: SSAValue
    eps: float | SSAValue  # a constant, or a 0-d tensor read at run time
    chain: list[Operation]
    eps_casts: list[Operation]  # f64/f32 casts of a run-time eps (may be shared)


def _match_normalised(rsqrt: CallOp) -> _Norm | str | None:
    """Walk up from rsqrt and one step down to `n`; a str is a guard failure."""
    if not rsqrt.inputs:  # a malformed call (irfuse-opt input)
        return None
    variance = _variance_plus_eps(rsqrt.inputs[0])
    if variance is None:
        return None
    add, mean, squared = variance
    if not alpha_is_one(add):
        alpha = const_arg(add, 2, "alpha")
        alpha = "(symbolic)" if alpha is None else alpha
        return f"variance + eps with alpha {alpha} (eps * alpha added)"
    constant = const_arg(add, 1)
    eps_casts: list[Operation] = []
    eps: float | SSAValue | str
    if isinstance(constant, (int, float)) and not isinstance(constant, bool):
        eps = float(constant)
    elif isinstance(eps := _runtime_eps(tensor_arg(add, 1), eps_casts), str):
        return eps
    xf, square_op = squared
    cast = cast_of(xf)
    x = cast[0] if cast is not None and cast[1] == F32 else xf
    readers = users(rsqrt.results[0])
    n_ops = [(op, xs) for op in readers if (xs := _scaled_copy(op, rsqrt, xf, x)) is not None]
    if not n_ops:
        return None
    n_op, xs = n_ops[0]
    if len(readers) != 1:
        return f"intermediate %{rsqrt.results[0].name_hint} has a user outside the norm"
    dims = int_list_arg(mean, 1)
    if dims not in ([-1], [rank(xf) - 1]) or const_arg(mean, 2, "keepdim") is not True:
        return f"mean over dims {dims} (keepdim {const_arg(mean, 2, 'keepdim')}), not the last"
    if element_type(xf) != F32:
        return f"normalised in {dtype_name(element_type(xf))}, not float32"
    # mean(..., dtype=float64) makes the variance, and what follows, fp64
    if (wider := next((o for o in (mean, add, rsqrt) if element_type(o.results[0]) != F32),
                      None)) is not None:  # fmt: skip
        return f"%{wider.results[0].name_hint} is {dtype_name(element_type(wider.results[0]))}"
    casts = [v.owner for v in dict.fromkeys((xf, xs)) if v is not x]
    chain = [square_op, mean, add, rsqrt, n_op, *casts]
    return _Norm(x, xf, eps, chain, eps_casts)


SQRT_FORM = (
    "x / sqrt(mean(x^2) + eps) is not raised: the kernels compute x * rsqrt(mean(x^2) + "
    "eps), which may round differently (written with torch.rsqrt, it fuses)"
)


def _variance_plus_eps(
    value: SSAValue,
) -> tuple[CallOp, CallOp, tuple[SSAValue, Operation]] | None:
    """(the add, the mean, `_squared`'s (xf, op)) where `value` is `mean(xf^2) + eps`."""
    add = call(value, "aten.add.Scalar", "aten.add.Tensor")
    mean = call(tensor_arg(add, 0), "aten.mean.dim") if add is not None else None
    squared = _squared(tensor_arg(mean, 0)) if mean is not None else None
    return (add, mean, squared) if squared is not None else None  # type: ignore[return-value]


def _divides_by_rms(sqrt: CallOp) -> bool:
    """`sqrt` is of `mean(xf^2, -1) + eps`, and something is divided by it."""
    if _variance_plus_eps(sqrt.inputs[0]) is None:
        return False
    return any(
        isinstance(user, CallOp)
        and user.target.data == "aten.div.Tensor"
        and tensor_arg(user, 1) is sqrt.results[0]
        for user in users(sqrt.results[0])
    )


def _runtime_eps(value: SSAValue | None, casts: list[Operation]) -> SSAValue | str:
    """A graph input eps: the 0-d CPU float tensor `torch.compile(dynamic=True)` makes of
    a Python float (HF's `self.variance_epsilon` too; the kernel takes its value at launch,
    without a device sync), seen through casts to f64 / f32 (which round it to f32 once,
    as the add does); `casts` collects them."""
    while (cast := cast_of(value)) is not None and cast[1] in (F32, F64):
        casts.append(value.owner)  # type: ignore[arg-type, union-attr]
        value = cast[0]
    if not isinstance(value, BlockArgument):
        return "eps is neither a constant nor a graph input"
    if rank(value) != 0 or element_type(value) not in (F32, F64) or not is_host_scalar(value):
        return f"eps is a graph input {value.type} but not a 0-d f32/f64 CPU tensor"
    if inductor_cuda_graphs():
        # Inductor's CUDA graph partitions do not take a custom op with a CPU tensor
        # operand (its replay fails on the op's outputs, H200, torch 2.11)
        return "eps is a graph input, and Inductor's CUDA graphs (mode=reduce-overhead) are on"
    return value


def inductor_cuda_graphs() -> bool:
    """Whether Inductor's CUDA graphs are on for the graph being compiled."""
    from torch._inductor import config  # here: irfuse-opt runs the pass without Inductor

    return bool(config.triton.cudagraphs)


def _squared(value: SSAValue | None) -> tuple[SSAValue, Operation] | None:
    """(xf, the op) for `xf ** 2` or `xf * xf`."""
    pow_op = call(value, "aten.pow.Tensor_Scalar")
    if pow_op is not None and const_arg(pow_op, 1) == 2:
        xf = tensor_arg(pow_op, 0)
        return (xf, pow_op) if xf is not None else None
    pair = mul_operands(value)
    if pair is not None and pair[0] is pair[1]:
        return pair[0], value.owner  # type: ignore[return-value, union-attr]
    return None


def _scaled_copy(op: Operation, rsqrt: CallOp, xf: SSAValue, x: SSAValue) -> SSAValue | None:
    """The operand `op` multiplies rsqrt by, if it is the squared value `xf` or the same
    fp32 value of x: x itself (promoted by the fp32 rsqrt, as T5's norm writes it) or
    another cast of x to fp32 (a model that casts twice)."""
    operands = mul_operands(op.results[0]) if op.results else None
    if operands is None or rsqrt.results[0] not in operands:
        return None
    other = operands[1] if operands[0] is rsqrt.results[0] else operands[0]
    same = other is x or cast_of(other) == (x, F32)
    if other is xf or (x is not xf and same and element_type(op.results[0]) == F32):
        return other
    return None


@dataclass
class _Weighted:
    """How `n` meets the weight: `ops` run from `n` to the result `y` (the last op);
    `helpers` compute Gemma's `1 + w` and may be shared with other norms."""

    weight: SSAValue
    form: str  # plain | fp32 | gemma
    ops: list[Operation]
    helpers: list[Operation]


def _sole_user(value: SSAValue) -> Operation | None:
    return users(value)[0] if value.uses.get_length() == 1 and users(value)[0].results else None


def _match_weight(n: SSAValue, dt: Attribute | None) -> _Weighted | None:
    if (user := _sole_user(n)) is None:
        return None
    after = user.results[0]
    cast = cast_of(after)
    if cast is not None and dt != F32:  # y = n.to(dt) * w
        mul = _sole_user(after)
        pair = mul_operands(mul.results[0]) if mul is not None else None
        if cast[1] != dt or pair is None:
            return None
        return _Weighted(pair[1] if pair[0] is after else pair[0], "plain", [user, mul], [])
    pair = mul_operands(after)
    if pair is None:
        return None
    other = pair[1] if pair[0] is n else pair[0]
    ops = [user]
    if dt != F32:  # y = (n * w).to(dt), or left in fp32 (a no-op cast or none at all)
        down = _sole_user(after)
        cast = cast_of(down.results[0]) if down is not None else None
        if cast is not None and cast[1] in (dt, F32):
            ops.append(down)
    gemma = call(other, "aten.add.Tensor", "aten.add.Scalar")
    # `1 + w` in the weight's 16-bit dtype rounds: then it is the weight of a plain norm
    gemma = gemma if element_type(other) == F32 else None
    if (
        gemma is not None
        and const_arg(gemma, 1) == 1
        and alpha_is_one(gemma)  # else `w + alpha`: a computed weight
        and (wf := tensor_arg(gemma, 0)) is not None
    ):
        w_cast = cast_of(wf)
        weight = w_cast[0] if w_cast is not None and w_cast[1] == F32 else wf
        return _Weighted(weight, "gemma", ops, [gemma] + ([wf.owner] if weight is not wf else []))
    return _Weighted(other, "plain" if dt == F32 else "fp32", ops, [])


def _no_weight_reason(n: SSAValue, dt: Attribute | None) -> str:
    user = _sole_user(n)
    cast = cast_of(user.results[0]) if user is not None else None
    if dt == F32 and cast is not None and cast[1] != F32:
        return (
            f"the normalised fp32 input is cast to {dtype_name(cast[1])} before its weight "
            "(no norm of an fp32 input with a 16-bit result)"
        )
    return "no weight multiply after the normalisation"


@dataclass
class RaiseRmsNormPattern(RewritePattern):
    standalone: bool = False

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: CallOp, rewriter: PatternRewriter) -> None:
        if op.target.data == "aten.sqrt.default" and _divides_by_rms(op):
            report.rejected(NAME, op, SQRT_FORM)
            return
        if op.target.data != "aten.rsqrt.default":
            return
        norm = _match_normalised(op)
        if norm is None:
            return
        norm = host_reason(op) or norm
        if isinstance(norm, str):
            report.rejected(NAME, op, norm)
            return
        dt = element_type(norm.x)
        summed = _fp32_sum(norm.x) if dt == F32 else None
        if summed is not None:
            _raise_fp32_sum(norm, summed, rewriter, self.standalone)
            return
        weighted = _match_weight(norm.chain[4].results[0], dt)
        if weighted is None:
            report.rejected(NAME, op, _no_weight_reason(norm.chain[4].results[0], dt))
            return
        root = weighted.ops[-1]
        reason = _guard(norm, weighted, dt, root.results[0])
        reason = reason or _left_to_inductor(norm.x, root.results[0], self.standalone)
        y = root.results[0]
        if reason == NO_QUANT and (
            _opens_a_sandwich(norm, weighted, y) or _closes_a_post_norm(norm.x, y)
        ):
            reason = None
        if reason:
            report.rejected(NAME, root, reason)
            return
        new = RmsNormOp.build(
            operands=[norm.x, weighted.weight, _eps_operand(norm), []],
            result_types=[root.results[0].type, [], []],
            properties=_properties(norm.eps, weighted, root.results[0], dt),
        )
        rewriter.replace(root, new)
        dead_ops = norm.chain + weighted.ops[:-1] + weighted.helpers + norm.eps_casts
        erase_dead(rewriter, dead_ops)
        report.fused(NAME)


def _eps_operand(norm: _Norm) -> list[SSAValue]:
    return [norm.eps] if isinstance(norm.eps, SSAValue) else []


def _properties(
    eps: float | SSAValue, weighted: _Weighted, y: SSAValue, dt: Attribute | None
) -> dict:
    """The raised norm's properties: eps (unless read at run time), how the weight is
    applied, and whether its result `y` stays fp32 (unrounded) where the input dtype is
    `dt`."""
    props: dict[str, Attribute] = {}
    if not isinstance(eps, SSAValue):
        props["eps"] = FloatAttr(eps, Float64Type())
    if weighted.form == "fp32":
        props["fp32_weight_mul"] = UnitAttr()
    if weighted.form == "gemma":
        props["gemma"] = UnitAttr()
    if element_type(y) != dt:
        props["unrounded"] = UnitAttr()
    return props


@dataclass
class _Fp32Sum:
    """`h = a.float() + b.float()`: `add` and the casts `casts`."""

    a: SSAValue
    b: SSAValue
    add: CallOp
    casts: list[Operation]


def _fp32_sum(h: SSAValue) -> _Fp32Sum | None:
    """The residual add kept in fp32 (vLLM's native RMSNorm) behind the norm's input `h`:
    two 16-bit tensors of one type, cast to fp32 and added (alpha 1, no broadcast)."""
    add = call(h, "aten.add.Tensor")
    if add is None or not alpha_is_one(add):
        return None
    operands = [tensor_arg(add, 0), tensor_arg(add, 1)]
    casts = [cast_of(v) for v in operands]
    if any(c is None or c[1] != F32 for c in casts):
        return None
    a, b = casts[0][0], casts[1][0]  # type: ignore[index]
    if a.type != b.type or element_type(a) == F32 or shape(a) != shape(h):
        return None
    return _Fp32Sum(a, b, add, [v.owner for v in operands])  # type: ignore[misc]


def _raise_fp32_sum(
    norm: _Norm, summed: _Fp32Sum, rewriter: PatternRewriter, standalone: bool
) -> None:
    """The norm of an fp32 residual sum as `fused_add_rms_norm` of the 16-bit operands:
    what that op computes (NUMERICS.md: the variance on the unrounded fp32 sum, the
    residual out rounded to the model dtype), with the normalised value cast back before
    its weight as the raise-rms-norm forms have it; the sum may also be read cast back to
    the model dtype (the residual stream), which then reads `residual_out`."""
    h, dt = norm.x, element_type(summed.a)
    n = norm.chain[4].results[0]
    weighted = _match_weight(n, dt)
    if weighted is None:
        report.rejected(NAME, norm.chain[3], _no_weight_reason(n, F32))
        return
    residual_casts = [u for u in users(h) if u not in norm.chain and _casts_to(u, dt)]
    others = [u for u in users(h) if u not in norm.chain and u not in residual_casts]
    root = weighted.ops[-1]
    fused = _Norm(summed.a, h, norm.eps, norm.chain, norm.eps_casts)
    reason = _guard(fused, weighted, dt, root.results[0])
    reason = reason or _left_to_inductor(h, root.results[0], standalone)
    if others:
        reason = reason or f"the fp32 sum %{h.name_hint} is also read in fp32"
    before = fused_insertion_point(
        [summed.add, *norm.chain, *weighted.ops, *residual_casts],
        [summed.a, summed.b, weighted.weight, *_eps_operand(norm)],
    )
    reason = reason or (None if before else "no place for the fused op: the sum is read between")
    if reason:
        report.rejected(NAME, root, reason)
        return
    new = FusedAddRmsNormOp.build(
        operands=[summed.a, summed.b, weighted.weight, [], [], _eps_operand(norm), []],
        result_types=[root.results[0].type, summed.a.type, [], []],
        properties=_properties(norm.eps, weighted, root.results[0], dt),
    )
    rewriter.insert(new, InsertPoint.before(before))  # type: ignore[arg-type]
    new.y.name_hint, new.residual_out.name_hint = root.results[0].name_hint, h.name_hint
    rewriter.replace_all_uses_with(root.results[0], new.y)
    for cast in residual_casts:
        rewriter.replace_all_uses_with(cast.results[0], new.residual_out)
    dead = [root, *norm.chain, *weighted.ops, *weighted.helpers, *residual_casts, summed.add]
    erase_dead(rewriter, dead + summed.casts + norm.eps_casts)
    report.fused(NAME)


# Why a norm the passes recognise stays with the inner compiler (without `standalone`):
# Inductor makes one kernel of a norm and the pointwise ops and reductions around it, as
# fast as irfuse's kernel of the norm alone; irfuse's kernels win with a quant epilogue.
NO_QUANT = (
    "no fp8 quant reads its value: Inductor's kernel of the norm makes the same one pass "
    "over memory, and takes in the ops around it"
)
READ_BY_POINTWISE = (
    "its value is also read by pointwise ops, which Inductor computes in the norm's kernel "
    "(an irfuse kernel would write the value for them)"
)
FROM_A_REDUCTION = (
    "its input is computed from another reduction (a sandwich norm's result, as Gemma's "
    "post-attention norm): Inductor computes both in one kernel"
)
# Pointwise arithmetic: Inductor computes it in the kernel of a norm that it reads, or
# that reads it (walked back from the norm's input, through views and casts too, to a
# reduction that it would then compute there as well).
ARITHMETIC = (
    "aten.add.Tensor",
    "aten.add.Scalar",
    "aten.sub.Tensor",
    "aten.mul.Tensor",
    "aten.mul.Scalar",
    "aten.div.Tensor",
    "aten.neg.default",
    "aten.rsqrt.default",
    "aten.pow.Tensor_Scalar",
)
POINTWISE = (*CASTS, *VIEWS, *ARITHMETIC)
REDUCTIONS = ("aten.mean.dim", "aten.sum.dim_IntList", "aten.amax.default")


def _left_to_inductor(
    x: SSAValue, y: SSAValue, standalone: bool, reductions_before: bool = True
) -> str | None:
    """Why the norm of `x` into `y` is left to the inner compiler, whose kernel of it would
    not be slower (None: raise it). `standalone` raises every norm; without
    `reductions_before`, a reduction `x` is computed from is not looked for."""
    if standalone:
        return None
    quants, quant_ops = _distinct_quants(y)
    if len(quants) > 1:
        return (
            f"its value is quantized {len(quants)} ways: Inductor writes them all from one "
            "kernel, an irfuse norm kernel ends with one quant"
        )
    if not quants:
        return NO_QUANT
    if _read_by_arithmetic(y, quant_ops):
        return READ_BY_POINTWISE
    return FROM_A_REDUCTION if reductions_before and _computed_from_a_reduction(x) else None


def _opens_a_sandwich(norm: _Norm, weighted: _Weighted, y: SSAValue) -> bool:
    """Whether the norm into `y`, which no quant reads, is the first half of a sandwich
    irfuse fuses into one kernel (fuse-sandwich-norm): `y` is read only by a residual add
    `h = y + r` of one type, and `h`'s norm would be raised but for `y`'s reduction (one
    quant reads it; `r` comes from no other reduction), with the same weight form, the
    first rounding to the model dtype. Inductor also makes one kernel of the two, which
    the quant epilogue's kernel beats."""
    dt = element_type(norm.x)
    found = _residual_add_of(y, dt)
    if found is None:
        return False
    add, residual = found
    h = add.results[0]
    second = _norm_of(h)
    if second is None or _computed_from_a_reduction(residual):  # type: ignore[arg-type]
        return False
    second_norm, second_weighted = second
    y2 = second_weighted.ops[-1].results[0]  # (fp32 where Inductor on CUDA folded the
    # round trip through dt before the quant's fp32 cast: `_guard` allows that form)
    return (
        second_weighted.form == weighted.form
        and _guard(second_norm, second_weighted, dt, y2) is None
        and _left_to_inductor(h, y2, standalone=False, reductions_before=False) is None
        and _add_folds(add, second_norm, second_weighted)
    )


def _closes_a_post_norm(x: SSAValue, y: SSAValue) -> bool:
    """Whether the norm of `x` into `y`, which no quant reads, is a post-norm that irfuse
    fuses with its residual add and the quant of the sum (fuse-norm-add-quant, OLMo 2's
    `h = r + norm(x)` before the next projection): `y` is read only by a residual add of
    one type, rounded to the model dtype; one quant reads `h`, no norm does (that add
    fuses with its norm instead), and `x` comes from no other reduction."""
    found = _residual_add_of(y, element_type(x))
    if found is None:
        return False
    h = found[0].results[0]
    quants, _ = _distinct_quants(h, flattened=False)  # fuse-norm-add-quant takes h's own
    return len(quants) == 1 and _norm_of(h) is None and not _computed_from_a_reduction(x)


def _residual_add_of(y: SSAValue, dt: Attribute | None) -> tuple[CallOp, SSAValue] | None:
    """(`h = y + r`, `r`) where the only reader of `y`, in `dt`, is such a residual add
    (alpha 1, addends of one type)."""
    readers = users(y)
    add = readers[0] if len(readers) == 1 else None
    if not (
        isinstance(add, CallOp)
        and add.target.data == "aten.add.Tensor"
        and alpha_is_one(add)
        and element_type(y) == dt
    ):
        return None
    addends = [tensor_arg(add, 0), tensor_arg(add, 1)]
    if not all(v is not None and v.type == y.type for v in addends) or addends[0] is addends[1]:
        return None
    residual = addends[1] if addends[0] is y else addends[0]
    assert residual is not None
    return add, residual


def _add_folds(add: CallOp, norm: _Norm, weighted: _Weighted) -> bool:
    """Whether fuse-add-rms-norm will find a place for `add` + the norm of its sum: at the
    add (the norm's weight and eps defined before it) or at the norm's last op (every
    other reader of the sum after it)."""
    at_add = position(add)
    operands = [weighted.weight, *_eps_operand(norm)]
    if all(not isinstance(v.owner, Operation) or position(v.owner) < at_add for v in operands):
        return True
    own = {*norm.chain, *weighted.ops}
    at_norm = position(weighted.ops[-1])
    return all(position(user) > at_norm for user in users(add.results[0]) if user not in own)


def _norm_of(h: SSAValue) -> tuple[_Norm, _Weighted] | None:
    """The RMSNorm of `h` the forms above match (its rsqrt within six ops of `h`)."""
    frontier = [h]
    for _ in range(6):
        frontier = [r for v in frontier for op in users(v) for r in op.results]
        for value in frontier:
            rsqrt = call(value, "aten.rsqrt.default")
            norm = _match_normalised(rsqrt) if rsqrt is not None else None
            if isinstance(norm, _Norm) and norm.x is h:
                weighted = _match_weight(norm.chain[4].results[0], element_type(h))
                return (norm, weighted) if weighted is not None else None
    return None


def _distinct_quants(y: SSAValue, flattened: bool = True) -> tuple[set[tuple], set[Operation]]:
    """The fp8 quants of `y` the raise passes would take, identical ones once (a model's
    q, k and v projections each quantizing `y` alike: the raise passes make them one),
    and the ops of their chains."""
    quants: set[tuple] = set()
    ops: set[Operation] = set()
    for op in _casts_after(y):
        found = match_static_quant(op)
        if isinstance(found, StaticQuantMatch) and _reads_value(found.source, y):
            quants.add((str(found.quant), found.scale, op.results[0].type, None))
            ops.update([op, *found.dead_ops])
            continue
        dynamic = match_dynamic_quant(op)
        if isinstance(dynamic, DynamicQuantMatch) and _reads_value(dynamic.source, y):
            quants.add((str(dynamic.quant), dynamic.ub, dynamic.q.type, dynamic.scale_type))
            ops.update([*dynamic.ops, *dynamic.dead_if_unused])
    for quant in _direct_quants(y, flattened):  # torch.ops.irfuse quant calls
        scale_type = quant.scale_out.type if quant.scale_out is not None else None
        quants.add((str(quant.quant), quant.quant_scale, quant.out.type, scale_type))
        ops.add(quant)
    return quants, ops


def _direct_quants(y: SSAValue, flattened: bool = True) -> list[QuantOp]:
    """The irfuse.quant ops (a model's torch.ops.irfuse quant calls) of `y`, or (with
    `flattened`) of its [T, K] flattening (fuse_quant.flattening_of), which
    fuse-rms-norm-quant takes as the epilogue of `y`'s raised norm."""
    found = [user for user in users(y) if isinstance(user, QuantOp)]
    if not flattened:
        return found
    near = [r for op in users(y) for r in op.results]  # y.view(...), y.float()
    near += [r for v in near for op in users(v) for r in op.results]  # y.float().view(...)
    for flat in near:
        source = flattening_of(flat)
        if source is None or source[0] is not y:
            continue
        quants = [q for q in users(flat) if isinstance(q, QuantOp) and q.x is flat]
        found += [q for q in quants if not two_dim_only(q.quant)]
    return found


def _read_by_arithmetic(value: SSAValue, quant_ops: set[Operation], depth: int = 0) -> bool:
    """Whether `value` is also read, outside the quants' chains and through views and
    casts, by a pointwise op (which Inductor computes in the norm's kernel, where an
    irfuse kernel would write the value for it; a matmul or the graph's output reads a
    written value either way)."""
    for user in users(value):
        if user in quant_ops or not isinstance(user, CallOp):
            continue
        target = user.target.data
        if target in ARITHMETIC:
            return True
        if target in (*CASTS, *VIEWS) and depth < 3 and user.results:
            if _read_by_arithmetic(user.results[0], quant_ops, depth + 1):
                return True
    return False


def _casts_after(y: SSAValue, depth: int = 10) -> list[CallOp]:
    """The casts within `depth` ops downstream of `y` (where the fp8 quants of `y` end)."""
    casts: dict[CallOp, None] = {}
    frontier, seen = [y], {y}
    for _ in range(depth):
        reached = []
        for value in frontier:
            for user in users(value):
                if isinstance(user, CallOp) and user.target.data in CASTS:
                    casts[user] = None
                reached += [r for r in user.results if r not in seen]
        seen.update(reached)
        frontier = reached
    return list(casts)


def _computed_from_a_reduction(value: SSAValue, depth: int = 0) -> bool:
    """Whether `value` is computed by pointwise ops (within 8) from a reduction over the
    last dim, as a norm's (Inductor computes its row with the norm's; a reduction over
    another dim, such as a MoE's sum over its experts, is not counted)."""
    op = value.owner
    if not isinstance(op, CallOp) or depth > 8:
        return False
    if op.target.data in REDUCTIONS:
        source = tensor_arg(op, 0)
        dims = int_list_arg(op, 1)
        return source is not None and dims in ([-1], [rank(source) - 1])
    if op.target.data not in POINTWISE:
        return False
    return any(_computed_from_a_reduction(v, depth + 1) for v in op.inputs)


def _reads_value(source: SSAValue, y: SSAValue) -> bool:
    """`source` is `y`, or `y` through an fp32 cast and a view (a linear's flatten); or
    `y` is a no-op fp32 cast of `source` (an unrounded norm's result: the quant matchers
    see through such a cast to the value before it)."""
    if cast_of(y) == (source, F32):
        return True
    for _ in range(3):
        if source is y:
            return True
        owner = source.owner
        cast = cast_of(source)
        if cast is not None and cast[1] == F32:
            source = cast[0]
        elif isinstance(owner, CallOp) and owner.target.data in VIEWS and owner.inputs:
            source = owner.inputs[0]
        else:
            return False
    return source is y


def _casts_to(op: Operation, dt: Attribute | None) -> bool:
    cast = cast_of(op.results[0]) if op.results else None
    return cast is not None and cast[1] == dt


def _guard(norm: _Norm, weighted: _Weighted, dt: Attribute | None, y: SSAValue) -> str | None:
    w_dt = element_type(weighted.weight)
    if not isinstance(dt, FLOAT_TYPES):
        return f"input dtype {dtype_name(dt)} is not bf16, fp16 or fp32"
    if rank(weighted.weight) != 1:
        return f"weight has rank {rank(weighted.weight)}, expected 1"
    if rank(norm.x) == 0:
        return "the input is 0-d (no hidden dim)"
    hidden, w_size = norm.x.type.get_shape()[-1], weighted.weight.type.get_shape()[0]
    # a weight of one element broadcasts over a symbolic hidden size (others must equal it)
    if hidden != w_size and (DYNAMIC not in (hidden, w_size) or w_size == 1):
        hidden_text = "symbolic" if hidden == DYNAMIC else hidden
        return f"weight has {w_size} elements, the hidden size is {hidden_text}"
    if w_dt != dt and not (weighted.form == "gemma" and w_dt == F32):
        return f"weight dtype {dtype_name(w_dt)} != input dtype {dtype_name(dt)}"
    unrounded = weighted.form != "plain" and element_type(y) == F32
    if (element_type(y) != dt and not unrounded) or y.type.get_shape() != norm.x.type.get_shape():
        return f"result type {y.type} differs from the input {norm.x.type}"
    if (escaping := escaping_intermediate(norm.chain + weighted.ops)) is not None:
        return f"intermediate %{escaping.name_hint} has a user outside the norm"
    return None


@dataclass(frozen=True)
class RaiseRmsNorm(ModulePass):
    """`standalone`: also raise norms that no quant fuses into (recognition only: the
    default leaves those to the inner compiler, whose kernel makes the same one pass)."""

    name = NAME
    standalone: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        pattern = RaiseRmsNormPattern(self.standalone)
        PatternRewriteWalker(pattern, apply_recursively=False).rewrite_module(op)
