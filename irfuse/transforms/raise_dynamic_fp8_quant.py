"""raise-dynamic-fp8-quant: recognise dynamic fp8 quantization written in PyTorch.

Matches, for any hidden size (`xf` is `x` [..., K] cast to fp32, or `x` itself if fp32;
`...` the token dims, one or more: [T, K], or a model's [B, S, K] before it flattens):

    per token:   a = amax(|xf|, -1, keepdim=True)
                 a = min(a, ub)                                  (optional upper bound)
                 s = max(a / 448, 1/(448*512))
                 q = clamp(xf / s, -448, 448).to(float8_e4m3fn)       -> q, s [..., 1]

    per token, the scale in x's dtype (torchao's per-row scale; no bound, no floor):
                 s = (amax(|x|, -1, keepdim=True) / 448).float()   (divided in x's dtype)
                 q = clamp(xf / s, -448, 448).to(float8_e4m3fn)       -> q, s [..., 1]
                 (the same over every dim: per tensor, torchao's default)

    per tensor:  a = amax(|xf|) over every dim (or max(|xf|))     (x of any rank)
                 s = max(a / 448, 1/(448*512))
                 s = s.reshape(1)                          (optional: any one-element view)
                 q = clamp(xf / s, -448, 448).to(float8_e4m3fn)       -> q, s [] or [1, ...]

    per group:   xg = xf.view(..., K/G, G)                        (G = 64 or 128)
                 s = max(amax(|xg|, -1, keepdim=True), 1e-10) / 448
                 s = exp2(ceil(log2(s)))                          (optional: ue8m0)
                 q = clamp(xg / s, -448, 448).to(float8_e4m3fn).view(..., K)
                                                            -> q, s.squeeze(-1) [..., K/G]

in the AOT and Inductor post-grad forms: casts as `_to_copy` or `convert_element_type`;
clamps as `aten.clamp` or `clamp_min` / `clamp_max` (a pair in either order for +-448);
`a / 448` as a division or a multiplication by 1/448 (within one fp32 ulp: computed as
the division, README); a constant
also as a one-element `aten.full` (Inductor's folding of a tensor constant, as in vLLM's
reference quant: `a / torch.as_tensor(448.0)`, `clamp(min=1 / (448 * 512) tensor)`), so
`max(., c)` also as `maximum` or `clamp_min` with one;
`min(a, ub)` as `minimum`, `clamp(max=ub)` or `clamp_max` with a tensor; the group view
as `view`, `reshape` or `_unsafe_view` (`unflatten`), before or after the fp32 cast;
an amax over one dim also as the values of `max(., dim, keepdim)` (its indices unread),
either without keepdim and the dim put back after (`unsqueeze(-1)`, `[:, None]`; right
after the amax, or after scalar steps of the formula: vLLM's `(amax / 448)[:, None]`);
the amax of a 16-bit |x| widened to fp32 right after (the same value) where x.float() is
quantized;
the division may read 16-bit `x` itself, promoted by the fp32 scale, where the amax
reads `x` cast to fp32, or reads 16-bit |x| and is widened (vLLM's reference); a
per-token `s` may be repeated along the row before the division, where K is static
(`s.expand_as(x)`, or torchao's `s.repeat_interleave(K, -1)`: unsqueeze, expand to
[..., 1, K], clone, view; a scale spread otherwise is reported).

    per group, the scales repeated along the row (torchao's 1x128 activation scale: the
    scale in x's dtype, no floor; or the per-group formula above, in fp32), K static:
                 a = amax(|x.view(..., K/G, G)|, -1, keepdim=True)
                 s = (a / 448).view(..., K/G).float()
                 q = clamp(xf / s.repeat_interleave(G, -1), -448, 448).to(float8_e4m3fn)
                                                                   -> q, s [..., K/G]

Guards: the clamp bounds are exactly -448 and 448; the scale follows one of the
formulas above with 448, 1/(448*512) and 1e-10 (equal in fp32; a one-element `full`
read in its dtype); a ue8m0 scale is of a 16-bit x (see _ue8m0_reason); `ub` is a
one-element fp32 tensor; the amax is over the last dim with keepdim, of the very tensor
that is divided (every dim for per tensor, which takes no upper bound); the input is
bf16/fp16/fp32 of rank 2 or more (any rank per tensor), the scale fp32; the group view
splits the last dim into groups of 64 or 128 that divide K and keeps the others; per
group, the fp8 result is only read through the view back to [..., K] and the scales only
as [..., K/G] (squeeze or view); an `in_dtype` scale is divided in the dtype of the x
quantized (in fp16 not as `* (1/448)`, which rounds otherwise where the scale is subnormal);
no intermediate has a user outside the pattern but q and the scales. Unless
`standalone=true`, `x` must come from an irfuse op that can take the quant as its
epilogue (elsewhere Inductor already fuses the quant into its producer's kernel), or be
that op's [..., K] result flattened to [T, K] (a model's linear flattening its input:
the quant reads the unflattened result, its results keep the graph's [T, ...] shapes).
A chain that reaches an amax but fails a guard is reported with its reason.

Replacement: `irfuse.quant` with `#irfuse.quant<per_token>` (`quant_scale` = ub),
`#irfuse.quant<per_token in_dtype>`, `#irfuse.quant<per_tensor [in_dtype]>` (its scale keeps the
graph's shape: 0-d, or ones with keepdim or a view) or `#irfuse.quant<per_group G>`
(`ue8m0`, or `in_dtype`), reading the un-cast, un-viewed `x`; its results replace q and the scales
(NUMERICS.md); a quant identical to one already raised (same input, scheme, bound and
types) reads that one's results instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from xdsl.context import Context
from xdsl.dialects.builtin import (
    ArrayAttr,
    Float8E4M3FNType,
    Float16Type,
    ModuleOp,
    NoneAttr,
    TensorType,
)
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from irfuse.dialects.aten import CallOp, dtype_name, scalar
from irfuse.dialects.irfuse import (
    DYNAMIC,
    FLOAT_TYPES,
    GROUP_SIZES,
    QuantAttr,
    QuantOp,
    dims,
)
from irfuse.frontend.types import torch_dtype
from irfuse.transforms import report
from irfuse.transforms.fuse_quant import epilogue_source, identical_quant
from irfuse.transforms.match import (
    CASTS,
    CLAMP,
    CLAMP_MAX,
    CLAMP_MIN,
    F32,
    HOST_SCALE,
    VIEWS,
    call,
    cast_of,
    clamp_bounds,
    const_arg,
    constant_clamp,
    element_type,
    erase_dead,
    escaping_value,
    fused_insertion_point,
    host_reason,
    int_list_arg,
    keeps_dims,
    on_the_host,
    rank,
    scaling_of,
    shape,
    tensor_arg,
    users,
)

NAME = "raise-dynamic-fp8-quant"
FP8_MAX = 448.0
TOKEN_FLOOR = 1.0 / (FP8_MAX * 512.0)
GROUP_FLOOR = 1e-10
RECIP_ULP = float(np.spacing(np.float32(1.0 / FP8_MAX)))

AMAX = "aten.amax.default"
MAX = "aten.max.default"  # the max of every element (0-d)
MAX_DIM = "aten.max.dim"  # (values, indices) over one dim: its values are an amax
UNSQUEEZE = "aten.unsqueeze.default"  # restores the dim an amax without keepdim reduced
EXPAND, CLONE = "aten.expand.default", "aten.clone.default"
SQUEEZE_DIM, SQUEEZE_DIMS = "aten.squeeze.dim", "aten.squeeze.dims"
TRANSPOSES = ("aten.transpose.int", "aten.permute.default")
# what spreads a scale over x's shape (repeats, reshapes it)
SPREADS = (EXPAND, CLONE, UNSQUEEZE, SQUEEZE_DIM, SQUEEZE_DIMS, *TRANSPOSES, *VIEWS)
AMAX_FORMS = ("keepdim", "widen")  # steps right after the amax that leave its value
ABS = "aten.abs.default"
DIV = "aten.div.Tensor"
UPPER_BOUNDS = ("aten.minimum.default", "aten.clamp.Tensor", "aten.clamp_max.Tensor")
SCALINGS = ("aten.div.Tensor", "aten.div.Scalar", "aten.mul.Tensor", "aten.mul.Scalar")
# max(., c) with c a one-element `aten.full` (a tensor constant): the Tensor forms
FLOORS_BY_TENSOR = ("aten.maximum.default", "aten.clamp_min.Tensor", "aten.clamp.Tensor")
FLOORS = (CLAMP, CLAMP_MIN, CLAMP_MAX, *FLOORS_BY_TENSOR)
POW2 = ("aten.log2.default", "aten.ceil.default", "aten.exp2.default")
SCALE_OPS = UPPER_BOUNDS + SCALINGS + FLOORS + POW2

TOKEN_FORMULA = "per-token max(amax / 448, 1/(448*512))"
IN_DTYPE_FORMULA = "per-token amax / 448 in x's dtype"
SCHEMES = ("per_token", "per_tensor", "per_group", "per_group_ue8m0")  # (and in_dtype)
TENSOR_FORMULA = "per-tensor max(amax / 448, 1/(448*512))"
GROUP_FORMULA = "per-group max(amax, 1e-10) / 448"


# ---- the scale formula: amax -> steps -> s ------------------------------------------


@dataclass
class _Step:
    """One op of the scale formula. `kind`: bound | div | floor | log2 | ceil | exp2."""

    kind: str
    op: CallOp
    text: str
    value: float = 0.0
    """The divisor (div: 448, or 1/448 written as a multiply) or the lower bound (floor)."""
    bound: SSAValue | None = None
    """The upper-bound tensor `ub` (bound)."""
    helper: CallOp | None = None
    """The `aten.full` holding the constant of a floor or divisor (may be shared: erased
    only if dead)."""


def _path_to_amax(value: SSAValue, depth: int = 0) -> list[CallOp] | None:
    """The ops from an `aten.amax` (or a full `aten.max`) to `value` (amax first) through
    scale-formula ops."""
    owner = value.owner
    if isinstance(owner, CallOp) and owner.target.data == MAX_DIM:  # values, not indices
        return [owner] if value is owner.results[0] else None
    op = call(value, AMAX, MAX, UNSQUEEZE, *CASTS, *SCALE_OPS, *VIEWS)
    if op is None or depth > 8 or (op.target.data in VIEWS and _numel(op.results[0]) != 1):
        return None
    if op.target.data in (AMAX, MAX):
        return [op]
    for operand in op.inputs:
        if (path := _path_to_amax(operand, depth + 1)) is not None:
            return path + [op]
    return None


def computed_from_amax(scale: SSAValue) -> bool:
    """Whether `scale` is computed from an amax through scale-formula ops (a dynamic
    scale: this pass's to raise or refuse, not raise-fp8-quant's)."""
    return _path_to_amax(scale) is not None


def _upper_bound(op: CallOp, prev: SSAValue) -> SSAValue | None:
    """`ub` of `minimum(prev, ub)`, `clamp(prev, None, ub)` or `clamp_max(prev, ub)`."""
    target = op.target.data
    if target == "aten.minimum.default":
        a, b = tensor_arg(op, 0), tensor_arg(op, 1)
        return b if a is prev else a if b is prev else None
    if tensor_arg(op, 0) is not prev:
        return None
    if target == "aten.clamp_max.Tensor":
        return tensor_arg(op, 1)
    no_min = tensor_arg(op, 1) is None and const_arg(op, 1) is None
    return tensor_arg(op, 2) if no_min else None


def full_value(value: SSAValue | None) -> tuple[float, CallOp] | None:
    """The number and op of an `aten.full` of one element (Inductor's folding of a tensor
    constant such as vLLM's `torch.as_tensor(448.0)`), rounded to the full's dtype (a
    bf16 `1 / 448` is 1 / 448.88)."""
    full = call(value, "aten.full.default")
    c = const_arg(full, 1) if full is not None else None
    if full is None or not isinstance(c, (int, float)) or isinstance(c, bool):
        return None
    if _numel(full.results[0]) != 1:
        return None
    dtype = torch_dtype(element_type(full.results[0]))
    return (torch.tensor(float(c), dtype=dtype).item() if dtype else float(c)), full


def _scaling(op: CallOp, prev: SSAValue) -> _Step | str:
    """`prev / c` or `prev * c` with a constant `c` (a number, or a one-element full)."""
    if tensor_arg(op, 0) is not prev:
        return f"scale formula has {op.target.data} of a tensor other than the amax's"
    c, helper = const_arg(op, 1), None
    if (full := full_value(tensor_arg(op, 1))) is not None:
        c, helper = full
        if shape(op.results[0]) != shape(prev):
            spread = dims(shape(op.results[0]))  # type: ignore[arg-type]
            return f"the scale's {op.target.data} by a constant broadcasts it to {spread}"
    if not isinstance(c, (int, float)) or isinstance(c, bool):
        return f"scale formula has {op.target.data} by a tensor whose value is not in the graph"
    if op.target.data.startswith("aten.div"):
        return _Step("div", op, f"/ {c:g}", value=float(c), helper=helper)
    return _Step("div", op, f"* {c:g}", value=1.0 / float(c) if c else math.inf, helper=helper)


def _floor(op: CallOp, prev: SSAValue) -> _Step | str:
    """`max(prev, c)` as a clamp from below, or a maximum or clamp (from below only) with a
    constant `aten.full`."""
    target = op.target.data
    if target not in FLOORS_BY_TENSOR:
        bounds = clamp_bounds(op)
        if tensor_arg(op, 0) is not prev or bounds is None:
            return f"scale is clamped by a tensor ({target})"
        lo, hi = bounds
        if hi is not None or lo is None:
            return f"scale is clamped to [{lo}, {hi}], not only from below"
        return _Step("floor", op, f"max({lo:g})", value=lo)
    a, b = tensor_arg(op, 0), tensor_arg(op, 1)
    if target != "aten.maximum.default" and (a is not prev or not _open_above(op)):
        return f"scale is clamped by tensors ({target}), not only from below"
    other = b if a is prev else a
    if (full := full_value(other)) is None:
        name = other.name_hint if other is not None else "?"
        return f"lower bound %{name} of the scale is a tensor whose value is not in the graph"
    if shape(op.results[0]) != shape(prev):  # a [1, 1, 1] bound spreads a 2-D scale
        return f"the scale's lower bound broadcasts it to {dims(shape(op.results[0]))}"
    return _Step("floor", op, f"max({full[0]:g})", value=full[0], helper=full[1])


def _open_above(op: CallOp) -> bool:
    """A `clamp_min.Tensor`, or a `clamp.Tensor` with no max."""
    if op.target.data == "aten.clamp_min.Tensor":
        return True
    upper = op.arg(2) if op.arg(2) is not None else op.kwargs.data.get("max")
    return upper is None or isinstance(upper, NoneAttr)


def _numel(value: SSAValue) -> int | None:
    """The element count of a static shape (None if a dim is symbolic)."""
    dims = shape(value)
    return None if dims is None or DYNAMIC in dims else math.prod(dims)


def _parse_step(op: CallOp, prev: SSAValue, amax: CallOp) -> _Step | str:
    """What `op` does to `prev` (the value on the amax side), or why it is not a step."""
    target = op.target.data
    if target in CASTS:
        cast = cast_of(op.results[0])
        widens = cast is not None and cast[1] == F32 and element_type(prev) != F32
        return _Step("widen", op, "float()") if widens else "scale formula has a narrowing cast"
    if target == UNSQUEEZE:
        return _Step("keepdim", op, "unsqueeze") if _restores_keepdim(op, prev, amax) else (
            "scale formula has an unsqueeze other than of the dim its amax reduced"
        )  # fmt: skip
    if target in VIEWS:  # of one element (_path_to_amax): the scale's shape, not its value
        return _Step("view", op, f"view {dims(shape(op.results[0]))}")  # type: ignore[arg-type]
    if target in POW2:
        kind = target.split(".")[1]
        return _Step(kind, op, kind)
    if target in UPPER_BOUNDS and (ub := _upper_bound(op, prev)) is not None:
        return _Step("bound", op, f"min(%{ub.name_hint})", bound=ub)
    if target in SCALINGS:
        return _scaling(op, prev)
    if target in FLOORS:
        return _floor(op, prev)
    return f"scale formula has {target}"


def _parse_formula(path: list[CallOp]) -> list[_Step] | str:
    steps: list[_Step] = []
    for prev_op, op in zip(path, path[1:], strict=False):
        step = _parse_step(op, prev_op.results[0], path[0])
        if isinstance(step, str):
            return step
        steps.append(step)
    return steps


def _scheme(steps: list[_Step]) -> str:
    """per_token | per_token in_dtype | per_group | per_group_ue8m0 | a reason."""
    kinds = [s.kind for s in steps if s.kind not in ("view", *AMAX_FORMS)]
    if kinds in (["div", "floor"], ["bound", "div", "floor"]):
        return "per_token"
    if [s.kind for s in steps if s.kind not in ("view", "keepdim")] in (["div"], ["div", "widen"]):
        return "per_token in_dtype"  # no lower bound, divided before any widening
    if kinds == ["floor", "div"]:
        return "per_group"
    if kinds == ["floor", "div", "log2", "ceil", "exp2"]:
        return "per_group_ue8m0"
    chain = " -> ".join(["amax", *(s.text for s in steps)])
    return f"scale formula {chain} is none of {TOKEN_FORMULA}, {IN_DTYPE_FORMULA}, {GROUP_FORMULA}"


def _same_in_f32(a: float, b: float) -> bool:
    """Whether a graph's fp32 op with constant `a` computes as the kernels' with `b`."""
    return bool(np.float32(a) == np.float32(b))


def _divides_in(steps: list[_Step], x: SSAValue) -> str | None:
    """Why a scale with no lower bound, `amax / 448`, is not the per-token in_dtype one
    over `x` (the quantized tensor, before its fp32 cast): it is divided in another dtype."""
    div = next(step for step in steps if step.kind == "div")
    if element_type(div.op.results[0]) != element_type(x):
        return (
            f"scale amax / 448 with no lower bound is divided in {_dtype(div.op.results[0])}, "
            f"not in x's {_dtype(x)} ({IN_DTYPE_FORMULA}), nor is it {TOKEN_FORMULA}"
        )
    # in bf16, amax * (1/448) rounds as amax / 448 for every amax; in fp16 not where the
    # scale is subnormal (39 amaxes below 0.0034): the kernels divide
    if not div.op.target.data.startswith("aten.div") and element_type(x) == Float16Type():
        return "fp16 scale amax * (1/448) rounds unlike the kernels' amax / 448 (subnormals)"
    return None


def _check_constants(steps: list[_Step], scheme: str) -> str | None:
    floor, floor_text = (
        (TOKEN_FLOOR, "1/(448*512)")
        if scheme in ("per_token", "per_tensor")
        else (GROUP_FLOOR, "1e-10")
    )
    for step in steps:
        if step.kind == "div" and not _divides_by_fp8_max(step):
            return f"scale divides amax by {step.value:g}, not by the fp8 max 448"
        if step.kind == "floor" and not _same_in_f32(step.value, floor):
            return f"lower clamp {step.value:g} of the scale is not {floor_text}"
        if step.kind == "bound" and not _one_element_f32(step.bound):
            return f"upper bound {step.bound.type} is not a one-element float32 tensor"  # type: ignore[union-attr]
        if step.kind == "bound" and on_the_host(step.bound):  # type: ignore[arg-type]
            return HOST_SCALE.format(what="upper bound")
    return None


def _divides_by_fp8_max(step: _Step) -> bool:
    if step.op.target.data.startswith("aten.div"):
        return step.value == FP8_MAX
    return abs(1.0 / step.value - 1.0 / FP8_MAX) <= RECIP_ULP if step.value else False


def _one_element_f32(value: SSAValue | None) -> bool:
    return value is not None and element_type(value) == F32 and shape(value) in ((1,), ())


# ---- the quantized tensor: x -> (cast, view) -> xs -----------------------------------


def _strip_f32_cast(value: SSAValue, inside: list[Operation]) -> tuple[SSAValue, list[Operation]]:
    """`value`'s bf16/fp16 source if `value` is its cast to fp32 read only by `inside`."""
    cast = cast_of(value)
    if cast is None or cast[1] != F32 or not isinstance(element_type(cast[0]), FLOAT_TYPES):
        return value, []
    if any(user not in inside for user in users(value)):
        return value, []
    return cast[0], [value.owner]  # type: ignore[list-item]


@dataclass
class _Grouped:
    """`xs` = `x` [..., K] viewed as [..., K/G, G] (and cast to fp32) by `ops`."""

    x: SSAValue
    group: int
    ops: list[Operation]


def _group_view(value: SSAValue) -> _Grouped | str:
    """`value` as `view(x, [..., K/G, G])` with G 64 or 128 dividing K."""
    view = call(value, *VIEWS)
    x = tensor_arg(view, 0) if view is not None else None
    if view is None or x is None or rank(x) < 2 or rank(value) != rank(x) + 1:
        return f"grouped input %{value.name_hint} is not a [..., K/G, G] view of a [..., K] tensor"
    *tokens, k = shape(x)  # type: ignore[misc]
    *tokens_view, groups, group = shape(value)  # type: ignore[misc]
    if group == DYNAMIC:  # a symbolic K can leave the type's last dim `?`: read the view
        group = _last_view_size(view)
    if group is None:
        return "group size is not static"
    if group not in GROUP_SIZES:
        return f"group size {group} is not 64 or 128"
    if k != DYNAMIC and k % group:
        return f"hidden size {k} is not a multiple of the group size {group}"
    # The view keeps x's token dims and splits K: its sizes equal x's where static, and
    # symbolic exactly where x's are. With one symbolic dim the element count then makes
    # it x's; with more, a view that regroups them ([2T, K/2G, G]) looks the same in the
    # IR's types, and the scales would take the kernel's shape, not its: the importer's
    # mark (keeps_dims) must say that it keeps them.
    if shape(x).count(DYNAMIC) > 1 and not keeps_dims(view, len(tokens)):  # type: ignore[union-attr]
        return (
            f"view {dims(shape(x))} -> {dims(shape(value))} is not known to keep x's "  # type: ignore[arg-type]
            "symbolic token dims (its sizes are not x's: it regroups them)"
        )
    split = DYNAMIC if groups == DYNAMIC else groups * group
    pairs = [*zip(tokens, tokens_view, strict=True), (k, split)]
    if any((a == DYNAMIC) != (b == DYNAMIC) or a != b for a, b in pairs):
        return f"view {dims(shape(x))} -> {dims(shape(value))} does not split the last dim"  # type: ignore[arg-type]
    return _Grouped(x, group, [view])


def _last_view_size(view: CallOp) -> int | None:
    """The constant last size in `view(x, [..., G])`, if it is one."""
    sizes = view.arg(1)
    last = sizes.data[-1] if isinstance(sizes, ArrayAttr) and sizes.data else None
    value = scalar(last)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _group_input(xs: SSAValue, inside: list[Operation]) -> _Grouped | str:
    """`xs` as cast(view(x)), view(cast(x)) or view(x)."""
    value, cast = _strip_f32_cast(xs, inside)
    grouped = _group_view(value)
    if isinstance(grouped, str):
        return grouped
    if not cast:  # view(cast(x)): the cast is read by the view
        grouped.x, cast = _strip_f32_cast(grouped.x, grouped.ops)
    grouped.ops += cast
    return grouped


# ---- the outputs per group -------------------------------------------------------------


def _q_view(q: SSAValue, x: SSAValue) -> CallOp | str:
    """The only reader of the grouped fp8 result: its view back to x's shape."""
    readers = users(q)
    view = readers[0] if len(readers) == 1 else None
    if (
        not isinstance(view, CallOp)
        or view.target.data not in VIEWS
        or shape(view.results[0]) != shape(x)
        or (shape(x).count(DYNAMIC) > 1 and not keeps_dims(view, rank(x) - 1))  # type: ignore[union-attr]
    ):
        return f"fp8 result %{q.name_hint} is read in its grouped shape {dims(shape(q))}"  # type: ignore[arg-type]
    return view


def _squeezes(s: SSAValue, pattern: list[Operation]) -> list[CallOp] | str:
    """The readers of the scales s [..., K/G, 1] outside the pattern, all squeezing to
    [..., K/G] (squeeze(-1) or a view)."""
    found: list[CallOp] = []
    for user in users(s):
        if user in pattern:
            continue
        if not isinstance(user, CallOp) or not _squeezes_last(user, s):
            what = user.target.data if isinstance(user, CallOp) else user.name
            return f"scales %{s.name_hint} are read in shape {dims(shape(s))} by {what}"  # type: ignore[arg-type]
        found.append(user)
    return found


def _squeezes_last(op: CallOp, s: SSAValue) -> bool:
    """`op` turns `s` [..., K/G, 1] into [..., K/G]: squeeze(-1), squeeze([-1]) or a view."""
    if len(op.results) != 1 or tensor_arg(op, 0) is not s:
        return False
    if shape(op.results[0]) != shape(s)[:-1]:  # type: ignore[index]
        return False
    if op.target.data in VIEWS:  # [..., K/G, 1] -> [..., K/G]: all but the last dim kept
        return shape(s).count(DYNAMIC) <= 1 or keeps_dims(op, rank(s) - 1)  # type: ignore[union-attr]
    dims = {SQUEEZE_DIM: [const_arg(op, 1)], SQUEEZE_DIMS: int_list_arg(op, 1)}
    return dims.get(op.target.data) in ([-1], [rank(s) - 1])


# ---- the whole pattern ----------------------------------------------------------------


@dataclass
class DynamicQuantMatch:
    source: SSAValue
    ub: SSAValue | None
    quant: QuantAttr
    q: SSAValue
    """Replaced by the quant's `out`."""
    scales: list[SSAValue]
    """Replaced by the quant's `scale_out`."""
    scale_type: Attribute
    ops: list[Operation]
    """The pattern: erased."""
    dead_if_unused: list[Operation] = field(default_factory=list)
    """The peeled cast / view of the input and constant helpers: erased when unused."""


def _match(
    q: SSAValue, xs: SSAValue, s: SSAValue, main: list[Operation]
) -> DynamicQuantMatch | str:
    """`q = fp8(clamp(xs / s))` (the ops `main`), `s` computed from an amax: the whole
    pattern, or why it is refused."""
    match = _match_scheme(q, xs, s, main)
    if isinstance(match, DynamicQuantMatch):
        escaping = escaping_value(match.ops, [match.q, *match.scales])
        if escaping is not None:
            return f"intermediate %{escaping.name_hint} has a user outside the quant"
    return match


def _match_scheme(
    q: SSAValue, xs: SSAValue, s: SSAValue, main: list[Operation]
) -> DynamicQuantMatch | str:
    path = _path_to_amax(s)
    assert path is not None
    steps = _parse_formula(path)
    if isinstance(steps, str):
        return steps
    scheme = _scheme(steps)
    in_dtype = scheme == "per_token in_dtype"
    kind = "per_token" if in_dtype else scheme  # the scheme, less its in_dtype option
    if kind == "per_token" and _reduces_every_dim(path[0]):
        kind = "per_tensor"
        if any(step.kind == "bound" for step in steps):
            return f"{TENSOR_FORMULA} scale takes no upper bound"
    scheme = f"{kind} in_dtype" if in_dtype else kind
    if kind != "per_tensor" and any(step.kind == "view" for step in steps):
        return "the scale is viewed to one element (only a per-tensor scale may be)"
    if kind not in SCHEMES:
        return scheme
    forms = _amax_forms(steps)
    if in_dtype and any(step.kind == "widen" for step in steps):
        forms.add("widen")  # a 16-bit amax, widened after the division in its dtype
    elif any(step.kind == "widen" for step in steps[len(forms) :]):
        return "scale formula widens a value other than its amax (steps before it run in 16 bits)"
    if any(step.kind == "keepdim" for step in steps):
        forms.add("keepdim")
    # the division reads 16-bit xs, promoted by the fp32 scale (main[0] is the division)
    promoted = element_type(main[0].results[0]) == F32 != element_type(xs)
    reason = _check_constants(steps, kind) or _check_amax(path[0], xs, kind, forms, promoted)
    if reason:
        return reason
    ops = list(dict.fromkeys([*main, path[0].inputs[0].owner, *path]))  # + abs
    helpers = [step.helper for step in steps if step.helper is not None]
    if (of := _abs_of(path[0])) is not None and _twin_cast(of, xs):
        helpers.append(of.owner)  # type: ignore[arg-type]  # the amax's own cast
    if kind in ("per_token", "per_tensor"):
        source, cast = _strip_f32_cast(xs, ops)
        if in_dtype and (reason := _divides_in(steps, source)):
            return reason
        ub = next((step.bound for step in steps if step.bound is not None), None)
        quant = QuantAttr(kind, in_dtype=in_dtype)
        return DynamicQuantMatch(source, ub, quant, q, [s], s.type, ops, cast + helpers)
    return _match_per_group(q, xs, s, ops, helpers, ue8m0=scheme == "per_group_ue8m0")


def _match_per_group(
    q: SSAValue,
    xs: SSAValue,
    s: SSAValue,
    ops: list[Operation],
    helpers: list[Operation],
    ue8m0: bool,
) -> DynamicQuantMatch | str:
    """The grouped input behind `xs`, the view of `q` back to [..., K], the squeezes of `s`."""
    grouped = _group_input(xs, ops)
    if isinstance(grouped, str):
        return grouped
    if ue8m0 and (reason := _ue8m0_reason(grouped.x)):
        return reason
    q_view = _q_view(q, grouped.x)
    if isinstance(q_view, str):
        return q_view
    squeezes = _squeezes(s, ops)
    if isinstance(squeezes, str):
        return squeezes
    return DynamicQuantMatch(
        source=grouped.x,
        ub=None,
        quant=QuantAttr("per_group", grouped.group, ue8m0=ue8m0),
        q=q_view.results[0],
        scales=[squeeze.results[0] for squeeze in squeezes],
        scale_type=TensorType(F32, shape(s)[:-1]),  # type: ignore[index]
        ops=[*ops, q_view, *squeezes],
        dead_if_unused=grouped.ops + helpers,
    )


def _ue8m0_reason(x: SSAValue) -> str | None:
    """Why `exp2(ceil(log2(s)))` over `x`'s groups is not the kernels' exact power of two:
    an fp32 x's scale may lie a few ulps above 2^k, where fp32 log2 rounds to k and the
    graph keeps 2^k (the kernels take 2^(k+1)); a 16-bit x's scale amax / 448 is a power
    of two or far from one."""
    if element_type(x) == F32:
        return "ue8m0 scale exp2(ceil(log2(s))) of float32 x: log2 rounds, the kernels do not"
    return None


def _reduces_every_dim(amax: CallOp) -> bool:
    """`amax` is a full `max`, or an `amax` over every dim of its input (none listed)."""
    if amax.target.data == MAX:
        return True
    dims = _amax_dims(amax)[0]
    r = rank(tensor_arg(amax, 0))  # type: ignore[arg-type]
    return dims is not None and r > 0 and sorted(d % r for d in dims) in ([], list(range(r)))


def _amax_dims(amax: CallOp) -> tuple[list[int] | None, object]:
    """(dims, keepdim) of an `aten.amax` (no dims: every dim) or an `aten.max.dim`."""
    if amax.target.data == MAX_DIM:
        dim = const_arg(amax, 1, "dim")
        return ([dim] if isinstance(dim, int) else None), const_arg(amax, 2, "keepdim")
    dims = int_list_arg(amax, 1) if amax.arg(1) is not None else []
    return dims, const_arg(amax, 2, "keepdim")


def _restores_keepdim(unsqueeze: CallOp, prev: SSAValue, amax: CallOp) -> bool:
    """`unsqueeze` puts back the dim that `amax`, over the last dim without keepdim,
    reduced (`a.unsqueeze(-1)`, `a[:, None]`): right after it, or after its widening and
    scalar steps, which keep its shape (vLLM's `(amax / 448)[:, None]`)."""
    if amax.target.data not in (AMAX, MAX_DIM) or rank(prev) != rank(amax.results[0]):
        return False
    dims, keepdim = _amax_dims(amax)
    r = rank(unsqueeze.results[0])
    dim = const_arg(unsqueeze, 1)
    return (
        keepdim is not True
        and dims in ([-1], [r - 1])
        and isinstance(dim, int)
        and dim % r == r - 1
    )


def _amax_forms(steps: list[_Step]) -> set[str]:
    """What the steps right after the amax do to it (AMAX_FORMS): put back its reduced dim,
    widen a 16-bit amax to fp32 (exact: the max of the widened values)."""
    forms: set[str] = set()
    for step in steps:
        if step.kind not in AMAX_FORMS:
            break
        forms.add(step.kind)
    return forms


def _twin_cast(a: SSAValue, b: SSAValue) -> bool:
    """`a` and `b` are two fp32 casts of one tensor (`y.float()` written twice)."""
    cast = cast_of(a)
    return cast is not None and cast[1] == F32 and cast_of(b) == cast


def _check_amax(
    amax: CallOp, xs: SSAValue, scheme: str, forms: set[str], promoted: bool
) -> str | None:
    """Why the amax does not give the scale of the values the division quantizes (None:
    it does); `promoted`: the division reads 16-bit `xs` promoted to fp32."""
    of = _abs_of(amax)
    same_values = cast_of(xs) == (of, F32) or (promoted and of is xs)
    widened = "widen" in forms and of is not None and same_values
    if of is None or (of is not xs and not widened and not _twin_cast(of, xs)):
        return "the amax is not taken of |x| for the x that is quantized"
    if scheme == "per_tensor":
        return _check_f32(xs, amax, widened, promoted)
    dims, keepdim = _amax_dims(amax)
    keepdim = True if "keepdim" in forms else keepdim
    if dims not in ([-1], [rank(xs) - 1]) or keepdim is not True:
        return f"amax over dims {dims} (keepdim {keepdim}), not the last with keepdim"
    if reason := _check_f32(xs, amax, widened, promoted):
        return reason
    if scheme == "per_token" and rank(xs) < 2:
        return f"{TOKEN_FORMULA} scale over a rank-{rank(xs)} tensor, not a [..., K] one"
    if scheme != "per_token" and rank(xs) < 3:
        return f"{GROUP_FORMULA} scale over a rank-{rank(xs)} tensor, not a [..., K/G, G] view"
    return None


def _check_f32(xs: SSAValue, amax: CallOp, widened: bool, promoted: bool) -> str | None:
    if (element_type(xs) != F32 and not (promoted and widened)) or (
        element_type(amax.results[0]) != F32 and not widened
    ):
        return f"quantized in {_dtype(xs)}, not float32"
    return None


def _dtype(value: SSAValue) -> str:
    return dtype_name(element_type(value))


def _abs_of(amax: CallOp) -> SSAValue | None:
    """`x` where the amax reduces `|x|`."""
    abs_op = call(tensor_arg(amax, 0), ABS)
    return tensor_arg(abs_op, 0) if abs_op is not None else None


def _promoted(x: SSAValue, amax: CallOp) -> SSAValue:
    """The fp32 cast of 16-bit `x` that the amax reads, where the division reads `x`
    itself (promoted against the fp32 scale: the same fp32 values); else `x`."""
    read = _abs_of(amax)
    return read if read is not None and cast_of(read) == (x, F32) else x


def _by_reciprocal_of_an_amax(value: SSAValue) -> bool:
    """`value` is `x * reciprocal(s) [* 1]` with `s` computed from an amax."""
    scaling = scaling_of(value)
    return scaling is not None and _path_to_amax(scaling[1]) is not None


def match_dynamic_quant(op: CallOp) -> DynamicQuantMatch | str | None:
    """The dynamic fp8 quant whose final cast is `op`, why it is refused, or None when
    `op` ends no dynamic quant (a static scale is raise-fp8-quant's)."""
    if op.target.data not in CASTS or len(op.results) != 1:
        return None
    cast = cast_of(op.results[0])
    clamp = constant_clamp(cast[0]) if cast and cast[1] == Float8E4M3FNType() else None
    div = call(clamp.x, DIV) if clamp is not None else None
    if clamp is not None and div is None and _by_reciprocal_of_an_amax(clamp.x):
        return (
            "the value is multiplied by the reciprocal of its dynamic scale: the kernels "
            "divide by the scale (correctly rounded), which the product may miss by an ulp"
        )
    if clamp is None or div is None:
        return None
    xs, s = tensor_arg(div, 0), tensor_arg(div, 1)
    if xs is None or s is None:
        return None
    s, broadcast, repeats = _repeated_scale(s, xs)
    bounds = (clamp.lo, clamp.hi) == (-FP8_MAX, FP8_MAX)
    bounds_reason = f"clamp bounds ({clamp.lo}, {clamp.hi}) are not the fp8 range (-448, 448)"
    if broadcast and shape(s)[-1] != 1:  # type: ignore[index]  # a scale per group of columns
        main = [div, *clamp.ops, op, *broadcast]
        match = _match_repeated_groups(op.results[0], xs, s, repeats, main)
        return bounds_reason if match is not None and not bounds else match
    if (path := _path_to_amax(s)) is None:
        if _spreads_a_dynamic_scale(s):
            return (
                "the scale is spread over x's shape in a form not taken (a row or group "
                "scale repeated along the row, where the hidden size is static)"
            )
        return None
    if element_type(xs) != F32 and element_type(div.results[0]) == F32:
        xs = _promoted(xs, path[0])
    if not bounds:
        return bounds_reason
    match = _match(op.results[0], xs, s, [div, *clamp.ops, op, *broadcast])
    if not isinstance(match, str) and rank(div.results[0]) != rank(xs):  # s [1, 1, 1], x [T, K]
        return (
            f"the scale {dims(shape(s))} has more dims than x {dims(shape(xs))}: the "  # type: ignore[arg-type]
            "division broadcasts x to another shape"
        )
    return match


def _spreads_a_dynamic_scale(value: SSAValue) -> bool:
    """`value` is a scale computed from an amax, then expanded, cloned, unsqueezed, viewed
    or cast (a form _repeated_scale did not take)."""
    for _ in range(8):
        op = call(value, *SPREADS, *CASTS)
        source = tensor_arg(op, 0) if op is not None else None
        if source is None:
            return False
        if _path_to_amax(source) is not None:
            return True
        value = source
    return False


def _repeated_scale(s: SSAValue, xs: SSAValue) -> tuple[SSAValue, list[Operation], int]:
    """(s, [], 1) or, where the division reads a scale [..., n] repeated r times along x's
    last dim (n * r = K: a row scale, n = 1, or a scale per group of r), that scale, the
    ops that repeat it and r: `s.expand_as(x)` (rows), or torchao's
    `s.repeat_interleave(r, -1)` as decomposed (unsqueeze, expand, clone, view)."""
    # token dims may be symbolic (never 1: expand cannot change them), K may not
    dims = shape(xs)
    if dims is None or shape(s) != dims or not dims or dims[-1] == DYNAMIC:
        return s, [], 1
    ops: list[Operation] = []
    value = s
    if (view := call(value, *VIEWS)) is not None:  # repeat_interleave: [..., n, r] -> [..., K]
        clone = call(tensor_arg(view, 0), CLONE)
        if clone is None:
            return s, [], 1
        ops, value = [view, clone], tensor_arg(clone, 0)
    expand = call(value, EXPAND)
    scale = tensor_arg(expand, 0) if expand is not None else None
    if expand is None or scale is None:
        return s, [], 1
    n, r = 1, dims[-1]
    if ops:  # the repeats in a dim of their own, [..., n, r], that an unsqueeze made
        *lead, n, r = shape(expand.results[0])  # type: ignore[misc]
        unsqueeze = call(scale, UNSQUEEZE)
        scale = tensor_arg(unsqueeze, 0) if unsqueeze is not None else None
        if unsqueeze is None or scale is None or const_arg(unsqueeze, 1) not in (-1, rank(scale)):
            return s, [], 1
        if tuple(lead) != dims[:-1] or n * r != dims[-1]:
            return s, [], 1
        ops.append(unsqueeze)
    # the repeated scale is [..., n] over x's leading dims
    if shape(scale) != (*dims[:-1], n):
        return s, [], 1
    return scale, [*ops, expand], r


def _match_repeated_groups(
    q: SSAValue, xs: SSAValue, s: SSAValue, group: int, main: list[Operation]
) -> DynamicQuantMatch | str | None:
    """`q = fp8(clamp(xs / s.repeat_interleave(group, -1)))` (the ops `main`), `s` [...,
    K/G] the scales of x's groups: their amaxes [..., K/G, 1] as computed, viewed to [...,
    K/G] (then widened, for a formula in x's 16-bit dtype: torchao's 1x128 scale). None
    where `s` is not computed from an amax (not a dynamic quant)."""
    if not _spreads_a_dynamic_scale(s) and not computed_from_amax(s):
        return None
    if group not in GROUP_SIZES:
        return f"the scale is repeated in groups of {group}, not 64 or 128"
    peeled: list[Operation] = []
    value = s
    cast = cast_of(value)
    if cast is not None and cast[1] == F32 and element_type(cast[0]) != F32:
        peeled.append(value.owner)  # type: ignore[arg-type]
        value = cast[0]
    squeeze = call(value, *VIEWS, SQUEEZE_DIM, SQUEEZE_DIMS)
    amaxes = tensor_arg(squeeze, 0) if squeeze is not None else None
    path = _path_to_amax(amaxes) if amaxes is not None else None
    if squeeze is None or path is None or not _squeezes_last(squeeze, amaxes):  # type: ignore[arg-type]
        return "the repeated scale is not its groups' [..., K/G, 1] scales viewed to [..., K/G]"
    if element_type(s) != F32:
        return f"the repeated group scales are {_dtype(s)}, not float32 (nor is the division)"
    steps = _parse_formula(path)
    if isinstance(steps, str):
        return steps
    formula = _scheme(steps)
    in_dtype = formula == "per_token in_dtype"  # amax / 448, no floor: torchao's
    scheme = "per_group" if in_dtype else formula
    if scheme == "per_token":
        return f"a {TOKEN_FORMULA} scale repeated in groups of {group}"
    if scheme not in ("per_group", "per_group_ue8m0"):
        return scheme
    ops = list(dict.fromkeys([*main, *peeled, squeeze, path[0].inputs[0].owner, *path]))
    of = _abs_of(path[0])
    grouped = _group_input(of, ops) if of is not None else "the amax is not taken of |x|"
    if isinstance(grouped, str):
        return grouped
    inside = ops + grouped.ops  # x.float() may be read by both the amax and the division
    source, cast_ops = _strip_f32_cast(xs, inside)
    amax_x = grouped.x if grouped.x is source else _strip_f32_cast(grouped.x, inside)[0]
    dims, keepdim = _amax_dims(path[0])
    if grouped.group != group or amax_x is not source:
        return "the amax is not taken over the groups of the x that is quantized"
    if dims not in ([-1], [rank(amaxes) - 1]) or keepdim is not True:  # type: ignore[arg-type]
        return f"amax over dims {dims} (keepdim {keepdim}), not the last with keepdim"
    reason = _check_constants(steps, "per_token" if in_dtype else scheme)
    if scheme == "per_group_ue8m0":
        reason = reason or _ue8m0_reason(source)
    if in_dtype:
        reason = reason or _divides_in(steps, source)
    elif peeled or any(step.kind == "widen" for step in steps) or element_type(amaxes) != F32:
        reason = f"{GROUP_FORMULA} scale not computed in float32"
    if reason:
        return reason
    if (escaping := escaping_value(ops, [q, s])) is not None:
        return f"intermediate %{escaping.name_hint} has a user outside the quant"
    helpers = [step.helper for step in steps if step.helper is not None]
    quant = QuantAttr("per_group", group, ue8m0=scheme == "per_group_ue8m0", in_dtype=in_dtype)
    return DynamicQuantMatch(
        source, None, quant, q, [s], s.type, ops, grouped.ops + cast_ops + helpers
    )


@dataclass
class RaiseDynamicFp8QuantPattern(RewritePattern):
    standalone: bool = False

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: CallOp, rewriter: PatternRewriter) -> None:
        match = match_dynamic_quant(op)
        if match is None:
            return
        if not isinstance(match, str):
            match = host_reason(op) or match
        if isinstance(match, str):
            report.rejected(NAME, op, match)
            return
        through = epilogue_source(match.source, match.quant.scheme)
        if through is None and not self.standalone:
            report.rejected(NAME, op, "no producer to fuse into: left to the inner compiler")
            return
        if through is not None:  # the norm's result itself, maybe before its flatten
            match.source = through[0]
            match.dead_if_unused += through[1]
        operands = [match.source, *([match.ub] if match.ub is not None else [])]
        before = fused_insertion_point(match.ops, operands)
        if before is None:
            report.rejected(NAME, op, "no place for the fused op")
            return
        _rewrite(match, before, rewriter)
        report.fused(NAME)


