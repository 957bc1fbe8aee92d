"""The fusion report as a user reads it: where each refusal is (node, module, source
line), and one refusal at many places (a model's layers) as one entry."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

from irfuse.transforms.report import SHOWN_PLACES, FusionReport, module_path, place


def _refused(report: FusionReport, at: str, reason: str) -> None:
    report.rejected.append({"pass": "raise-rms-norm", "at": at, "reason": reason})


def test_one_refusal_at_several_places_is_one_entry_with_its_places():
    report = FusionReport()
    places = [f"%rsqrt_{i} in layers.{i}.q_norm (model.py:33)" for i in range(SHOWN_PLACES + 2)]
    for where in places:
        _refused(report, where, "no fp8 quant reads its value")
    _refused(report, "%rsqrt_9 in norm (model.py:33)", "another reason")
    lines = str(report).splitlines()
    header = f"  rejected raise-rms-norm at {len(places)} places: no fp8 quant reads its value"
    at = lines.index(header)
    assert lines[at + 1 : at + 1 + SHOWN_PLACES] == [
        f"             at {where}" for where in places[:SHOWN_PLACES]
    ]
    assert lines[at + 1 + SHOWN_PLACES] == "             and 2 more"
    assert "  rejected raise-rms-norm at %rsqrt_9 in norm (model.py:33): another reason" in lines
    assert len(report.to_json()["rejected"]) == len(places) + 1  # every place kept


def test_a_place_names_the_node_its_module_and_its_source_line():
    graph = fx.Graph()
    node = graph.placeholder("mul_3")
    node.meta["nn_module_stack"] = {
        "a": ("L['self']._modules['layers']._modules['0']", torch.nn.Module),
        "b": ("L['self'].layers[0].input_layernorm", torch.nn.Module),
    }
    node.meta["stack_trace"] = (
        '  File "/src/modeling.py", line 58, in forward\n    h = self.input_layernorm(x)\n'
        '  File "/src/modeling.py", line 33, in forward\n    v = v * torch.rsqrt(...)\n'
    )
    assert place(node) == "%mul_3 in layers.0.input_layernorm (modeling.py:33)"
    bare = graph.placeholder("add")
    assert place(bare) == "%add"
    assert module_path("L['self']._modules['layers']._modules['1']._modules['mlp']") == (
        "layers.1.mlp"
    )
    # a root reached through forward(self, *args) (transformers 5 wraps forward so)
    assert module_path("L['args'][0].model.layers[0].mlp") == "model.layers.0.mlp"
    assert module_path("L['layers'][1].norm") == "1.norm"  # an index of another local stays


def _norm_quant(x, w, s):
    from tests.models import hf_rms_norm, static_quant

    return static_quant(hf_rms_norm(x, w), s)


def _norm_quant_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
    x, w = torch.randn(4, 64, dtype=torch.float16), torch.ones(64, dtype=torch.float16)
    return x.to(device), w.to(device), torch.tensor([0.05], device=device)


def _broken(x, w, s):
    y = _norm_quant(x, w, s)
    torch._dynamo.graph_break()
    return _norm_quant(x * 2, w, s), y


def _broken_twice(x, w, s):
    a, b = _broken(x, w, s)
    return a, b, _norm_quant(x + 1, w, s)


def test_explain_reports_afresh_each_time_and_says_when_nothing_compiled():
    """Dynamo reuses a graph compiled with an equal backend, Inductor serves one from its
    cache: both skip the passes, which would leave "fused nothing". explain compiles
    afresh each time, also a function the user has compiled (which still runs), also
    under Inductor; and a function with no tensor work says that nothing compiled."""
    import irfuse

    x, w, s = _norm_quant_inputs()
    torch._dynamo.reset()
    user_compiled = torch.compile(_norm_quant, backend="irfuse", options={"inner": "eager"})
    expected = user_compiled(x, w, s)
    for inner in ("eager", "eager", "inductor", "inductor"):
        report = irfuse.explain(_norm_quant, x, w, s, inner=inner)
        assert report.kernels == ["irfuse_rms_norm_static_div_fp8"], (inner, str(report))
    assert torch.equal(user_compiled(x, w, s).view(torch.uint8), expected.view(torch.uint8))
    # past Dynamo's recompile limit (8): a compiled function, a graph break in a callee
    for _ in range(10):
        report = irfuse.explain(user_compiled, x, w, s)
        assert report.kernels == ["irfuse_rms_norm_static_div_fp8"], str(report)
    for _ in range(10):
        report = irfuse.explain(_broken_twice, x, w, s)
        assert report.kernels == ["irfuse_rms_norm_static_div_fp8"] * 3, str(report)
    report = irfuse.explain(lambda n: n + 1, 3)
    assert not report.kernels and "no graph was compiled" in str(report), str(report)


def test_explain_passes_keyword_inputs_as_kwargs():
    """A model's keyword inputs (an HF model's attention_mask=) go in `kwargs`; explain's
    own keyword arguments are options, and a stray one says so."""
    import irfuse

    x, w, s = _norm_quant_inputs()
    report = irfuse.explain(_norm_quant, x, kwargs={"w": w, "s": s})
    assert report.fused["fuse-rms-norm-quant"] == 1, str(report)
    with pytest.raises(TypeError, match=r"keyword inputs go in kwargs=\{\.\.\.\}"):
        irfuse.explain(_norm_quant, x, w=w, s=s)
