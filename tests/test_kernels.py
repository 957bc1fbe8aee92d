"""Generated norm/quant kernels against the unfused reference ops (irfuse.ops).

On CPU these run the real generated Triton source through the interpreter."""

from __future__ import annotations

import pytest
import torch

import irfuse.ops as ref
from irfuse.lowering.kernel_spec import KernelSpec, kernel_source
from irfuse.lowering.runtime import kernel_norm
from tests.helpers import assert_close, assert_fp8_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(t: int, h: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g).to(dtype).to(DEVICE)
    residual = torch.randn(t, h, generator=g).to(dtype).to(DEVICE)
    weight = (1 + 0.1 * torch.randn(h, generator=g)).to(dtype).to(DEVICE)
    scale = torch.tensor([0.02], device=DEVICE)
    return x, residual, weight, scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("t,h", [(1, 64), (5, 96), (3, 257)])
def test_rms_norm_matches_reference(dtype, t, h):
    x, _, w, _ = _inputs(t, h, dtype)
    out, *_ = kernel_norm(x, None, w, None, 1e-6, "rms_norm/plain/model/none")
    assert_close(out, ref.rms_norm(x, w, 1e-6))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("eps", [1e-5, 1e-6, 1e-12])
def test_fused_add_rms_norm_static_fp8_matches_reference(dtype, eps):
    """The rows' mean square is about eps (x and the residual scaled to it), so that an
    eps lost or changed on the way changes the result."""
    x, residual, w, scale = _inputs(7, 128, dtype)
    x, residual = ((t.float() * eps**0.5).to(dtype) for t in (x, residual))
    q, residual_out, *_ = kernel_norm(
        x, residual, w, scale, eps, "fused_add_rms_norm/plain/model/static"
    )
    y_ref, residual_ref = ref.fused_add_rms_norm(x, residual, w, eps)
    torch.testing.assert_close(residual_out, residual_ref, atol=0, rtol=0)
    assert_fp8_close(q, ref.static_fp8_quant(y_ref, scale), scale)


def test_the_registered_op_runs_the_function_and_has_a_fake():
    """torch.ops.irfuse.kernel_norm (what exported graphs call) is the function itself,
    with an eps read from a host tensor, and its fake gives the real outputs' metadata."""
    x, residual, w, scale = _inputs(5, 64, torch.bfloat16)
    spec = "fused_add_rms_norm/plain/model/static"
    direct = kernel_norm(x, residual, w, scale, 0.5, spec)
    op = torch.ops.irfuse.kernel_norm(x, residual, w, scale, 1e-6, spec, torch.tensor(0.5))
    for a, b in zip(direct, op, strict=True):
        assert torch.equal(a.float(), b.float()) and a.dtype == b.dtype
    assert not torch.equal(op[0].float(), kernel_norm(x, residual, w, scale, 1e-6, spec)[0].float())
    with torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True):
        fake = torch.ops.irfuse.kernel_norm(x, residual, w, scale, 1e-6, spec)
    assert [(f.shape, f.dtype) for f in fake] == [(a.shape, a.dtype) for a in direct]


def test_fp32_weight_mode_matches_the_decomposed_f_rms_norm():
    x, _, w, scale = _inputs(4, 64, torch.bfloat16)
    xf = x.float()
    expected = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w).to(x.dtype)
    out, *_ = kernel_norm(x, None, w, None, 1e-6, "rms_norm/fp32/model/none")
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    assert_close(out, ref.rms_norm(x, w, 1e-6))  # within bf16 of NUMERICS' rounding


def test_gemma_weight_matches_reference():
    x, _, w, _ = _inputs(3, 64, torch.bfloat16)
    w32 = w.float()
    out, *_ = kernel_norm(x, None, w32, None, 1e-6, "rms_norm/gemma/model/none")
    assert_close(out, ref.rms_norm(x, w32, 1e-6, True))


def test_standalone_static_quant_is_bit_exact():
    x, _, _, scale = _inputs(4, 64, torch.float32)
    x = x * 20  # cover the whole fp8 range, subnormals included
    q, *_ = kernel_norm(x, None, None, scale, 0.0, "quant/none/model/static")
    expected = ref.static_fp8_quant(x, scale)
    assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))


def test_zero_scale_saturates_like_the_unfused_expression():
    """A zero scale cannot be checked without a host sync: nonzero values saturate to
    +-448 and zeros become NaN, exactly as PyTorch's `clamp(x / 0)` does."""
    x = torch.tensor([[0.0, 1.0, -2.0, 3.0]], device=DEVICE)
    zero = torch.zeros(1, device=DEVICE)
    q, *_ = kernel_norm(x, None, None, zero, 0.0, "quant/none/model/static")
    expected = ref.static_fp8_quant(x, zero)
    assert q.float()[0, 1:].tolist() == expected.float()[0, 1:].tolist() == [448, -448, 448]
    assert q.float()[0, 0].isnan() and expected.float()[0, 0].isnan()