def _rewrite(match: DynamicQuantMatch, before: Operation, rewriter: PatternRewriter) -> None:
    same = identical_quant(match.source, match.quant, match.ub, [match.q.type, match.scale_type])
    if same is not None:  # the same quant of the same value: one op computes both
        assert same.scale_out is not None
        rewriter.replace_all_uses_with(match.q, same.out)
        for scale in match.scales:
            rewriter.replace_all_uses_with(scale, same.scale_out)
        erase_dead(rewriter, match.ops + match.dead_if_unused)
        return
    new = QuantOp.build(
        operands=[match.source, [match.ub] if match.ub is not None else []],
        result_types=[match.q.type, [match.scale_type]],
        properties={"quant": match.quant},
    )
    rewriter.insert(new, InsertPoint.before(before))
    assert new.scale_out is not None
    new.out.name_hint = match.q.name_hint
    new.scale_out.name_hint = match.scales[0].name_hint if match.scales else None
    rewriter.replace_all_uses_with(match.q, new.out)
    for scale in match.scales:
        rewriter.replace_all_uses_with(scale, new.scale_out)
    erase_dead(rewriter, match.ops + match.dead_if_unused)


@dataclass(frozen=True)
class RaiseDynamicFp8Quant(ModulePass):
    """`standalone`: also raise quants whose input no irfuse op produces."""

    name = NAME
    standalone: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        pattern = RaiseDynamicFp8QuantPattern(self.standalone)
        PatternRewriteWalker(pattern, apply_recursively=False).rewrite_module(op)
