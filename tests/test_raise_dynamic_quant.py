"""raise-dynamic-fp8-quant on the graphs of dynamic fp8 quant written in PyTorch.

The graphs come from the AOT path (what `inner="eager"` sees) and from Inductor's
post-grad pass (captured, then compilation is stopped: no C++ build). The pass runs on
the imported IR; the last test goes through torch.compile and only compares with eager
(the kernels themselves are tested with the kernels).
"""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from functorch.compile import aot_function, make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from torch._inductor import config as inductor_config
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.fx_passes.joint_graph import constant_fold_uniform_value
from xdsl.dialects.builtin import ModuleOp
from xdsl.dialects.func import ReturnOp

import irfuse
import irfuse.ops
from irfuse.dialects import make_context
from irfuse.dialects.aten import CallOp
from irfuse.dialects.irfuse import QuantOp, RmsNormOp
from irfuse.frontend.fx_import import import_graph
from irfuse.ops.quant import (
    per_group_fp8_quant_in_dtype,
    per_tensor_fp8_quant_in_dtype,
    per_token_fp8_quant_in_dtype,
)
from irfuse.pipeline import capture_reports
from irfuse.transforms import DEFAULT_PIPELINE, PASSES
from irfuse.transforms.raise_dynamic_fp8_quant import NAME, RaiseDynamicFp8Quant
from irfuse.transforms.report import FusionReport, collect
from tests import models
from tests.helpers import assert_fp8_close

FP8 = torch.float8_e4m3fn
BF16 = torch.bfloat16


# ---- the idioms, written the way model code writes them ------------------------------


def per_token_quant(x):
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    s = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    q = (xf / s).clamp(-448.0, 448.0).to(FP8)
    return q, s


def per_token_quant_ub(x, scale_ub):
    """Upper bound with torch.minimum, `* (1/448)`, clamp_min."""
    xf = x.float()
    amax = torch.minimum(xf.abs().amax(dim=-1, keepdim=True), scale_ub)
    s = (amax * (1.0 / 448.0)).clamp_min(1.0 / (448.0 * 512.0))
    q = (xf / s).clamp(-448.0, 448.0).to(FP8)
    return q, s