def test_non_contiguous_input_is_handled():
    x, _, w, _ = _inputs(4, 128, torch.float16)
    strided = x[:, ::2]
    out, *_ = kernel_norm(strided, None, w[:64], None, 1e-6, "rms_norm/plain/model/none")
    assert_close(out, ref.rms_norm(strided.contiguous(), w[:64].contiguous(), 1e-6))


def test_empty_input():
    x = torch.empty(0, 64, dtype=torch.float16, device=DEVICE)
    w = torch.ones(64, dtype=torch.float16, device=DEVICE)
    out, *_ = kernel_norm(x, None, w, None, 1e-6, "rms_norm/plain/model/none")
    assert out.shape == (0, 64)


@pytest.mark.parametrize(
    "args,match",
    [
        (dict(weight=torch.ones(64, dtype=torch.float32)), "weight dtype"),
        (dict(weight=torch.ones(32, dtype=torch.float16)), "weight must have shape"),
        (dict(scale=torch.ones(2)), "scale must be a one-element float32"),
        (dict(scale=torch.ones(1, dtype=torch.float16)), "scale must be a one-element float32"),
        (dict(residual=torch.ones(4, 32, dtype=torch.float16)), "residual"),
    ],
)
def test_bad_inputs_give_clear_errors(args, match):
    call = dict(
        x=torch.ones(4, 64, dtype=torch.float16),
        residual=torch.ones(4, 64, dtype=torch.float16),
        weight=torch.ones(64, dtype=torch.float16),
        scale=torch.ones(1),
    )
    call.update(args)
    call = {k: v.to(DEVICE) for k, v in call.items()}
    with pytest.raises((ValueError, TypeError), match=match):
        kernel_norm(
            call["x"],
            call["residual"],
            call["weight"],
            call["scale"],
            1e-6,
            "fused_add_rms_norm/plain/model/static",
        )


@pytest.mark.parametrize("scheme", ["per_tensor", "per_group 64"])
def test_a_computed_scale_refuses_a_scale_input(scheme):
    """Per-tensor and per-group scales are computed, with no upper bound: a scale passed
    to them is an error, not silently ignored."""
    x = torch.ones(4, 64, dtype=torch.float16, device=DEVICE)
    with pytest.raises(ValueError, match="takes no scale"):
        kernel_norm(x, None, None, torch.ones(1, device=DEVICE), 0.0, f"quant/none/model/{scheme}")


def test_generated_source_names_what_it_fuses():
    source = kernel_source(KernelSpec.decode("fused_add_rms_norm/plain/model/static"))
    assert "Fuses: add + rms_norm + static fp8 quant." in source
    assert "def irfuse_fused_add_rms_norm_static_fp8(" in source
    compile(source, "<kernel>", "exec")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,h", [(1, 4096), (257, 2880), (1024, 8192)])
def test_gpu_fused_add_rms_norm_static_fp8(dtype, t, h):
    x, residual, w, scale = _inputs(t, h, dtype)
    q, residual_out, *_ = kernel_norm(
        x, residual, w, scale, 1e-6, "fused_add_rms_norm/plain/model/static"
    )
    y_ref, residual_ref = ref.fused_add_rms_norm(x, residual, w, 1e-6)
    torch.testing.assert_close(residual_out, residual_ref, atol=0, rtol=0)
    assert_fp8_close(q, ref.static_fp8_quant(y_ref, scale), scale)


