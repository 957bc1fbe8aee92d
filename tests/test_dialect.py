"""irfuse dialect: verifiers reject malformed ops with a clear message."""

from __future__ import annotations

import pytest
from xdsl.parser import Parser
from xdsl.utils.exceptions import VerifyException

from irfuse.dialects import make_context
from irfuse.dialects.irfuse import QuantAttr


def _verify(body: str, args: str) -> None:
    text = f"func.func @f({args}) {{\n{body}\n  func.return\n}}"
    Parser(make_context(), text).parse_module().verify()


X = "%x: tensor<4x64xbf16>, %w: tensor<64xbf16>, %s: tensor<1xf32>"


def test_valid_ops_verify():
    _verify(
        "  %y = irfuse.rms_norm %x, %w scale %s {eps = 1.0e-06 : f64, "
        "quant = #irfuse.quant<static>} : tensor<4x64xbf16>, tensor<64xbf16>, tensor<1xf32> "
        "-> tensor<4x64xf8E4M3FN>",
        X,
    )


@pytest.mark.parametrize(
    "body,args,match",
    [
        (
            "  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<4x64xbf16>, "
            "tensor<64xf32> -> tensor<4x64xbf16>",
            "%x: tensor<4x64xbf16>, %w: tensor<64xf32>",
            "weight dtype f32 != input dtype bf16",
        ),
        (
            "  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<4x64xbf16>, "
            "tensor<32xbf16> -> tensor<4x64xbf16>",
            "%x: tensor<4x64xbf16>, %w: tensor<32xbf16>",
            "weight must be 1-D of the hidden size",
        ),
        (
            "  %y = irfuse.rms_norm %x, %w : tensor<4x64xbf16>, tensor<64xbf16> "
            "-> tensor<4x64xbf16>",
            X,
            "needs exactly one of the `eps` property and an `eps` operand",
        ),
        (
            "  %y = irfuse.rms_norm %x, %w eps(%e : tensor<f64>) {eps = 1.0e-06 : f64} : "
            "tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>",
            X + ", %e: tensor<f64>",
            "needs exactly one of the `eps` property and an `eps` operand",
        ),
        (
            "  %y, %h = irfuse.fused_add_rms_norm %x, %x, %w eps(%e : tensor<1xf32>) : "
            "tensor<4x64xbf16>, tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>, "
            "tensor<4x64xbf16>",
            X + ", %e: tensor<1xf32>",
            "eps operand must be a 0-d f32 or f64 tensor",
        ),
        (
            "  %y, %h = irfuse.fused_add_rms_norm %x, %x, %w x_weight(%w : tensor<64xbf16>) "
            "{eps = 1.0e-06 : f64, rounded_sum} : tensor<4x64xbf16>, tensor<4x64xbf16>, "
            "tensor<64xbf16> -> tensor<4x64xbf16>, tensor<4x64xbf16>",
            X,
            "x_weight needs exactly one of the `x_eps` property and operand",
        ),
        (
            "  %y, %h = irfuse.fused_add_rms_norm %x, %x, %w x_weight(%w : tensor<64xbf16>) "
            "{eps = 1.0e-06 : f64, x_eps = 1.0e-06 : f64} : tensor<4x64xbf16>, "
            "tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>, tensor<4x64xbf16>",
            X,
            "x_weight needs rounded_sum",
        ),
        (
            "  %y, %h = irfuse.fused_add_rms_norm %x, %x, %w x_weight(%v : tensor<32xbf16>) "
            "{eps = 1.0e-06 : f64, rounded_sum, x_eps = 1.0e-06 : f64} : tensor<4x64xbf16>, "
            "tensor<4x64xbf16>, tensor<64xbf16> -> tensor<4x64xbf16>, tensor<4x64xbf16>",
            X + ", %v: tensor<32xbf16>",
            "weight must be 1-D of the hidden size",
        ),
        (
            "  %q = irfuse.quant %x {quant = #irfuse.quant<static>} : tensor<4x64xbf16> "
            "-> tensor<4x64xf8E4M3FN>",
            X,
            "'static' quant needs a scale operand",
        ),
        (
            "  %q, %qs = irfuse.quant %x {quant = #irfuse.quant<per_group 128>} : "
            "tensor<4x64xbf16> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>",
            X,
            "not a multiple of the group size 128",
        ),
        (
            "  %q, %qs = irfuse.quant %x {quant = #irfuse.quant<per_token>} : "
            "tensor<4x64xbf16> -> tensor<8x32xf8E4M3FN>, tensor<8x1xf32>",
            X,
            r"output shape \[8, 32\] is neither the input's \[4, 64\] nor, quantized, its",
        ),
        (
            "  %y = irfuse.rms_norm %x, %w {eps = 1.0e-06 : f64} : tensor<2x2x64xbf16>, "
            "tensor<64xbf16> -> tensor<4x64xbf16>",
            "%x: tensor<2x2x64xbf16>, %w: tensor<64xbf16>",
            "output shape",  # flattened only where quantized
        ),
        (
            "  %q, %qs = irfuse.quant %x scale %s {quant = #irfuse.quant<per_token in_dtype>} : "
            "tensor<4x64xbf16>, tensor<1xf32> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>",
            X,
            "'per_token' quant takes no scale operand",  # in_dtype takes no upper bound
        ),
        (
            "  %q, %qs = irfuse.quant %x {quant = #irfuse.quant<per_group 64 in_dtype>} : "
            "tensor<4x64xbf16> -> tensor<4x64xf8E4M3FN>, tensor<4x1xbf16>",
            X,
            "'per_group' quant scales must be f32",
        ),
        (
            "  %q, %qs = irfuse.quant %x {quant = #irfuse.quant<per_group 96>} : "
            "tensor<4x64xbf16> -> tensor<4x64xf8E4M3FN>, tensor<4x1xf32>",
            X,
            "group 64 or 128",
        ),
        (
            '  %o = irfuse.attention %q, %k, %k {scale = 1.0 : f64, causal = "none", '
            'layout = "bhsd"} : tensor<1x6x8x64xf16>, tensor<1x4x8x64xf16>, '
            "tensor<1x4x8x64xf16> -> tensor<1x6x8x64xf16>",
            "%q: tensor<1x6x8x64xf16>, %k: tensor<1x4x8x64xf16>",
            "query heads 6 not a multiple of kv heads 4",
        ),
    ],
)
def test_verifier_errors(body, args, match):
    with pytest.raises(VerifyException, match=match):
        _verify(body, args)


@pytest.mark.parametrize(
    "quant,match",
    [
        ("#irfuse.quant<static in_dtype>", "unknown static option 'in_dtype' \\(div\\)"),
        ("#irfuse.quant<per_token div>", "unknown per_token option 'div' \\(in_dtype\\)"),
    ],
)
def test_quant_options_belong_to_their_scheme(quant, match):
    with pytest.raises(Exception, match=match):
        Parser(make_context(), quant).parse_attribute()


def test_in_dtype_is_a_per_token_and_per_group_option():
    assert str(QuantAttr("per_token", in_dtype=True)) == "#irfuse.quant<per_token in_dtype>"
    assert str(QuantAttr("per_group", 64, in_dtype=True)) == "#irfuse.quant<per_group 64 in_dtype>"
    parsed = Parser(make_context(), "#irfuse.quant<per_tensor in_dtype>").parse_attribute()
    assert parsed == QuantAttr("per_tensor", in_dtype=True)
    with pytest.raises(VerifyException, match="'static' quant takes no in_dtype option"):
        QuantAttr("static", in_dtype=True)
    with pytest.raises(VerifyException, match="in_dtype scales take no ue8m0 option"):
        QuantAttr("per_group", 128, ue8m0=True, in_dtype=True)
