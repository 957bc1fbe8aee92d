"""The `irfuse` dialect: the operations that matter for LLM inference.

Every op here has a reference implementation in `irfuse.ops` (same name, same
semantics, see NUMERICS.md). Producers that can end with a quantization carry an
optional `quant` property (a `#irfuse.quant<...>` scheme) with its scale operand
(`quant_scale`: the static scale, the per-token upper bound, or the nvfp4 global
scale) and its scale result (`scale_out`: dynamic and nvfp4 block scales), so that
"fuse a quant into its producer" is one generic rewrite.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from xdsl.dialects.builtin import (
    BFloat16Type,
    Float8E4M3FNType,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntAttr,
    IntegerType,
    Signedness,
    StringAttr,
    TensorType,
    UnitAttr,
)
from xdsl.ir import Attribute, Dialect, ParametrizedAttribute, SSAValue
from xdsl.irdl import (
    AttrSizedOperandSegments,
    AttrSizedResultSegments,
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    operand_def,
    opt_operand_def,
    opt_prop_def,
    opt_result_def,
    prop_def,
    result_def,
)
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException

FP8 = Float8E4M3FNType()
FLOAT_TYPES = (BFloat16Type, Float16Type, Float32Type)
UI8 = IntegerType(8, Signedness.UNSIGNED)
DYNAMIC = -(2**63)

QUANT_KINDS = ("static", "per_token", "per_tensor", "per_group", "nvfp4")
GROUP_SIZES = (64, 128)


@irdl_attr_definition
class QuantAttr(ParametrizedAttribute):
    """A quantization scheme: `#irfuse.quant<static>`, `<per_token>`, `<per_tensor>`,
    `<per_group 128>` (options `col` for column-major scales, `ue8m0` for power-of-two
    scales), `<nvfp4>`. `<static div>`: `x / scale` correctly rounded, as a graph's
    division computes it, where `<static>` is NUMERICS.md's `x * (1 / scale)` (they differ
    by one fp8 step where the quotient is a tie). `<per_token in_dtype>`, `<per_group 128
    in_dtype>`: the row (group) scale divided in x's dtype and widened, with no lower
    bound, `float(dtype(amax / 448))` (torchao's per-row and 1x128 scales; no upper
    bound, no ue8m0)."""

    name = "irfuse.quant"

    kind: StringAttr
    group: IntAttr
    column_major: IntAttr
    ue8m0: IntAttr
    divide: IntAttr
    in_dtype: IntAttr

    def __init__(
        self,
        kind: str,
        group: int = 0,
        column_major: bool = False,
        ue8m0: bool = False,
        divide: bool = False,
        in_dtype: bool = False,
    ) -> None:
        super().__init__(
            StringAttr(kind),
            IntAttr(group),
            IntAttr(int(column_major)),
            IntAttr(int(ue8m0)),
            IntAttr(int(divide)),
            IntAttr(int(in_dtype)),
        )

    @property
    def scheme(self) -> str:
        return self.kind.data

    @property
    def text(self) -> str:
        """The scheme with its options, as printed and as the kernels name it:
        "per_group 128 col"."""
        group = f" {self.group.data}" if self.scheme == "per_group" else ""
        flags = " col" * self.column_major.data + " ue8m0" * self.ue8m0.data
        flags += " div" * self.divide.data + " in_dtype" * self.in_dtype.data
        return f"{self.scheme}{group}{flags}"

    def verify(self) -> None:
        kind = self.kind.data
        if kind not in QUANT_KINDS:
            raise VerifyException(f"unknown quant scheme '{kind}', expected one of {QUANT_KINDS}")
        if kind == "per_group":
            if self.group.data not in GROUP_SIZES:
                raise VerifyException(
                    f"per_group quant needs group 64 or 128, got {self.group.data}"
                )
        elif self.group.data or self.column_major.data or self.ue8m0.data:
            raise VerifyException(f"'{kind}' quant takes no group, col or ue8m0 option")
        if self.divide.data and kind != "static":
            raise VerifyException(f"'{kind}' quant takes no div option (only static)")
        if self.in_dtype.data and kind not in ("per_token", "per_tensor", "per_group"):
            raise VerifyException(
                f"'{kind}' quant takes no in_dtype option (only the dynamic fp8 ones)"
            )
        if self.in_dtype.data and self.ue8m0.data:
            raise VerifyException("in_dtype scales take no ue8m0 option")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> list[Attribute]:
        with parser.in_angle_brackets():
            kind = parser.parse_identifier()
            group = column_major = ue8m0 = divide = in_dtype = 0
            if kind == "static" and (flag := parser.parse_optional_identifier()) is not None:
                if flag != "div":
                    parser.raise_error(f"unknown static option '{flag}' (div)")
                divide = 1
            dynamic = kind in ("per_token", "per_tensor")
            if dynamic and (flag := parser.parse_optional_identifier()) is not None:
                if flag != "in_dtype":
                    parser.raise_error(f"unknown {kind} option '{flag}' (in_dtype)")
                in_dtype = 1
            if kind == "per_group":
                group = parser.parse_integer(allow_boolean=False, allow_negative=False)
                while (flag := parser.parse_optional_identifier()) is not None:
                    if flag == "col":
                        column_major = 1
                    elif flag == "ue8m0":
                        ue8m0 = 1
                    elif flag == "in_dtype":
                        in_dtype = 1
                    else:
                        parser.raise_error(
                            f"unknown per_group option '{flag}' (col, ue8m0, in_dtype)"
                        )
        return [
            StringAttr(kind),
            IntAttr(group),
            IntAttr(column_major),
            IntAttr(ue8m0),
            IntAttr(divide),
            IntAttr(in_dtype),
        ]

    def print_parameters(self, printer: Printer) -> None:
        printer.print_string(f"<{self.text}>")


def _tensor(value: SSAValue | None, what: str) -> TensorType:
    assert value is not None
    if not isinstance(value.type, TensorType):
        raise VerifyException(f"{what} must be a tensor, got {value.type}")
    return value.type


def _check_float(t: TensorType, what: str) -> None:
    if not isinstance(t.element_type, FLOAT_TYPES):
        raise VerifyException(f"{what} must be bf16, f16 or f32, got {t.element_type}")


def _dim(t: TensorType, i: int) -> int:
    return t.get_shape()[i]


def dims(shape: Sequence[int]) -> str:
    """`shape` for a message: `[?, 4096]`."""
    return "[" + ", ".join("?" if d == DYNAMIC else str(d) for d in shape) + "]"


def same_dim(a: int, b: int) -> bool:
    return a == DYNAMIC or b == DYNAMIC or a == b


def same_shape(a: Sequence[int], b: Sequence[int]) -> bool:
    """Same rank, and every dim the same where both are static."""
    return len(a) == len(b) and all(map(same_dim, a, b))


def _product(sizes: Sequence[int]) -> int:
    """The product of `sizes`, DYNAMIC if any is."""
    return DYNAMIC if DYNAMIC in sizes else math.prod(sizes)


def _quantized_width(quant: QuantAttr | None, width: int) -> int:
    """A row of `width` values as a quant stores it (nvfp4: two e2m1 values a byte)."""
    if quant is not None and quant.scheme == "nvfp4" and width != DYNAMIC:
        return width // 2
    return width


def verify_out_shape(quant: QuantAttr | None, out: TensorType, x: TensorType) -> None:
    """An fp8 (or unquantized) result has the input's shape, or, quantized, the input's
    token dims flattened: [B, S, K] -> [B*S, K] (the fused quant of a model's linear,
    which flattens its input first; the kernel's outputs are viewed so). nvfp4's is the
    2-D input's rows of two values a byte, of a hidden size that is a multiple of 16."""
    shape, x_shape = out.get_shape(), x.get_shape()
    if quant is not None and quant.scheme == "nvfp4":
        if len(x_shape) != 2 or (x_shape[1] != DYNAMIC and x_shape[1] % 16):
            raise VerifyException(
                f"nvfp4 quantizes [T, K] rows, K a multiple of 16: got {dims(x_shape)}"
            )
        if not same_shape(shape, (x_shape[0], _quantized_width(quant, x_shape[1]))):
            raise VerifyException(f"nvfp4 output {dims(shape)} is not the packed {dims(x_shape)}")
        return
    if same_shape(shape, x_shape):
        return
    flattened = (
        quant is not None
        and len(shape) == 2
        and len(x_shape) > 2
        and DYNAMIC not in (shape[-1], x_shape[-1])
        and shape[-1] == x_shape[-1]
        and same_dim(shape[0], _product(x_shape[:-1]))
    )
    if not flattened:
        raise VerifyException(
            f"output shape {dims(shape)} is neither the input's {dims(x_shape)} nor, "
            "quantized, its token dims flattened"
        )


def _expected_scales(quant: QuantAttr, out: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """The shapes a `quant` scale result may have for the quantized `out`: one per token
    row; one per group of a row (column-major scales are that shape's transpose in
    memory); one for the tensor (of any rank up to the output's); nvfp4's swizzled block
    scales (int32 words of four e4m3 scales, rows padded to 128, blocks of 16 to a
    multiple of 4)."""
    kind, rows, width = quant.scheme, tuple(out[:-1]), out[-1]
    if kind == "per_tensor":  # one element, of any rank (`amax(keepdim=True)`: [1, 1])
        return tuple((1,) * rank for rank in range(len(out) + 1))
    if kind == "per_token":
        return ((*rows, 1),)
    if kind == "per_group":
        return ((*rows, DYNAMIC if width == DYNAMIC else width // quant.group.data),)
    m = rows[0]  # nvfp4: out is [m, n / 2]
    padded_rows = DYNAMIC if m == DYNAMIC else -(-m // 128) * 128
    words = DYNAMIC if width == DYNAMIC else -(-width // 8 // 4)
    return ((padded_rows, words),)


def _verify_scale_shape(quant: QuantAttr, out: Sequence[int], scale_out: SSAValue) -> None:
    shape = _tensor(scale_out, "scale_out").get_shape()
    expected = _expected_scales(quant, out)
    if not any(same_shape(shape, e) for e in expected):
        raise VerifyException(
            f"'{quant.text}' scales of a {dims(out)} output are "
            f"{' or '.join(map(dims, expected))}, got {dims(shape)}"
        )


def verify_output_quant(
    quant: QuantAttr | None,
    out: TensorType,
    in_scale: SSAValue | None,
    scale_out: SSAValue | None,
    source_dtype: Attribute,
) -> None:
    """Check the result type and scale operands/results of a (possibly absent) quant;
    `source_dtype` is the element type of the value before quantization."""
    if quant is None:
        if in_scale is not None or scale_out is not None:
            raise VerifyException("quant_scale / scale_out given without a quant scheme")
        if out.element_type != source_dtype:
            raise VerifyException(
                f"output element type {out.element_type} != {source_dtype} (the input's, "
                "or f32 for an `unrounded` norm)"
            )
        return
    kind = quant.scheme
    wants_in = {"static": True, "nvfp4": True, "per_token": None}.get(kind, False)
    if wants_in is True and in_scale is None:
        raise VerifyException(f"'{kind}' quant needs a scale operand")
    if (wants_in is False or quant.in_dtype.data) and in_scale is not None:
        raise VerifyException(f"'{kind}' quant takes no scale operand")
    if in_scale is not None:
        scale_t = _tensor(in_scale, "quant scale")
        if scale_t.element_type != Float32Type() or scale_t.get_shape() not in ((1,), ()):
            raise VerifyException(f"quant scale must be tensor<1xf32>, got {scale_t}")
    if (kind == "static") != (scale_out is None):
        raise VerifyException(
            "static quant returns no scale"
            if kind == "static"
            else f"'{kind}' quant returns a scale"
        )
    shape = out.get_shape()
    if not shape:
        raise VerifyException("a quantized output needs a last (hidden) dim, got a 0-d tensor")
    if kind == "nvfp4":
        if out.element_type != UI8:
            raise VerifyException(
                f"nvfp4 output must be ui8 (two e2m1 per byte), got {out.element_type}"
            )
        if len(shape) != 2:
            raise VerifyException(f"nvfp4 quant needs a 2-D output, got rank {len(shape)}")
        scale_type = _tensor(scale_out, "scale_out").element_type
        if scale_type != IntegerType(32):
            raise VerifyException(f"nvfp4 block scales must be i32, got {scale_type}")
        _verify_scale_shape(quant, shape, scale_out)
        return
    if out.element_type != FP8:
        raise VerifyException(f"fp8 quant output must be f8E4M3FN, got {out.element_type}")
    if scale_out is not None and _tensor(scale_out, "scale_out").element_type != Float32Type():
        raise VerifyException(f"'{kind}' quant scales must be f32, got {scale_out.type}")
    if kind == "per_group" and shape[-1] != DYNAMIC and shape[-1] % quant.group.data:
        raise VerifyException(
            f"hidden size {shape[-1]} is not a multiple of the group size {quant.group.data}"
        )
    if scale_out is not None:
        _verify_scale_shape(quant, shape, scale_out)


class QuantProducer(IRDLOperation):
    """Shared accessors of the ops with an optional output quant."""

    def output_quant(self) -> QuantAttr | None:
        quant = self.properties.get("quant")
        assert quant is None or isinstance(quant, QuantAttr)
        return quant


_SEGMENTS = (
    ParsePropInAttrDict(),
    AttrSizedOperandSegments(as_property=True),
    AttrSizedResultSegments(as_property=True),
)


@irdl_op_definition
class QuantOp(QuantProducer):
    """Standalone quantization of `x` with `quant`; `quant_scale` is the static scale,
    the per-token upper bound or the nvfp4 global scale."""

    name = "irfuse.quant"
    x = operand_def(TensorType)
    quant_scale = opt_operand_def(TensorType)
    quant = prop_def(QuantAttr)
    out = result_def(TensorType)
    scale_out = opt_result_def(TensorType)
    irdl_options = _SEGMENTS
    assembly_format = (
        "$x (`scale` $quant_scale^)? attr-dict `:` type($x) (`,` type($quant_scale)^)?"
        " `->` type($out) (`,` type($scale_out)^)?"
    )

    def verify_(self) -> None:
        x = _tensor(self.x, "x")
        _check_float(x, "quant input")
        if x.get_num_dims() == 0:
            raise VerifyException("quant input must have a hidden dim, got a 0-d tensor")
        out = _tensor(self.out, "out")
        verify_out_shape(self.quant, out, x)
        verify_output_quant(self.quant, out, self.quant_scale, self.scale_out, x.element_type)


def _verify_value(declared: SSAValue | None, op: IRDLOperation, x: TensorType) -> None:
    if declared is None:
        return
    if op.properties.get("quant") is None:
        raise VerifyException("a `value` result needs an output quant")
    expected = Float32Type() if op.properties.get("unrounded") else x.element_type
    if not isinstance(declared.type, TensorType) or declared.type.element_type != expected:
        raise VerifyException(f"`value` must be a tensor of {expected}")
    shape, x_shape = declared.type.get_shape(), x.get_shape()
    if not same_shape(shape, x_shape):
        raise VerifyException(f"`value` has the input's shape {dims(x_shape)}, got {dims(shape)}")


def _verify_unrounded(op: IRDLOperation) -> None:
    if op.properties.get("unrounded") and not (
        op.properties.get("fp32_weight_mul") or op.properties.get("gemma")
    ):
        raise VerifyException("unrounded needs fp32_weight_mul or gemma (the plain form rounds)")


def _verify_norm(x: TensorType, w: TensorType, gemma: bool) -> None:
    _check_float(x, "norm input")
    if x.get_num_dims() == 0:
        raise VerifyException("norm input must have a hidden dim, got a 0-d tensor")
    if w.get_num_dims() != 1 or not same_dim(_dim(w, 0), _dim(x, -1)):
        raise VerifyException(f"weight must be 1-D of the hidden size, got {w} for input {x}")
    if w.element_type != x.element_type and not (gemma and w.element_type == Float32Type()):
        raise VerifyException(f"weight dtype {w.element_type} != input dtype {x.element_type}")


def _verify_eps(op: RmsNormOp | FusedAddRmsNormOp | RmsNormAddOp) -> None:
    """eps is a constant (`eps`) or read at run time (`eps_value`), exactly one of them."""
    if (op.eps is None) == (op.eps_value is None):
        raise VerifyException("needs exactly one of the `eps` property and an `eps` operand")
    if op.eps is not None and op.eps.value.data < 0:
        raise VerifyException(f"eps must be non-negative, got {op.eps.value.data}")
    if op.eps_value is not None:
        _verify_eps_operand(op.eps_value, "eps")


def _verify_eps_operand(value: SSAValue, what: str) -> None:
    t = _tensor(value, what)
    if t.get_num_dims() != 0 or not isinstance(t.element_type, (Float32Type, Float64Type)):
        raise VerifyException(f"{what} operand must be a 0-d f32 or f64 tensor, got {t}")


@irdl_op_definition
class RmsNormOp(QuantProducer):
    """`y = (x * rsqrt(mean(x^2) + eps)).to(dtype) * w` over the last dim, optionally quantized.

    `fp32_weight_mul`: multiply by the weight in fp32 and cast after (the form of
    F.rms_norm's decomposition); `gemma`: multiply by `1 + w` in fp32 (implies it).
    `unrounded`: the normalised value is not rounded to the input dtype: the result
    (or what the output quant reads) is f32 (Inductor drops that round trip when an fp32
    consumer follows). `value`: with a quant, the kernel also writes the unquantized
    value (for readers that need it: one kernel instead of two passes over memory).
    eps is the `eps` property, or the `eps` operand: a 0-d tensor read at run time (a
    float that `torch.compile(dynamic=True)` made a graph input), rounded to f32.
    """

    name = "irfuse.rms_norm"
    x = operand_def(TensorType)
    weight = operand_def(TensorType)
    eps_value = opt_operand_def(TensorType)
    quant_scale = opt_operand_def(TensorType)
    eps = opt_prop_def(FloatAttr)
    gemma = opt_prop_def(UnitAttr)
    fp32_weight_mul = opt_prop_def(UnitAttr)
    unrounded = opt_prop_def(UnitAttr)
    quant = opt_prop_def(QuantAttr)
    y = result_def(TensorType)
    scale_out = opt_result_def(TensorType)
    value = opt_result_def(TensorType)
    irdl_options = _SEGMENTS
    assembly_format = (
        "$x `,` $weight (`eps` `(` $eps_value^ `:` type($eps_value) `)`)?"
        " (`scale` $quant_scale^)? attr-dict `:` type($x) `,` type($weight)"
        " (`,` type($quant_scale)^)? `->` type($y) (`,` type($scale_out)^)?"
        " (`value` type($value)^)?"
    )

    def verify_(self) -> None:
        x = _tensor(self.x, "x")
        _verify_norm(x, _tensor(self.weight, "weight"), self.gemma is not None)
        _verify_eps(self)
        _verify_unrounded(self)
        _verify_value(self.value, self, x)
        verify_out_shape(self.quant, _tensor(self.y, "y"), x)
        verify_output_quant(
            self.quant,
            _tensor(self.y, "y"),
            self.quant_scale,
            self.scale_out,
            Float32Type() if self.unrounded else x.element_type,
        )


@irdl_op_definition
class FusedAddRmsNormOp(QuantProducer):
    """`s = x + residual` (fp32); `residual_out = s` in the model dtype; `y = rms_norm(s)`.

    `rounded_sum`: the norm reads `residual_out` (the sum rounded to the model dtype)
    instead of the fp32 `s`: exactly the graph's `add` then `rms_norm`, which is what
    fuse-add-rms-norm builds. Without it, the serving stacks' semantics (NUMERICS.md).

    `x_weight` (with `rounded_sum`, and the `x_eps` property or the `x_eps` operand read
    at run time): `x` is first normalised, `x = rms_norm(x, x_weight, x_eps)` rounded to
    the model dtype with the op's weight form: a sandwich norm's first half (Gemma's
    post-attention norm before the residual add), which fuse-sandwich-norm folds in.
    """

    name = "irfuse.fused_add_rms_norm"
    x = operand_def(TensorType)
    residual = operand_def(TensorType)
    weight = operand_def(TensorType)
    x_weight = opt_operand_def(TensorType)
    x_eps_value = opt_operand_def(TensorType)
    eps_value = opt_operand_def(TensorType)
    quant_scale = opt_operand_def(TensorType)
    eps = opt_prop_def(FloatAttr)
    gemma = opt_prop_def(UnitAttr)
    fp32_weight_mul = opt_prop_def(UnitAttr)
    unrounded = opt_prop_def(UnitAttr)
    rounded_sum = opt_prop_def(UnitAttr)
    x_eps = opt_prop_def(FloatAttr)
    quant = opt_prop_def(QuantAttr)
    y = result_def(TensorType)
    residual_out = result_def(TensorType)
    scale_out = opt_result_def(TensorType)
    value = opt_result_def(TensorType)
    irdl_options = _SEGMENTS
    assembly_format = (
        "$x `,` $residual `,` $weight (`x_weight` `(` $x_weight^ `:` type($x_weight) `)`)?"
        " (`x_eps` `(` $x_eps_value^ `:` type($x_eps_value) `)`)?"
        " (`eps` `(` $eps_value^ `:` type($eps_value) `)`)?"
        " (`scale` $quant_scale^)? attr-dict `:` type($x) `,`"
        " type($residual) `,` type($weight) (`,` type($quant_scale)^)? `->` type($y) `,`"
        " type($residual_out) (`,` type($scale_out)^)? (`value` type($value)^)?"
    )

    def verify_(self) -> None:
        x = _tensor(self.x, "x")
        residual = _tensor(self.residual, "residual")
        if residual.element_type != x.element_type or residual.get_shape() != x.get_shape():
            raise VerifyException(f"residual {residual} must match the input {x}")
        _verify_norm(x, _tensor(self.weight, "weight"), self.gemma is not None)
        _verify_eps(self)
        _verify_unrounded(self)
        _verify_value(self.value, self, x)
        self._verify_x_norm(x)
        if _tensor(self.residual_out, "residual_out") != x:
            raise VerifyException("residual_out must have the input's type")
        verify_out_shape(self.quant, _tensor(self.y, "y"), x)
        verify_output_quant(
            self.quant,
            _tensor(self.y, "y"),
            self.quant_scale,
            self.scale_out,
            Float32Type() if self.unrounded else x.element_type,
        )

    def _verify_x_norm(self, x: TensorType) -> None:
        has_eps = (self.x_eps is not None) + (self.x_eps_value is not None)
        if self.x_weight is None:
            if has_eps:
                raise VerifyException("x_eps without x_weight (x's own norm needs both)")
            return
        if has_eps != 1:
            raise VerifyException("x_weight needs exactly one of the `x_eps` property and operand")
        if self.rounded_sum is None:
            raise VerifyException("x_weight needs rounded_sum (the graph's add of x's norm)")
        _verify_norm(x, _tensor(self.x_weight, "x_weight"), self.gemma is not None)
        if self.x_eps is not None and self.x_eps.value.data < 0:
            raise VerifyException(f"x_eps must be non-negative, got {self.x_eps.value.data}")
        if self.x_eps_value is not None:
            _verify_eps_operand(self.x_eps_value, "x_eps")


@irdl_op_definition
class RmsNormAddOp(QuantProducer):
    """`residual_out = (rms_norm(x, w) + residual)` in the model dtype (the norm rounded to
    it first, as the graph's add reads it); `y = quant(residual_out)`: a post-norm (OLMo
    2's `r + norm(x)`) and the quant of the sum, which fuse-norm-add-quant builds. The
    weight forms and eps as `irfuse.rms_norm`'s; a quant is required (without one, the
    inner compiler's kernel of the norm and add is as fast).
    """

    name = "irfuse.rms_norm_add"
    x = operand_def(TensorType)
    residual = operand_def(TensorType)
    weight = operand_def(TensorType)
    eps_value = opt_operand_def(TensorType)
    quant_scale = opt_operand_def(TensorType)
    eps = opt_prop_def(FloatAttr)
    gemma = opt_prop_def(UnitAttr)
    fp32_weight_mul = opt_prop_def(UnitAttr)
    quant = prop_def(QuantAttr)
    y = result_def(TensorType)
    residual_out = result_def(TensorType)
    scale_out = opt_result_def(TensorType)
    irdl_options = _SEGMENTS
    assembly_format = (
        "$x `,` $residual `,` $weight (`eps` `(` $eps_value^ `:` type($eps_value) `)`)?"
        " (`scale` $quant_scale^)? attr-dict `:` type($x) `,` type($residual) `,`"
        " type($weight) (`,` type($quant_scale)^)? `->` type($y) `,` type($residual_out)"
        " (`,` type($scale_out)^)?"
    )

    def verify_(self) -> None:
        x = _tensor(self.x, "x")
        if _tensor(self.residual, "residual") != x:
            raise VerifyException(f"residual {self.residual.type} must match the input {x}")
        _verify_norm(x, _tensor(self.weight, "weight"), self.gemma is not None)
        _verify_eps(self)
        if _tensor(self.residual_out, "residual_out") != x:
            raise VerifyException("residual_out must have the input's type")
        y = _tensor(self.y, "y")
        verify_out_shape(self.quant, y, x)
        verify_output_quant(self.quant, y, self.quant_scale, self.scale_out, x.element_type)


def weight_form(op: RmsNormOp | FusedAddRmsNormOp | RmsNormAddOp) -> str:
    """How a norm multiplies its weight: plain (`n.to(dt) * w`), fp32 (`(n * w).to(dt)`)
    or gemma (`(n * (1 + w)).to(dt)`)."""
    return "gemma" if op.gemma else "fp32" if op.fp32_weight_mul else "plain"


CAUSAL_KINDS = ("none", "top_left", "bottom_right")
ATTENTION_LAYOUTS = ("bhsd", "bs_hd")


@irdl_op_definition
class AttentionOp(QuantProducer):
    """`softmax(q k^T * scale + mask) v` with GQA; `layout = "bs_hd"` writes the output as
    `[B, Sq, Hq*Dv]` (the transpose + reshape before the output projection)."""

    name = "irfuse.attention"
    q = operand_def(TensorType)
    k = operand_def(TensorType)
    v = operand_def(TensorType)
    mask = opt_operand_def(TensorType)
    quant_scale = opt_operand_def(TensorType)
    scale = prop_def(FloatAttr)
    causal = prop_def(StringAttr)
    layout = prop_def(StringAttr)
    quant = opt_prop_def(QuantAttr)
    out = result_def(TensorType)
    lse = opt_result_def(TensorType)
    scale_out = opt_result_def(TensorType)
    irdl_options = _SEGMENTS
    assembly_format = (
        "$q `,` $k `,` $v (`mask` $mask^)? (`scale` $quant_scale^)? attr-dict `:` type($q) `,`"
        " type($k) `,` type($v) (`mask` type($mask)^)? (`scale` type($quant_scale)^)?"
        " `->` type($out)"
        # `lse` leads its group: a group led by `,` would take the scales' comma
        " (`lse` type($lse)^)? (`,` type($scale_out)^)?"
    )

    def verify_(self) -> None:
        q, k, v = (_tensor(x, n) for x, n in ((self.q, "q"), (self.k, "k"), (self.v, "v")))
        for t, n in ((q, "q"), (k, "k"), (v, "v")):
            _check_float(t, n)
            if t.get_num_dims() != 4:
                raise VerifyException(f"{n} must be 4-D [B, H, S, D], got {t}")
        if k.element_type != q.element_type or v.element_type != q.element_type:
            raise VerifyException("q, k and v must have the same element type")
        hq, hkv = _dim(q, 1), _dim(k, 1)
        if DYNAMIC not in (hq, hkv) and (hkv == 0 or hq % hkv):
            raise VerifyException(f"query heads {hq} not a multiple of kv heads {hkv}")
        if not same_dim(_dim(q, 3), _dim(k, 3)):
            raise VerifyException(f"q head dim {_dim(q, 3)} != k head dim {_dim(k, 3)}")
        if self.causal.data not in CAUSAL_KINDS:
            raise VerifyException(f"causal must be one of {CAUSAL_KINDS}")
        if self.mask is not None and self.causal.data != "none":
            raise VerifyException("an explicit mask and a causal mask cannot be combined")
        if self.layout.data not in ATTENTION_LAYOUTS:
            raise VerifyException(f"layout must be one of {ATTENTION_LAYOUTS}")
        rows_quant = self.quant is not None and self.quant.scheme in ("per_token", "nvfp4")
        if rows_quant and self.layout.data != "bs_hd":
            raise VerifyException(
                f"a {self.quant.scheme} quant of [B, Sq, Hq*Dv] rows needs layout bs_hd"
            )
        _verify_attention_shapes(self, q, k, v)
        verify_output_quant(
            self.quant,
            _tensor(self.out, "out"),
            self.quant_scale,
            self.scale_out,
            q.element_type,
        )


def _verify_attention_shapes(op: AttentionOp, q: TensorType, k: TensorType, v: TensorType):
    """k and v agree with q (batch; k and v heads and keys), the output has the layout's
    shape ([B, Hq, Sq, Dv]; bs_hd [B, Sq, Hq*Dv], or with a quant its 2-D [B*Sq, Hq*Dv]
    view, nvfp4 packing two values a byte), lse is f32 [B, Hq, Sq], a mask is bool or
    float and broadcasts to [B, Hq, Sq, Skv]."""
    (b, hq, sq, _), (bk, hkv, skv, _), (bv, hv, sv, dv) = (
        q.get_shape(),
        k.get_shape(),
        v.get_shape(),
    )
    if not (same_dim(b, bk) and same_dim(b, bv)):
        raise VerifyException(f"batch sizes of q, k, v differ: {b}, {bk}, {bv}")
    if not (same_dim(hkv, hv) and same_dim(skv, sv)):
        raise VerifyException(f"k and v differ in heads or keys: {k} vs {v}")
    out = _tensor(op.out, "out").get_shape()
    quant = op.quant
    width = _quantized_width(quant, _product((hq, dv)))
    rows = _product((b, sq))
    expected = [(b, hq, sq, dv)] if op.layout.data == "bhsd" else [(b, sq, width)]
    if quant is not None and op.layout.data == "bs_hd":
        expected.append((rows, width))
    if not any(same_shape(out, e) for e in expected):
        raise VerifyException(f"output shape {dims(out)} is not {' or '.join(map(dims, expected))}")
    if op.lse is not None:
        lse = _tensor(op.lse, "lse")
        shape = lse.get_shape()
        if lse.element_type != Float32Type() or not same_shape(shape, (b, hq, sq)):
            raise VerifyException(f"lse must be f32 [B, Hq, Sq] = {dims((b, hq, sq))}, got {lse}")
    if op.mask is not None:
        mask = _tensor(op.mask, "mask")
        shape, full = mask.get_shape(), (b, hq, sq, skv)
        if mask.element_type != IntegerType(1) and not isinstance(mask.element_type, FLOAT_TYPES):
            raise VerifyException(f"mask must be i1 (bool) or a float, got {mask.element_type}")
        broadcasts = len(shape) <= 4 and all(
            m == 1 or same_dim(m, f) for m, f in zip(reversed(shape), reversed(full), strict=False)
        )
        if not broadcasts:
            raise VerifyException(f"mask {dims(shape)} does not broadcast to {dims(full)}")


@irdl_op_definition
class MlaAttentionOp(QuantProducer):
    """DeepSeek-style multi-head latent attention (NUMERICS.md), output `[T, N*Dv]`."""

    name = "irfuse.mla_attention"
    q = operand_def(TensorType)
    kv_c = operand_def(TensorType)
    k_pe = operand_def(TensorType)
    w_uk = operand_def(TensorType)
    w_uv = operand_def(TensorType)
    quant_scale = opt_operand_def(TensorType)
    scale = prop_def(FloatAttr)
    causal = opt_prop_def(UnitAttr)
    quant = opt_prop_def(QuantAttr)
    out = result_def(TensorType)
    scale_out = opt_result_def(TensorType)
    irdl_options = _SEGMENTS
    assembly_format = (
        "$q `,` $kv_c `,` $k_pe `,` $w_uk `,` $w_uv (`scale` $quant_scale^)? attr-dict `:`"
        " type($q) `,` type($kv_c) `,` type($k_pe) `,` type($w_uk) `,` type($w_uv)"
        " (`,` type($quant_scale)^)? `->` type($out) (`,` type($scale_out)^)?"
    )

    def verify_(self) -> None:
        q, kv_c, k_pe = _tensor(self.q, "q"), _tensor(self.kv_c, "kv_c"), _tensor(self.k_pe, "k_pe")
        w_uk, w_uv = _tensor(self.w_uk, "w_uk"), _tensor(self.w_uv, "w_uv")
        for t, n, rank in (
            (q, "q", 3),
            (kv_c, "kv_c", 2),
            (k_pe, "k_pe", 3),
            (w_uk, "w_uk", 3),
            (w_uv, "w_uv", 3),
        ):
            _check_float(t, n)
            if t.get_num_dims() != rank:
                raise VerifyException(f"{n} must have rank {rank}, got {t}")
        if kv_c.element_type != q.element_type or k_pe.element_type != q.element_type:
            raise VerifyException("q, kv_c and k_pe must have the same element type")
        if not same_dim(_dim(w_uk, 2), _dim(kv_c, 1)) or not same_dim(_dim(w_uv, 1), _dim(kv_c, 1)):
            raise VerifyException("w_uk / w_uv latent dim must match kv_c's last dim")
        if not (same_dim(_dim(w_uk, 0), _dim(q, 1)) and same_dim(_dim(w_uv, 0), _dim(q, 1))):
            raise VerifyException("w_uk / w_uv must have q's heads (dim 0)")
        if not same_dim(_dim(k_pe, 0), _dim(kv_c, 0)) or not same_dim(_dim(k_pe, 1), 1):
            raise VerifyException("k_pe must be [Tk, 1, Dr], Tk kv_c's rows")
        nope_rope = (_dim(w_uk, 1), _dim(k_pe, 2))
        if DYNAMIC not in nope_rope and not same_dim(_dim(q, 2), sum(nope_rope)):
            raise VerifyException("q head dim must be nope dim + rope dim")
        out = _tensor(self.out, "out")
        row = _product((_dim(q, 1), _dim(w_uv, 2)))
        if self.quant is not None and self.quant.scheme == "nvfp4" and row != DYNAMIC and row % 16:
            raise VerifyException(f"nvfp4 quantizes rows of a multiple of 16: N*Dv is {row}")
        width = _quantized_width(self.quant, row)
        expected = (_dim(q, 0), width)
        if not same_shape(out.get_shape(), expected):
            raise VerifyException(f"output must be [T, N*Dv] = {dims(expected)}, got {out}")
        verify_output_quant(self.quant, out, self.quant_scale, self.scale_out, q.element_type)


@irdl_op_definition
class MergeAttnStatesOp(QuantProducer):
    """Merge two partial attention results by their log-sum-exp (NUMERICS.md)."""

    name = "irfuse.merge_attn_states"
    p_out = operand_def(TensorType)
    p_lse = operand_def(TensorType)
    s_out = operand_def(TensorType)
    s_lse = operand_def(TensorType)
    quant_scale = opt_operand_def(TensorType)
    quant = opt_prop_def(QuantAttr)
    out = result_def(TensorType)
    lse = result_def(TensorType)
    scale_out = opt_result_def(TensorType)
    irdl_options = _SEGMENTS
    assembly_format = (
        "$p_out `,` $p_lse `,` $s_out `,` $s_lse (`scale` $quant_scale^)? attr-dict `:`"
        " type($p_out) `,` type($p_lse) `,` type($s_out) `,` type($s_lse)"
        " (`,` type($quant_scale)^)? `->` type($out) `,` type($lse) (`,` type($scale_out)^)?"
    )

    def verify_(self) -> None:
        p_out, s_out = _tensor(self.p_out, "p_out"), _tensor(self.s_out, "s_out")
        p_lse, s_lse = _tensor(self.p_lse, "p_lse"), _tensor(self.s_lse, "s_lse")
        _check_float(p_out, "p_out")
        if p_out != s_out or p_out.get_num_dims() != 3:
            raise VerifyException("p_out and s_out must be the same [T, H, D] type")
        if p_lse != s_lse or p_lse.get_num_dims() != 2 or p_lse.element_type != Float32Type():
            raise VerifyException("p_lse and s_lse must be the same [H, T] f32 type")
        (t, h, _), (lse_h, lse_t) = p_out.get_shape(), p_lse.get_shape()
        if not (same_dim(lse_h, h) and same_dim(lse_t, t)):
            raise VerifyException(f"p_lse must be [H, T] = {dims((h, t))} of p_out, got {p_lse}")
        if _tensor(self.lse, "lse") != p_lse:
            raise VerifyException(f"the merged lse is {p_lse}, got {self.lse.type}")
        out = _tensor(self.out, "out")
        if self.quant is not None and self.quant.text != "static":  # the reference's x * (1/s)
            raise VerifyException(f"a merge's output quant is <static>, got <{self.quant.text}>")
        if not same_shape(out.get_shape(), p_out.get_shape()):
            raise VerifyException(f"output must be p_out's [T, H, D], got {out}")
        verify_output_quant(self.quant, out, self.quant_scale, self.scale_out, p_out.element_type)


@irdl_op_definition
class AllReduceOp(IRDLOperation):
    """Sum over the ranks of `group` (fp32 accumulation). Has effects: never `Pure`."""

    name = "irfuse.all_reduce"
    x = operand_def(TensorType)
    group = prop_def(StringAttr)
    y = result_def(TensorType)
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = "$x attr-dict `:` type($x) `->` type($y)"

    def verify_(self) -> None:
        _check_float(_tensor(self.x, "x"), "x")  # its sum accumulates in fp32
        if self.x.type != self.y.type:
            raise VerifyException("all_reduce result must have the input's type")


@irdl_op_definition
class AllReduceRmsNormOp(QuantProducer):
    """all_reduce(x) (+ residual) then rms_norm, optionally quantized, in one kernel."""

    name = "irfuse.all_reduce_rms_norm"
    x = operand_def(TensorType)
    residual = opt_operand_def(TensorType)
    weight = operand_def(TensorType)
    quant_scale = opt_operand_def(TensorType)
    group = prop_def(StringAttr)
    eps = prop_def(FloatAttr)
    gemma = opt_prop_def(UnitAttr)
    quant = opt_prop_def(QuantAttr)
    y = result_def(TensorType)
    residual_out = opt_result_def(TensorType)
    scale_out = opt_result_def(TensorType)
    irdl_options = _SEGMENTS
    assembly_format = (
        "$x (`residual` $residual^)? `,` $weight (`scale` $quant_scale^)? attr-dict `:`"
        " type($x) (`residual` type($residual)^)? `,` type($weight) (`,` type($quant_scale)^)?"
        " `->` type($y) (`residual` type($residual_out)^)? (`,` type($scale_out)^)?"
    )

    def verify_(self) -> None:
        x = _tensor(self.x, "x")
        _verify_norm(x, _tensor(self.weight, "weight"), self.gemma is not None)
        if self.eps.value.data < 0:
            raise VerifyException(f"eps must be non-negative, got {self.eps.value.data}")
        if (self.residual is None) != (self.residual_out is None):
            raise VerifyException("residual and residual_out go together")
        for value, what in ((self.residual, "residual"), (self.residual_out, "residual_out")):
            if value is not None and _tensor(value, what) != x:
                raise VerifyException(f"{what} must have the input's type {x}, got {value.type}")
        verify_out_shape(self.quant, _tensor(self.y, "y"), x)
        verify_output_quant(
            self.quant, _tensor(self.y, "y"), self.quant_scale, self.scale_out, x.element_type
        )


Irfuse = Dialect(
    "irfuse",
    [
        QuantOp,
        RmsNormOp,
        FusedAddRmsNormOp,
        RmsNormAddOp,
        AttentionOp,
        MlaAttentionOp,
        MergeAttnStatesOp,
        AllReduceOp,
        AllReduceRmsNormOp,
    ],
    [QuantAttr],
)