def test_unrounded_norm_output_quantizes_the_fp32_value():
    """Inductor on CUDA drops the bf16 round trip between norm and quant: the kernel
    then quantizes the fp32 product, exactly as that graph does."""
    x, _, w, scale = _inputs(5, 128, torch.bfloat16)
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()
    q, *_ = kernel_norm(x, None, w, scale, 1e-6, "rms_norm/fp32/fp32/static")
    assert_fp8_close(q, ref.static_fp8_quant(y, scale), scale)
    out, *_ = kernel_norm(x, None, w, None, 1e-6, "rms_norm/fp32/fp32/none")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "kernel", ["quant/none/model/per_group 64", "rms_norm/plain/model/per_group 128 ue8m0"]
)
def test_per_group_scales_of_a_one_dimensional_input(kernel):
    """A [K] input's group scales are one row of K/G: each group's scale in its own slot
    (they were all written to the first, with a column stride of 0, the others left
    unwritten)."""
    x, _, w, _ = _inputs(1, 256, torch.bfloat16)
    x = x[0] * 3
    group, ue8m0 = int(kernel.split()[1]), kernel.endswith("ue8m0")
    q, _, scales, _ = kernel_norm(x, None, None if kernel.startswith("quant") else w, None,
                                  1e-6, kernel)  # fmt: skip
    y = x if kernel.startswith("quant") else ref.rms_norm(x, w, 1e-6)
    q_ref, scales_ref = ref.per_group_fp8_quant(y, group, ue8m0=ue8m0)
    assert scales.shape == scales_ref.shape == (256 // group,)
    torch.testing.assert_close(scales, scales_ref, rtol=1e-6, atol=0)
    assert_fp8_close(q, q_ref, scales.repeat_interleave(group))


@pytest.mark.parametrize(
    "kernel",
    ["quant/none/model/amax", "rms_norm/plain/model/amax", "quant/none/fp32/per_token in_dtype"],
)
def test_internal_or_meaningless_specs_are_refused(kernel):
    """`amax` is phase 1 of a per-tensor quant, built internally (it failed with a
    ZeroDivisionError); a standalone quant has no norm whose output could stay fp32."""
    x, _, w, _ = _inputs(2, 64, torch.float16)
    with pytest.raises(ValueError, match="unknown irfuse kernel spec"):
        kernel_norm(x, None, None if kernel.startswith("quant") else w, None, 1e-6, kernel)


def test_unknown_kernel_spec_is_refused():
    x, _, w, _ = _inputs(2, 64, torch.float16)
    with pytest.raises(ValueError, match="unknown irfuse kernel spec"):
        kernel_norm(x, None, w, None, 1e-6, "rms_norm/plain/model/per_block 32")


def test_a_sandwich_spec_round_trips_and_bad_ones_are_refused():
    spec = KernelSpec("fused_add_rms_norm", "gemma", "per_token", rounded_sum=True, normed_x=True)
    assert KernelSpec.decode(spec.encode()) == spec
    assert spec.name == "irfuse_normed_add_rounded_rms_norm_gemmaw_per_token_fp8"
    assert "Fuses: rms_norm of x + add (the sum rounded" in spec.source()
    for bad in ("normed_x/rounded_sum", "rounded_sum/normed_x/normed_x", "normed_x"):
        with pytest.raises(ValueError, match="unknown irfuse kernel spec"):
            KernelSpec.decode(f"fused_add_rms_norm/gemma/model/none/{bad}")


def test_a_sandwich_kernel_needs_its_x_weight_and_others_refuse_one():
    x, residual, w, _ = _inputs(2, 64, torch.float16)
    sandwich = "fused_add_rms_norm/plain/model/none/rounded_sum/normed_x"
    with pytest.raises(ValueError, match=r"x_weight must have shape \[64\]"):
        kernel_norm(x, residual, w, None, 1e-6, sandwich)
    with pytest.raises(TypeError, match="x_weight dtype torch.float32 != input dtype"):
        kernel_norm(x, residual, w, None, 1e-6, sandwich, x_weight=w.float())
    with pytest.raises(ValueError, match="takes no x_weight"):
        kernel_norm(x, residual, w, None, 1e-6, "fused_add_rms_norm/plain/model/none",
                    x_weight=w)  # fmt: skip


def test_strided_weight_is_read_correctly():
    x, _, w, _ = _inputs(3, 64, torch.float32)
    w2 = torch.stack([w, w], dim=1).reshape(-1)[::2]  # a view with stride 2
    out, *_ = kernel_norm(x, None, w2, None, 1e-6, "rms_norm/plain/model/none")
    assert_close(out, ref.rms_norm(x, w, 1e-6))


def test_empty_per_tensor_quant_has_the_reference_scale():
    x = torch.empty(0, 64, device=DEVICE)
    q, _, s, _ = kernel_norm(x, None, None, None, 0.0, "quant/none/model/per_tensor")
    assert q.shape == (0, 64) and torch.equal(s, ref.per_tensor_fp8_quant(x)[1])


@pytest.mark.parametrize("producer", ["quant", "fused_add_rms_norm"])
def test_per_token_scales_of_rows_with_no_columns(producer):
    """Rows of 0 values have amax 0: their scale is the floor 1/(448*512), in the
    reference op and the kernel alike (the kernel's scales were never written: whatever
    memory held; the reference raised torch.amax's error on the empty dim)."""
    x = torch.randn(3, 0, device=DEVICE)
    _, s_ref = ref.per_token_fp8_quant(x)
    spec = (
        "quant/none/model/per_token"
        if producer == "quant"
        else ("fused_add_rms_norm/plain/model/per_token")
    )
    residual = torch.randn(3, 0, device=DEVICE) if producer != "quant" else None
    weight = torch.randn(0, device=DEVICE) if producer != "quant" else None
    _, _, scales, _ = kernel_norm(x, residual, weight, None, 1e-6, spec)
    assert torch.equal(s_ref, torch.full((3, 1), 1 / (448 * 512), device=DEVICE))
    assert torch.equal(scales, s_ref)


def test_a_residual_given_to_a_kernel_without_an_add_is_refused():
    """A hand-written kernel_norm call of a spec with no add, given a residual, was run
    and returned residual_out unwritten; the runtime op now refuses it."""
    x, r, w, _ = _inputs(2, 64, torch.float32)
    with pytest.raises(ValueError, match="takes no residual"):
        kernel_norm(x, r, w, None, 1e-6, "rms_norm/plain/model/none")