def per_token_quant_clamp_ub(x, scale_ub):
    """Upper bound with clamp(max=tensor), torch.clamp(..., min=)."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True).clamp(max=scale_ub)
    s = torch.clamp(amax / 448.0, min=1.0 / (448.0 * 512.0))
    q = torch.clamp(xf / s, min=-448.0, max=448.0).to(FP8)
    return q, s


def per_token_quant_max_values(x):
    """The amax as the values of `max(dim, keepdim)` (its indices unread)."""
    xf = x.float()
    amax = xf.abs().max(dim=-1, keepdim=True).values
    s = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def per_token_quant_promoted(x):
    """The division reads x itself, promoted by the fp32 scale; the amax its fp32 cast."""
    amax = x.float().abs().amax(dim=-1, keepdim=True)
    s = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (x / s).clamp(-448.0, 448.0).to(FP8), s


def per_token_quant_cast_twice(x):
    """`x.float()` written twice, for the amax and for the division."""
    s = (x.float().abs().amax(dim=-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (x.float() / s).clamp(-448.0, 448.0).to(FP8), s


def per_token_quant_unsqueezed(x):
    """The amax without keepdim, its dim put back by unsqueeze(-1)."""
    xf = x.float()
    s = (xf.abs().amax(dim=-1).unsqueeze(-1) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def per_token_quant_indexed(x):
    """torch.max's values without keepdim, indexed back to [T, 1] with [:, None]."""
    xf = x.float()
    s = (xf.abs().max(dim=-1)[0][:, None] / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def per_token_quant_widened(x):
    """The amax of the 16-bit |x|, widened to fp32 after (the same value)."""
    amax = x.abs().max(dim=-1).values.float().unsqueeze(-1)
    s = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (x.float() / s).clamp(-448.0, 448.0).to(FP8), s


def per_tensor_quant(x):
    """Over the whole tensor: a 0-d scale."""
    xf = x.float()
    s = (xf.abs().amax() / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def per_tensor_quant_reshaped(x):
    """The scale reshaped to [1] (vLLM's per-tensor scale shape) before the divide."""
    xf = x.float()
    s = (xf.abs().amax() / 448.0).clamp(min=1.0 / (448.0 * 512.0)).reshape(1)
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def per_tensor_quant_keepdim(x):
    """amax over every dim by name, keepdim, `* (1/448)`, clamp_min: a [1, 1] scale."""
    xf = x.float()
    amax = torch.amax(xf.abs(), dim=(0, 1), keepdim=True)
    s = (amax * (1.0 / 448.0)).clamp_min(1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def per_token_quant_widened_promoted(x):
    """The 16-bit amax widened, and the division reading 16-bit x, promoted by the fp32
    scale (the same fp32 values as x.float())."""
    scales = (x.abs().max(dim=-1)[0].to(torch.float32) / 448.0)[:, None]
    scales = torch.clamp(scales, min=1.0 / (448.0 * 512.0))
    return (x / scales).clamp(-448.0, 448.0).to(FP8), scales


def per_token_quant_vllm_reference(x):
    """vLLM's reference per-token quant (tests/kernels/quant_utils.py): tensor constants,
    the amax of the 16-bit |x| without keepdim, widened, divided, then indexed back."""
    fp8_max = torch.as_tensor(448.0, dtype=torch.float32, device=x.device)
    one, s_512 = torch.as_tensor(1.0, device=x.device), torch.as_tensor(512.0, device=x.device)
    x_token_max, _ = x.abs().max(dim=-1)
    scales = (x_token_max.to(torch.float32) / fp8_max)[:, None]
    scales = scales.clamp(min=one / (fp8_max * s_512))
    return (x.to(torch.float32) / scales).clamp(-448.0, 448.0).to(FP8), scales


def per_token_quant_repeated(x):
    """The row scales repeated along the row before the division, as torchao's
    `_quantize_affine_float8` expands a block's scale (`repeat_interleave`)."""
    xf = x.float()
    s = (xf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    q = (xf / s.repeat_interleave(x.shape[-1], dim=-1)).clamp(-448.0, 448.0)
    return q.to(FP8), s


def torchao_per_row_quant(x):
    """torchao's per-row fp8 activation quant (`_choose_scale_float8`, then
    `_quantize_affine_float8`, from 0.14): the 16-bit amax divided by 448 in 16 bits, then
    widened, with no lower bound; the [..., 1] scale broadcast by the division."""
    s = (x.abs().amax(-1, keepdim=True) / 448.0).to(torch.float32)
    return (x.to(torch.float32) / s).clamp(-448.0, 448.0).to(FP8), s


def torchao_per_row_quant_repeated(x):
    """The same, as torchao 0.13 wrote it: the scale repeated along the row first."""
    s = (x.abs().amax(-1, keepdim=True) / 448.0).to(torch.float32)
    q = (x.to(torch.float32) / s.repeat_interleave(x.shape[-1], dim=-1)).clamp(-448.0, 448.0)
    return q.to(FP8), s


def torchao_per_tensor_quant(x):
    """torchao's default (`PerTensor()`) activation quant: the amax over every dim, divided
    in x's dtype, widened, no lower bound; a [1, ..., 1] scale."""
    s = (x.abs().amax(dim=tuple(range(x.dim())), keepdim=True) / 448.0).to(torch.float32)
    return (x.to(torch.float32) / s).clamp(-448.0, 448.0).to(FP8), s


def torchao_per_group_quant(x, group=128):
    """torchao's 1x128 activation quant (`PerBlock([1, 128])`): each group's 16-bit amax
    divided by 448 in 16 bits, viewed to [..., K/G], widened, then repeated along the row
    (`_maybe_expand_scale_to_tensor_shape`) for the division."""
    *tokens, k = x.shape
    amax = x.view(*tokens, k // group, group).abs().amax(dim=[-1], keepdim=True)
    s = (amax / 448.0).reshape(*tokens, k // group).to(torch.float32)
    q = (x.to(torch.float32) / s.repeat_interleave(group, dim=-1)).clamp(-448.0, 448.0)
    return q.to(FP8), s


def torchao_per_group_quant_squeezed(x, group=128):
    """torchao's 1x128 scales, squeezed rather than viewed to [..., K/G]."""
    *tokens, k = x.shape
    amax = x.view(*tokens, k // group, group).abs().amax(dim=-1, keepdim=True)
    s = (amax / 448.0).squeeze(-1).to(torch.float32)
    q = (x.to(torch.float32) / s.repeat_interleave(group, dim=-1)).clamp(-448.0, 448.0)
    return q.to(FP8), s


def per_group_quant_repeated(x, group=64):
    """NUMERICS.md's per-group scale, in fp32, repeated along the row for the division."""
    *tokens, k = x.shape
    xf = x.float()
    amax = xf.view(*tokens, k // group, group).abs().amax(dim=-1, keepdim=True)
    s = (amax.clamp(min=1e-10) / 448.0).view(*tokens, k // group)
    return (xf / s.repeat_interleave(group, dim=-1)).clamp(-448.0, 448.0).to(FP8), s


def per_token_quant_expanded(x):
    xf = x.float()
    s = (xf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s.expand_as(xf)).clamp(-448.0, 448.0).to(FP8), s


def per_group_quant(x, group=128):
    t, k = x.shape
    xg = x.float().view(t, k // group, group)
    amax = xg.abs().amax(dim=-1, keepdim=True)
    s = amax.clamp(min=1e-10) / 448.0
    q = (xg / s).clamp(-448.0, 448.0).to(FP8).view(t, k)
    return q, s.squeeze(-1)


def per_group_quant_ue8m0(x, group=128):
    t, k = x.shape
    xg = x.float().reshape(t, k // group, group)
    amax = xg.abs().amax(dim=-1, keepdim=True)
    s = amax.clamp(min=1e-10) / 448.0
    s = torch.exp2(torch.ceil(torch.log2(s)))
    q = (xg / s).clamp(-448.0, 448.0).to(FP8).reshape(t, k)
    return q, s.squeeze(-1)


def per_group_quant_any_rank(x, group=64):
    """Over a model's [B, S, K] hidden states, before they are flattened to tokens."""
    *tokens, k = x.shape
    xg = x.float().view(*tokens, k // group, group)
    s = xg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (xg / s).clamp(-448.0, 448.0).to(FP8).view(*tokens, k), s.squeeze(-1)


def per_group_quant_unflatten(x, group=64):
    t, k = x.shape
    xg = x.unflatten(-1, (k // group, group)).float()
    amax = xg.abs().amax(dim=-1, keepdim=True)
    s = amax.clamp(min=1e-10) / 448.0
    q = (xg / s).clamp(-448.0, 448.0).to(FP8).view(t, k)
    return q, s.squeeze(-1)


# ---- capturing graphs and running the pass -------------------------------------------


def _aot_graph(fn, *args) -> fx.Graph:
    graphs: list[fx.Graph] = []

    def compiler(gm, _):
        constant_fold_uniform_value(gm)  # as the eager inner compiler does
        graphs.append(gm.graph)
        return make_boxed_func(gm.forward)

    aot_function(fn, compiler)(*args)
    return graphs[0]


def _dynamic_aot_graph(fn, x, dims=(0, 1)) -> fx.Graph:
    """The AOT graph with `dims` of `x` symbolic (by default both)."""
    graphs: list[fx.Graph] = []

    def compiler(gm, _):
        graphs.append(gm.graph)
        return make_boxed_func(gm.forward)

    for dim in dims:
        torch._dynamo.mark_dynamic(x, dim)
    torch.compile(fn, backend=aot_autograd(fw_compiler=compiler))(x)
    return graphs[0]


class _Captured(Exception):
    pass


class _Capture(CustomGraphPass):
    def __init__(self) -> None:
        self.graphs: list[fx.Graph] = []

    def __call__(self, graph: fx.Graph) -> None:
        self.graphs.append(graph)
        raise _Captured  # stop before Inductor generates code

    def uuid(self) -> None:
        return None


def _inductor_graph(fn, *args) -> fx.Graph:
    capture = _Capture()
    with inductor_config.patch(post_grad_custom_pre_pass=capture, fx_graph_cache=False):
        with pytest.raises(Exception, match="_Captured"):
            torch.compile(fn, backend="inductor")(*args)
    return capture.graphs[0]


def _run(graph: fx.Graph, *passes) -> tuple[ModuleOp, FusionReport]:
    """Import `graph` and apply `passes` (default: the pass under test, standalone)."""
    module = import_graph(graph).module
    report = FusionReport()
    with collect(report):
        for p in passes or (RaiseDynamicFp8Quant(standalone=True),):
            p.apply(make_context(), module)
            module.verify()
    return module, report


def _quants(module: ModuleOp) -> list[QuantOp]:
    return [op for op in module.walk() if isinstance(op, QuantOp)]


def _targets(module: ModuleOp) -> set[str]:
    return {op.target.data for op in module.walk() if isinstance(op, CallOp)}


def _returned(module: ModuleOp) -> list:
    return [list(op.operands) for op in module.walk() if isinstance(op, ReturnOp)][0]


def _inputs(t=4, k=256, dtype=BF16):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(t, k, generator=g) * 3).to(dtype)
    x[1] = 0  # an all-zero row: the lower clamp of the scale matters
    return x, torch.tensor([2.0])


def _reasons(report: FusionReport) -> list[str]:
    return [r["reason"] for r in report.rejected if r["pass"] == NAME]


# ---- what is raised -------------------------------------------------------------------

CAPTURES = {"aot": _aot_graph, "inductor": _inductor_graph}


def _check_raised(module, report, scheme: str, with_ub: bool) -> QuantOp:
    assert report.fused[NAME] == 1, str(report)
    (quant,) = _quants(module)
    assert str(quant.quant) == scheme
    func_args = list(module.walk())[1].body.block.args
    assert quant.x is func_args[0]  # the un-cast, un-viewed input
    assert (quant.quant_scale is func_args[1]) if with_ub else quant.quant_scale is None
    assert _returned(module) == [quant.out, quant.scale_out]
    assert not _targets(module) & {"aten.amax.default", "aten.abs.default", "aten.div.Tensor"}
    return quant


@pytest.mark.parametrize("form", ["aot", "inductor"])
@pytest.mark.parametrize(
    "fn",
    [
        per_token_quant,
        per_token_quant_ub,
        per_token_quant_clamp_ub,
        per_token_quant_max_values,
        per_token_quant_promoted,
        per_token_quant_cast_twice,
        per_token_quant_unsqueezed,
        per_token_quant_indexed,
        per_token_quant_widened,
        per_token_quant_widened_promoted,
        per_token_quant_vllm_reference,
        per_token_quant_repeated,
        per_token_quant_expanded,
    ],
    ids=lambda f: f.__name__,
)
def test_per_token_forms_are_raised(form, fn):
    x, ub = _inputs(t=4, k=200)
    args = (x, ub) if fn in (per_token_quant_ub, per_token_quant_clamp_ub) else (x,)
    module, report = _run(CAPTURES[form](fn, *args))
    quant = _check_raised(module, report, "#irfuse.quant<per_token>", with_ub=len(args) == 2)
    assert quant.scale_out.type.get_shape() == (4, 1)


@pytest.mark.parametrize("form", ["aot", "inductor"])
@pytest.mark.parametrize(
    "fn,scale_shape",
    [
        (per_tensor_quant, ()),
        (per_tensor_quant_keepdim, (1, 1)),
        (per_tensor_quant_reshaped, (1,)),
        (torchao_per_tensor_quant, (1, 1)),
    ],
    ids=["0-d", "keepdim", "reshaped", "torchao"],
)
def test_per_tensor_forms_are_raised(form, fn, scale_shape):
    x, _ = _inputs(t=4, k=200)
    module, report = _run(CAPTURES[form](fn, x))
    option = " in_dtype" if fn is torchao_per_tensor_quant else ""
    quant = _check_raised(module, report, f"#irfuse.quant<per_tensor{option}>", with_ub=False)
    assert quant.scale_out.type.get_shape() == scale_shape


@pytest.mark.parametrize("form", ["aot", "inductor"])
@pytest.mark.parametrize(
    "fn", [torchao_per_row_quant, torchao_per_row_quant_repeated], ids=lambda f: f.__name__
)
@pytest.mark.parametrize("dtype", [BF16, torch.float16, torch.float32])
def test_torchao_per_row_forms_are_raised_in_dtype(form, fn, dtype):
    """torchao's per-row scale, divided in x's dtype with no lower bound: `in_dtype`."""
    x, _ = _inputs(t=4, k=200, dtype=dtype)
    module, report = _run(CAPTURES[form](fn, x))
    quant = _check_raised(module, report, "#irfuse.quant<per_token in_dtype>", with_ub=False)
    assert quant.scale_out.type.get_shape() == (4, 1)


@pytest.mark.parametrize("form", ["aot", "inductor"])
@pytest.mark.parametrize(
    "fn,scheme",
    [
        (torchao_per_group_quant, "#irfuse.quant<per_group 128 in_dtype>"),
        (torchao_per_group_quant_squeezed, "#irfuse.quant<per_group 128 in_dtype>"),
        (per_group_quant_repeated, "#irfuse.quant<per_group 64>"),
    ],
    ids=["torchao-1x128", "squeezed", "numerics-64"],
)
@pytest.mark.parametrize("dtype", [BF16, torch.float16, torch.float32])
def test_repeated_group_scales_are_raised(form, fn, scheme, dtype):
    """Group scales [..., K/G] repeated along the row for the division (torchao's 1x128
    form): per_group, `in_dtype` for torchao's formula; [B, S, K] keeps its token dims."""
    x = _inputs(t=6, k=256, dtype=dtype)[0].view(2, 3, 256)
    module, report = _run(CAPTURES[form](fn, x))
    quant = _check_raised(module, report, scheme, with_ub=False)
    assert quant.scale_out.type.get_shape() == (2, 3, 256 // quant.quant.group.data)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_per_token_any_input_dtype(dtype):
    x, _ = _inputs(t=3, k=96, dtype=dtype)
    module, report = _run(_aot_graph(per_token_quant, x))
    _check_raised(module, report, "#irfuse.quant<per_token>", with_ub=False)


def test_fp32_cast_read_elsewhere_is_the_quant_input():
    def fn(x):
        xf = x.float()
        s = (xf.abs().amax(dim=-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
        return (xf / s).clamp(-448.0, 448.0).to(FP8), s, xf * 2

    x, _ = _inputs()
    module, report = _run(_aot_graph(fn, x))
    (quant,) = _quants(module)
    assert report.fused[NAME] == 1 and str(quant.x.type) == "tensor<4x256xf32>"
    cast = quant.x.owner
    assert isinstance(cast, CallOp) and cast.target.data == "aten._to_copy.default"


@pytest.mark.parametrize("form", ["aot", "inductor"])
@pytest.mark.parametrize(
    "fn,scheme",
    [
        (per_group_quant, "#irfuse.quant<per_group 128>"),
        (per_group_quant_ue8m0, "#irfuse.quant<per_group 128 ue8m0>"),
        (per_group_quant_unflatten, "#irfuse.quant<per_group 64>"),
    ],
    ids=["view", "reshape-ue8m0", "unflatten-64"],
)
def test_per_group_forms_are_raised(form, fn, scheme):
    x, _ = _inputs(t=4, k=512)
    module, report = _run(CAPTURES[form](fn, x))
    quant = _check_raised(module, report, scheme, with_ub=False)
    assert quant.out.type.get_shape() == (4, 512)
    assert quant.scale_out.type.get_shape() == (4, 512 // quant.quant.group.data)
    assert not _targets(module) & {"aten.view.default", "aten.reshape.default"}


@pytest.mark.parametrize("form", ["aot", "inductor"])
@pytest.mark.parametrize(
    "fn,scheme,scale_shape",
    [
        (per_token_quant, "#irfuse.quant<per_token>", (2, 3, 1)),
        (torchao_per_row_quant, "#irfuse.quant<per_token in_dtype>", (2, 3, 1)),
        (per_group_quant_any_rank, "#irfuse.quant<per_group 64>", (2, 3, 4)),
    ],
    ids=["token", "torchao-row", "group"],
)
def test_token_dims_before_the_hidden_are_kept(form, fn, scheme, scale_shape):
    """A quant of [B, S, K] hidden states: the scales keep [B, S]."""
    x = _inputs(t=6, k=256)[0].view(2, 3, 256)
    module, report = _run(CAPTURES[form](fn, x))
    quant = _check_raised(module, report, scheme, with_ub=False)
    assert quant.out.type.get_shape() == (2, 3, 256)
    assert quant.scale_out.type.get_shape() == scale_shape


@pytest.mark.parametrize(
    "fn", [per_token_quant, torchao_per_row_quant, per_group_quant], ids=lambda f: f.__name__
)
def test_symbolic_sizes_are_raised(fn):
    x, _ = _inputs(t=5, k=256)
    module, report = _run(_dynamic_aot_graph(fn, x))
    (quant,) = _quants(module)
    assert report.fused[NAME] == 1 and quant.out.type.get_shape() == (-(2**63), -(2**63))


def _regrouped_quant(x):
    """Groups of 64 viewed as [2T, K/128, 64]: the same groups, scales shaped otherwise."""
    t, k = x.shape
    xg = x.float().view(2 * t, k // 128, 64)
    s = xg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (xg / s).clamp(-448.0, 448.0).to(FP8).view(t, k), s.squeeze(-1)


@pytest.mark.parametrize("fn", [per_group_quant, _regrouped_quant], ids=["group", "regrouped"])
@pytest.mark.parametrize("symbolic", [(0,), (0, 1)], ids=["tokens", "tokens-hidden"])
def test_a_group_view_keeps_the_token_dims(fn, symbolic):
    """A group view keeps x's token dims: equal where static; where symbolic, the same
    symbols (the importer marks a view with the leading dims it keeps: in the IR's types
    [T, K/G, G] and [2T, K/2G, G], whose scales are [2T, K/2G], look alike at a symbolic
    T and K). The regrouped one was raised, its scales returned in the kernel's [T, K/G];
    it is refused with the reason."""
    x, _ = _inputs(t=6, k=256)
    module, report = _run(_dynamic_aot_graph(fn, x, dims=symbolic))
    if fn is per_group_quant:
        (quant,) = _quants(module)
        hidden = 256 if symbolic == (0,) else -(2**63)
        assert report.fused[NAME] == 1 and quant.out.type.get_shape() == (-(2**63), hidden)
        return
    assert NAME not in report.fused
    reason = {
        (0,): "view [?, 256] -> [?, 2, 64] does not split the last dim",
        (0, 1): "view [?, ?] -> [?, ?, ?] is not known to keep x's symbolic token dims (its "
        "sizes are not x's: it regroups them)",
    }[symbolic]
    assert _reasons(report) == [reason], str(report)


def test_a_group_view_of_hidden_states_at_a_symbolic_batch_and_length_is_raised():
    """[B, S, K] -> [B, S, K/G, G] with B and S symbolic: the view keeps both (marked by
    the importer), so the quant is raised with scales [B, S, K/G]."""
    x = _inputs(t=6, k=256)[0].view(2, 3, 256)
    module, report = _run(_dynamic_aot_graph(per_group_quant_any_rank, x))
    (quant,) = _quants(module)
    assert report.fused[NAME] == 1, str(report)
    assert quant.scale_out.type.get_shape() == (-(2**63), -(2**63), 4)


@pytest.mark.parametrize(
    "fn,scheme",
    [
        (per_token_quant_repeated, "#irfuse.quant<per_token>"),
        (torchao_per_row_quant_repeated, "#irfuse.quant<per_token in_dtype>"),
        (torchao_per_group_quant, "#irfuse.quant<per_group 128 in_dtype>"),
    ],
    ids=["token", "torchao-row", "torchao-1x128"],
)
def test_a_repeated_scale_at_a_symbolic_token_count_is_raised(fn, scheme):
    """A symbolic token count (never 1: the expand could not have changed it) with a
    static hidden size: the repeat's shapes still tell a row or group scale."""
    x, _ = _inputs(t=5, k=256)
    module, report = _run(_dynamic_aot_graph(fn, x, dims=(0,)))
    (quant,) = _quants(module)
    assert report.fused[NAME] == 1 and str(quant.quant) == scheme, str(report)
    assert quant.out.type.get_shape() == (-(2**63), 256)


@pytest.mark.parametrize(
    "fn", [per_token_quant_repeated, per_token_quant_expanded], ids=lambda f: f.__name__
)
def test_a_repeated_scale_at_symbolic_sizes_is_refused_with_its_reason(fn):
    """The repeats' shapes are checked only where the hidden size is static: where it is
    symbolic the quant is left unchanged, and the report says why."""
    x, _ = _inputs(t=5, k=256)
    graph = _dynamic_aot_graph(fn, x)
    before = str(import_graph(graph).module)
    module, report = _run(graph)
    assert str(module) == before and NAME not in report.fused
    assert _reasons(report) == [
        "the scale is spread over x's shape in a form not taken (a row or group scale "
        "repeated along the row, where the hidden size is static)"
    ], str(report)


def test_reference_ops_compute_the_matched_chains():
    """The replacement's semantics (irfuse.ops) are the PyTorch chains', bit for bit."""
    x, ub = _inputs(t=4, k=256)
    x3 = x.view(2, 2, 256)
    for got, want in [
        (irfuse.ops.per_token_fp8_quant(x), per_token_quant(x)),
        (irfuse.ops.per_token_fp8_quant(x, ub), per_token_quant_clamp_ub(x, ub)),
        (irfuse.ops.per_tensor_fp8_quant(x), per_tensor_quant(x)),
        (irfuse.ops.per_tensor_fp8_quant(x), per_tensor_quant_reshaped(x)),
        (irfuse.ops.per_group_fp8_quant(x, 128), per_group_quant(x)),
        (irfuse.ops.per_group_fp8_quant(x, 128, False, True), per_group_quant_ue8m0(x)),
        (irfuse.ops.per_group_fp8_quant(x, 64), per_group_quant_unflatten(x)),
        (irfuse.ops.per_token_fp8_quant(x), per_token_quant_vllm_reference(x)),
        (irfuse.ops.per_token_fp8_quant(x), per_token_quant_repeated(x)),
        (irfuse.ops.per_token_fp8_quant(x), per_token_quant_expanded(x)),
        (irfuse.ops.per_token_fp8_quant(x3), per_token_quant(x3)),
        (irfuse.ops.per_group_fp8_quant(x3, 64), per_group_quant_any_rank(x3)),
        (per_token_fp8_quant_in_dtype(x), torchao_per_row_quant(x)),  # x[1] = 0: NaN row
        (per_token_fp8_quant_in_dtype(x), torchao_per_row_quant_repeated(x)),
        (per_token_fp8_quant_in_dtype(x.half()), torchao_per_row_quant(x.half())),
        (per_token_fp8_quant_in_dtype(x.float()), torchao_per_row_quant(x.float())),
        (per_group_fp8_quant_in_dtype(x, 128), torchao_per_group_quant(x)),
        (per_tensor_fp8_quant_in_dtype(x), torchao_per_tensor_quant(x)),
        (per_tensor_fp8_quant_in_dtype(x3.half()), torchao_per_tensor_quant(x3.half())),
        (per_group_fp8_quant_in_dtype(x3.half(), 128), torchao_per_group_quant(x3.half())),
        (irfuse.ops.per_group_fp8_quant(x, 64), per_group_quant_repeated(x)),
    ]:
        assert torch.equal(got[0].view(torch.uint8), want[0].view(torch.uint8))
        assert torch.equal(got[1], want[1].reshape(got[1].shape))


# ---- what is refused, and why ---------------------------------------------------------


def _lower_clamp_1e5(x):
    xf = x.float()
    s = (xf.abs().amax(dim=-1, keepdim=True) / 448.0).clamp(min=1e-5)
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _group_floor_1e6(x):
    xg = x.float().view(4, 2, 128)
    s = xg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6) / 448.0
    return (xg / s).clamp(-448.0, 448.0).to(FP8).view(4, 256), s.squeeze(-1)


def _amax_returned(x):
    xf = x.float()
    amax = xf.abs().amax(dim=-1, keepdim=True)
    s = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s, amax


def _divides_by_240(x):
    xf = x.float()
    s = (xf.abs().amax(dim=-1, keepdim=True) / 240.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _clamps_to_240(x):
    xf = x.float()
    s = (xf.abs().amax(dim=-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-240.0, 240.0).to(FP8), s


def _grouped_scales_returned(x):
    xg = x.float().view(4, 2, 128)
    s = xg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (xg / s).clamp(-448.0, 448.0).to(FP8).view(4, 256), s


def _tensor_input_floor(x, floor):
    xf = x.float()
    s = torch.maximum(xf.abs().amax(dim=-1, keepdim=True) / 448.0, floor)
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _groups_across_tokens(x):
    """[2, 2, 256] viewed as [4, 2, 128]: the group view also merges the token dims."""
    xg = x.view(2, 2, 256).float().view(4, 2, 128)
    s = xg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    return (xg / s).clamp(-448.0, 448.0).to(FP8).view(2, 2, 256), s.squeeze(-1)


def _group_floor_in_16_bits(x):
    """vLLM's reference per-group quant clamps the 16-bit amax at 1e-10 (which bf16 rounds)
    before widening it."""
    xg = x.view(4, 2, 128)
    amax = xg.abs().max(dim=-1, keepdim=True)[0].clamp(min=1e-10).to(torch.float32)
    s = amax / 448.0
    return (xg / s).clamp(-448.0, 448.0).to(FP8).view(4, 256), s.squeeze(-1)


def _bf16_reciprocal_constant(x):
    """A bf16 tensor constant 1/448 is 1/448.88."""
    xf = x.float()
    c = torch.full((), 1.0 / 448.0, dtype=torch.bfloat16)
    s = (xf.abs().amax(dim=-1, keepdim=True) * c).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _floor_of_three_dims(x):
    """A [1, 1, 1] lower bound broadcasts the [T, 1] scale (and q) to three dims."""
    xf = x.float()
    floor = torch.full((1, 1, 1), 1.0 / (448.0 * 512.0))
    s = torch.maximum(xf.abs().amax(dim=-1, keepdim=True) / 448.0, floor)
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _ue8m0_of_f32(x):
    """Of fp32 x (a test input): log2 of a scale just above 2^k rounds to k in fp32."""
    xg = x.view(4, 2, 128)
    s = xg.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10) / 448.0
    s = torch.exp2(torch.ceil(torch.log2(s)))
    return (xg / s).clamp(-448.0, 448.0).to(FP8).view(4, 256), s.squeeze(-1)


def _per_tensor_ub(x, scale_ub):
    xf = x.float()
    s = (torch.minimum(xf.abs().amax(), scale_ub) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _per_token_scale_viewed(x):
    """One token's per-token scale viewed to [1]: only a per-tensor scale may be."""
    xf = x[:1].float()
    s = (xf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0)).view(1)
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _amax_over_rows(x):
    xf = x.float()
    s = (xf.abs().amax(dim=0, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _per_token_by_reciprocal(x):
    xf = x.float()
    s = (xf.abs().amax(-1, keepdim=True) / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf * (1.0 / s)).clamp(-448.0, 448.0).to(FP8), s


def _no_floor_in_f32(x):
    """amax / 448 with no lower bound, divided in fp32 (not in x's bf16, as torchao's)."""
    xf = x.float()
    s = xf.abs().amax(-1, keepdim=True) / 448.0
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s


def _repeated_in_groups_of_96(x):
    t, k = x.shape
    amax = x.view(t, k // 96, 96).abs().amax(-1, keepdim=True)
    s = (amax / 448.0).view(t, k // 96).float()
    return (x.float() / s.repeat_interleave(96, dim=-1)).clamp(-448.0, 448.0).to(FP8), s


def _token_formula_repeated_in_groups(x):
    t, k = x.shape
    xf = x.float()
    amax = xf.view(t, k // 128, 128).abs().amax(-1, keepdim=True)
    s = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0)).view(t, k // 128)
    return (xf / s.repeat_interleave(128, dim=-1)).clamp(-448.0, 448.0).to(FP8), s


def _group_formula_repeated_in_16_bits(x):
    t, k = x.shape
    amax = x.view(t, k // 128, 128).abs().amax(-1, keepdim=True)
    s = (amax.clamp(min=1e-10) / 448.0).view(t, k // 128).float()
    return (x.float() / s.repeat_interleave(128, dim=-1)).clamp(-448.0, 448.0).to(FP8), s


def _group_scales_never_widened(x):
    """torchao's 1x128 formula with the scales left in bf16: the division runs in bf16."""
    t, k = x.shape
    s = (x.view(t, k // 128, 128).abs().amax(-1, keepdim=True) / 448.0).view(t, k // 128)
    return (x / s.repeat_interleave(128, dim=-1)).clamp(-448.0, 448.0).to(FP8), s


def _group_scales_tiled(x):
    """Group scales tiled along the row (transposed before the flatten), not repeated."""
    t, k = x.shape
    s = (x.view(t, k // 128, 128).abs().amax(-1, keepdim=True) / 448.0).view(t, k // 128).float()
    tiled = s.unsqueeze(-1).expand(t, k // 128, 128).transpose(-1, -2).reshape(t, k)
    return (x.float() / tiled).clamp(-448.0, 448.0).to(FP8), s


def _fp16_row_scale_by_reciprocal(x):
    xh = x.half()
    s = (xh.abs().amax(-1, keepdim=True) * (1.0 / 448.0)).float()
    return (xh.float() / s).clamp(-448.0, 448.0).to(FP8), s


def _torchao_row_scale_bounded(x):
    """torchao's per-row scale with `activation_value_ub`: the amax clamped in 16 bits."""
    amax = torch.clamp(x.abs().amax(-1, keepdim=True), max=2.0)
    s = (amax / 448.0).to(torch.float32)
    return (x.to(torch.float32) / s).clamp(-448.0, 448.0).to(FP8), s


def _max_indices_returned(x):
    xf = x.float()
    amax, where = xf.abs().max(dim=-1, keepdim=True)
    s = (amax / 448.0).clamp(min=1.0 / (448.0 * 512.0))
    return (xf / s).clamp(-448.0, 448.0).to(FP8), s, where


@pytest.mark.parametrize(
    "fn,k,reason",
    [
        (
            _no_floor_in_f32,
            256,
            "scale amax / 448 with no lower bound is divided in float32, not in x's bfloat16 "
            "(per-token amax / 448 in x's dtype), nor is it per-token max(amax / 448, "
            "1/(448*512))",
        ),
        (_torchao_row_scale_bounded, 256, "scale is clamped to [None, 2.0], not only from below"),
        (_repeated_in_groups_of_96, 192, "the scale is repeated in groups of 96, not 64 or 128"),
        (
            _group_scales_never_widened,
            256,
            "the repeated group scales are bfloat16, not float32 (nor is the division)",
        ),
        (
            _group_scales_tiled,
            256,
            "the scale is spread over x's shape in a form not taken (a row or group scale "
            "repeated along the row, where the hidden size is static)",
        ),
        (
            _fp16_row_scale_by_reciprocal,
            256,
            "fp16 scale amax * (1/448) rounds unlike the kernels' amax / 448 (subnormals)",
        ),
        (
            _token_formula_repeated_in_groups,
            256,
            "a per-token max(amax / 448, 1/(448*512)) scale repeated in groups of 128",
        ),
        (
            _group_formula_repeated_in_16_bits,
            256,
            "per-group max(amax, 1e-10) / 448 scale not computed in float32",
        ),
        (lambda x: per_group_quant(x, 96), 192, "group size 96 is not 64 or 128"),
        (_max_indices_returned, 256, "intermediate %getitem has a user outside the quant"),
        (
            _per_token_by_reciprocal,
            256,
            "the kernels divide by the scale (correctly rounded), which the product may miss "
            "by an ulp",
        ),
        (_lower_clamp_1e5, 256, "lower clamp 1e-05 of the scale is not 1/(448*512)"),
        (_group_floor_1e6, 256, "lower clamp 1e-06 of the scale is not 1e-10"),
        (_amax_returned, 256, "intermediate %amax has a user outside the quant"),
        (_divides_by_240, 256, "scale divides amax by 240, not by the fp8 max 448"),
        (_clamps_to_240, 256, "clamp bounds (-240.0, 240.0) are not the fp8 range (-448, 448)"),
        (_grouped_scales_returned, 256, "scales %div are read in shape [4, 2, 1] by func.return"),
        (
            _tensor_input_floor,
            256,
            "lower bound %arg1 of the scale is a tensor whose value is not in the graph",
        ),
        (
            _groups_across_tokens,
            256,
            "grouped input %view is not a [..., K/G, G] view of a [..., K] tensor",
        ),
        (
            _group_floor_in_16_bits,
            256,
            "scale formula widens a value other than its amax (steps before it run in 16 bits)",
        ),
        (_per_tensor_ub, 256, "per-tensor max(amax / 448, 1/(448*512)) scale takes no upper bound"),
        (_bf16_reciprocal_constant, 256, "scale divides amax by 448.877, not by the fp8 max 448"),
        (_floor_of_three_dims, 256, "the scale's lower bound broadcasts it to [1, 4, 1]"),
        (
            _ue8m0_of_f32,
            256,
            "ue8m0 scale exp2(ceil(log2(s))) of float32 x: log2 rounds, the kernels do not",
        ),
        (_amax_over_rows, 256, "amax over dims [0] (keepdim True), not the last with keepdim"),
        (
            _per_token_scale_viewed,
            256,
            "the scale is viewed to one element (only a per-tensor scale may be)",
        ),
    ],
    ids=[
        "no-floor-in-f32",
        "torchao-row-scale-bounded",
        "repeated-in-groups-of-96",
        "group-scales-never-widened",
        "group-scales-tiled",
        "fp16-row-scale-by-reciprocal",
        "token-formula-in-groups",
        "group-formula-in-16-bits",
        "group-96",
        "max-indices-read",
        "by-reciprocal",
        "token-floor",
        "group-floor",
        "amax-escapes",
        "div-240",
        "clamp-240",
        "grouped-scales",
        "tensor-input-floor",
        "groups-across-tokens",
        "group-floor-in-16-bits",
        "tensor-ub",
        "bf16-reciprocal-constant",
        "floor-of-three-dims",
        "ue8m0-of-f32",
        "amax-over-rows",
        "token-scale-viewed",
    ],
)
def test_refused_with_reason_and_left_unchanged(fn, k, reason):
    x, ub = _inputs(t=4, k=k, dtype=torch.float32 if fn is _ue8m0_of_f32 else BF16)
    with_tensor = {_per_tensor_ub: ub, _tensor_input_floor: torch.tensor(1e-5)}
    graph = _aot_graph(fn, x, with_tensor[fn]) if fn in with_tensor else _aot_graph(fn, x)
    before = str(import_graph(graph).module)
    module, report = _run(graph)
    assert str(module) == before
    assert NAME not in report.fused
    assert len(_reasons(report)) == 1 and _reasons(report)[0].endswith(reason), str(report)


# ---- only where a producer can take it, unless standalone -----------------------------


def test_default_leaves_a_quant_of_a_plain_input_to_the_inner_compiler():
    x, _ = _inputs()
    module, report = _run(_aot_graph(per_token_quant, x), RaiseDynamicFp8Quant())
    assert not _quants(module) and NAME not in report.fused
    assert _reasons(report) == ["no producer to fuse into: left to the inner compiler"]


def test_default_raises_the_quant_of_an_rms_norm():
    def fn(x, w):
        return per_token_quant(models.hf_rms_norm(x, w))

    x, _ = _inputs(k=64)
    passes = [PASSES[name]()() for name in ("raise-rms-norm", "raise-fp8-quant", NAME)]
    module, report = _run(_aot_graph(fn, x, torch.ones(64, dtype=BF16)), *passes)
    (quant,) = _quants(module)
    assert report.fused[NAME] == 1 and isinstance(quant.x.owner, RmsNormOp), str(report)


def test_registered_after_the_static_quant_pass():
    assert PASSES[NAME]() is RaiseDynamicFp8Quant
    assert DEFAULT_PIPELINE.index(NAME) == DEFAULT_PIPELINE.index("raise-fp8-quant") + 1


# ---- through torch.compile -----------------------------------------------------------


@pytest.mark.parametrize(
    "fn", [per_token_quant_ub, per_tensor_quant, per_group_quant_ue8m0],
    ids=["token", "tensor", "group"],
)  # fmt: skip
def test_compiled_with_the_pass_option_matches_eager(fn):
    """The `passes` option takes `{standalone=true}`: the standalone quant is raised, runs
    as an irfuse kernel, and gives eager's results."""
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
    x, ub = (t.to(device) for t in _inputs())
    args = (x, ub) if fn is per_token_quant_ub else (x,)
    passes = f"raise-rms-norm,raise-fp8-quant,{NAME}{{standalone=true}}"
    compiled = torch.compile(fn, backend="irfuse", options={"inner": "eager", "passes": passes})
    with capture_reports() as reports:
        q, s = compiled(*args)
    assert reports[0].fused[NAME] == 1, str(reports[0])
    q_ref, s_ref = fn(*args)
    assert s.shape == s_ref.shape
    torch.testing.assert_close(s, s_ref, atol=1e-5, rtol=1e-5)
    per_element = (
        s_ref
        if s_ref.dim() == 0
        else s_ref.repeat_interleave(x.shape[-1] // s_ref.shape[-1], dim=-1)
    )
    assert_fp8_close(q, q_ref, per_element)


@pytest.mark.parametrize(
    "quant,kernel",
    [
        (per_token_quant, "irfuse_add_rounded_rms_norm_per_token_fp8"),
        (per_token_quant_max_values, "irfuse_add_rounded_rms_norm_per_token_fp8"),
        (per_token_quant_promoted, "irfuse_add_rounded_rms_norm_per_token_fp8"),
        (per_token_quant_indexed, "irfuse_add_rounded_rms_norm_per_token_fp8"),
        (per_token_quant_widened, "irfuse_add_rounded_rms_norm_per_token_fp8"),
        (per_token_quant_vllm_reference, "irfuse_add_rounded_rms_norm_per_token_fp8"),
        (torchao_per_row_quant, "irfuse_add_rounded_rms_norm_per_token_in_dtype_fp8"),
        (torchao_per_group_quant, "irfuse_add_rounded_rms_norm_per_group128_in_dtype_fp8"),
        (per_group_quant, "irfuse_add_rounded_rms_norm_per_group128_fp8"),
        (per_group_quant_ue8m0, "irfuse_add_rounded_rms_norm_per_group128_ue8m0_fp8"),
    ],
)
def test_model_norm_then_dynamic_quant_fuses_end_to_end(quant, kernel):
    """Residual add + HF RMSNorm + a dynamic quant idiom: one fused kernel, eager's result."""

    def block(x, residual, weight):
        h = x + residual
        return (*quant(models.hf_rms_norm(h, weight)), h)

    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
    x = _inputs(k=256)[0].to(device)
    residual = torch.randn(4, 256).to(BF16).to(device)
    weight = (torch.rand(256).to(BF16) + 0.5).to(device)
    report = irfuse.explain(block, x, residual, weight)
    assert report.fused["fuse-rms-norm-quant"] == 1 and report.kernels == [kernel], str(report)
    torch._dynamo.reset()
    q, s, h = torch.compile(block, backend="irfuse", options={"inner": "eager"})(
        x, residual, weight
    )
    q_ref, s_ref, h_ref = block(x, residual, weight)
    assert torch.equal(h, h_ref)
    groups = s.shape[-1]  # 1 for per-token

    def dequant(qq, ss):
        return (qq.float().view(4, groups, -1) * ss.unsqueeze(-1)).reshape(4, 256)

    got, expected = dequant(q, s), dequant(q_ref, s_ref)
    span = expected.abs().amax(-1, keepdim=True)
    torch.testing.assert_close(got / span, expected / span, atol=0.1, rtol=0.1)


@pytest.mark.parametrize("residual", [False, True], ids=["norm", "add-norm"])
@pytest.mark.parametrize(
    "quant",
    [
        per_tensor_quant,
        per_tensor_quant_keepdim,
        per_tensor_quant_reshaped,
        torchao_per_tensor_quant,
    ],
    ids=["0-d", "keepdim", "reshaped", "torchao"],
)
def test_model_norm_then_per_tensor_quant_fuses_end_to_end(residual, quant):
    """(Residual add +) HF RMSNorm + the per-tensor idiom: one fused norm (two kernels at
    run time), its scale in the graph's shape, eager's result."""

    def block(x, r, weight):
        h = x + r if residual else x
        return (*quant(models.hf_rms_norm(h, weight)), *((h,) if residual else ()))

    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
    x = _inputs(k=256)[0].to(device)
    r = torch.randn(4, 256).to(BF16).to(device)
    weight = (torch.rand(256).to(BF16) + 0.5).to(device)
    phase_1 = "add_rounded_rms_norm" if residual else "rms_norm"
    report = irfuse.explain(block, x, r, weight)
    assert report.fused[NAME] == 1 and report.fused["fuse-rms-norm-quant"] == 1, str(report)
    # phase 2 normalises again (x, or the graph's rounded sum) with phase 1's rstd
    phase_2 = "per_tensor_in_dtype" if quant is torchao_per_tensor_quant else "per_tensor"
    assert report.kernels == [f"irfuse_{phase_1}_amax", f"irfuse_rms_norm_{phase_2}_fp8"]
    torch._dynamo.reset()
    q, s, *h = torch.compile(block, backend="irfuse", options={"inner": "eager"})(x, r, weight)
    q_ref, s_ref, *h_ref = block(x, r, weight)
    assert s.shape == s_ref.shape and all(torch.equal(a, b) for a, b in zip(h, h_ref, strict=True))
    torch.testing.assert_close(s, s_ref, rtol=1e-2, atol=0)  # the norm's rounding may differ
    assert_fp8_close(q, q_ref, s_ref)


@pytest.mark.parametrize(
    "quant,kernel",
    [
        (per_token_quant, "irfuse_add_rounded_rms_norm_per_token_fp8"),
        (per_group_quant_any_rank, "irfuse_add_rounded_rms_norm_per_group64_fp8"),
    ],
    ids=["token", "group"],
)
def test_model_hidden_states_quantized_before_flattening(quant, kernel):
    """A decoder layer's [B, S, K] residual stream: add + HF RMSNorm + a dynamic quant of
    the 3-D hidden states fuse, and give eager's bytes and scales in eager's shapes."""

    def block(x, residual, weight):
        h = x + residual
        return (*quant(models.hf_rms_norm(h, weight)), h)

    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
    g = torch.Generator().manual_seed(1)
    x, residual = (torch.randn(2, 3, 256, generator=g).to(BF16).to(device) for _ in range(2))
    weight = (torch.rand(256, generator=g).to(BF16) + 0.5).to(device)
    report = irfuse.explain(block, x, residual, weight)
    assert report.fused["fuse-rms-norm-quant"] == 1 and report.kernels == [kernel], str(report)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="irfuse", options={"inner": "eager"})
    q, s, h = compiled(x, residual, weight)
    q_ref, s_ref, h_ref = block(x, residual, weight)
    assert torch.equal(h, h_ref) and s.shape == s_ref.shape and q.shape == q_ref.shape
    torch.testing.assert_close(s, s_ref, rtol=1e-2, atol=0)  # the norm's rounding may differ
    per_element = s_ref.repeat_interleave(256 // s_ref.shape[-1], dim=-1)
    assert_fp8_close(q, q_ref, per_element)


def _torchao_linear(x, weight):
    """A torchao float8 linear with per-row scales, as its graph computes it (the matmul of
    the dequantized rows stands in for `_scaled_mm`, which the CPU lacks)."""
    q, s = torchao_per_row_quant(x)
    rows = q.reshape(-1, q.shape[-1]).float() * s.reshape(-1, 1)
    return (rows @ weight.float().t()).to(x.dtype)


def test_torchao_projections_of_one_norm_share_one_fused_kernel():
    """q, k and v projections each quantize the normalised hidden states (one torchao
    quant per linear): one fused add + norm + quant kernel serves all three, and every
    output is eager's (to the bit through the interpreter; on the GPU the norm may round
    a value one step apart, which its row's quant carries)."""

    def block(x, residual, weight, wq, wk, wv):
        h = x + residual
        n = models.hf_rms_norm(h, weight)
        return _torchao_linear(n, wq), _torchao_linear(n, wk), _torchao_linear(n, wv), h

    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
    g = torch.Generator().manual_seed(2)
    x, residual = (torch.randn(2, 3, 256, generator=g).to(BF16).to(device) for _ in range(2))
    weight = (torch.rand(256, generator=g) + 0.5).to(BF16).to(device)
    projections = [torch.randn(64, 256, generator=g).to(BF16).to(device) for _ in range(3)]
    report = irfuse.explain(block, x, residual, weight, *projections)
    assert report.kernels == ["irfuse_add_rounded_rms_norm_per_token_in_dtype_fp8"], str(report)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="irfuse", options={"inner": "eager"})
    got = compiled(x, residual, weight, *projections)
    expected = block(x, residual, weight, *projections)
    assert torch.equal(got[-1], expected[-1])
    for a, b in zip(got[:-1], expected[:-1], strict=True):
        if device == "cpu":
            assert torch.equal(a, b)
        else:
            span = b.float().abs().amax().item()
            torch.testing.assert_close(a.float(), b.float(), atol=0.02 * span, rtol=0)
