"""The sm_90 prefill in Gluon: when kernel_attention runs it, its generated source compiled
for sm_90 (on any machine: Gluon has no interpreter), and on an H100 / H200 against the
reference ops."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

import irfuse.lowering.attention as kernels
import irfuse.ops as ref
from irfuse.lowering import attention_gluon
from irfuse.lowering.attention import gluon_prefill_source, kernel_attention
from tests.helpers import assert_fp8_close

SM90 = torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


# Gluon calls no interpreted function, and this process's Triton interprets: the kernels
# are compiled in a process of their own, as for a GPU.
COMPILE = """
import json, sys
from irfuse.lowering import attention_gluon

ptx = {f"{epilogue} {d}": attention_gluon.compile_sm90(epilogue, d, causal).asm["ptx"]
       for epilogue, causal, d in json.loads(sys.argv[1])}
print(json.dumps(ptx))
"""
CASES = [
    ("none", 0, 128),
    ("static", 2, 128),
    ("static div", 1, 128),
    ("none", 1, 64),
    ("static", 0, 64),
]  # (epilogue, causal, head dim)


@pytest.fixture(scope="module")
def sm90_ptx(tmp_path_factory) -> dict[str, str]:
    """The generated kernels of CASES compiled for sm_90 (bf16, lse asked for): their PTX
    by "epilogue head-dim"."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["IRFUSE_CACHE_DIR"] = str(tmp_path_factory.mktemp("kernels"))
    done = subprocess.run([sys.executable, "-c", COMPILE, json.dumps(CASES)], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(("epilogue", "d"), [(epilogue, d) for epilogue, _, d in CASES])
def test_generated_source_compiles_for_sm90_in_fa3_order(epilogue, d, sm90_ptx):
    """Each epilogue's kernel compiles for sm_90 with what makes it fast: the QK product
    waited for alone while P@V stays in flight, registers moved to the consumers, 4-D TMA
    views; the quant ones cast with saturation."""
    ptx = sm90_ptx[f"{epilogue} {d}"]
    registers = attention_gluon.PLANS[d, False][-1].config.registers
    assert "wgmma.wait_group.sync.aligned 1;" in ptx
    assert re.search(rf"setmaxnreg.inc.sync.aligned.u32\s+{registers};", ptx)
    assert "cp.async.bulk.tensor.4d" in ptx
    assert ("cvt.rn.satfinite.e4m3x2.f32" in ptx) == (epilogue != "none")


def test_sources_name_what_they_fuse():
    source = gluon_prefill_source("static div", 3)
    assert "Fuses: attention + static fp8 quant (divided)." in source
    assert "3 consumer warp groups" in source
    for consumers in (2, 3):
        assert f"irfuse_attention_gluon_{consumers}wg_static_fp8" in kernels.attention_source(
            "static"
        )
    assert "Gluon" not in kernels.attention_source("nvfp4")
    with pytest.raises(ValueError, match="no Gluon prefill epilogue 'nvfp4'"):
        gluon_prefill_source("nvfp4", 2)


def _qkv_on(device, hq=4, hkv=4, sq=2048, skv=2048, d=128, dtype=torch.bfloat16):
    make = lambda h, s, dim: torch.randn(1, h, s, dim, dtype=dtype, device=device)  # noqa: E731
    return make(hq, sq, d), make(hkv, skv, d), make(hkv, skv, d)


def test_refusal_off_sm90(monkeypatch):
    """Off an sm_90 GPU (here: the CPU, or the interpreter) the Triton kernels run, and
    IRFUSE_GLUON_PREFILL=0 runs them everywhere."""
    q, k, v = _qkv_on("cpu", sq=1100, skv=1100)
    assert attention_gluon.refusal(q, k, v, False, 0, "none") == "not on an sm_90 GPU"
    monkeypatch.setattr(attention_gluon, "ENABLED", False)
    assert attention_gluon.refusal(q, k, v, False, 0, "none") == "IRFUSE_GLUON_PREFILL=0"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("fits", None),
        ("mask", "an explicit mask"),
        ("nvfp4", "the nvfp4 epilogue"),
        ("fp32", "torch.float32"),
        ("causal", None),
        ("d64", None),
        ("d64 causal", "causal at head dim 64 (the Triton kernel is faster)"),
        ("d64 short", "511 query rows, 2048 keys"),
        ("d96", "head dims 96 / 96"),
        ("dv64", "head dims 128 / 64"),
        ("short", "511 query rows, 2048 keys"),
        ("no keys", "2048 query rows, 0 keys"),
        ("odd strides", "strides or bases TMA cannot view"),
        ("expanded heads", "strides or bases TMA cannot view"),
    ],
)
def test_what_it_leaves_to_the_triton_kernels(case, reason, monkeypatch):
    """The inputs the Gluon prefill refuses, and why (tensors on the meta device, taken
    for an sm_90 GPU's: only their shapes, dtypes and strides are read)."""
    monkeypatch.setattr(attention_gluon, "on_sm90", lambda device: True)
    shapes = {"d64": {"d": 64}, "d64 causal": {"d": 64}, "d64 short": {"d": 64, "sq": 511},
              "d96": {"d": 96}, "short": {"sq": 511}, "no keys": {"skv": 0},
              "fp32": {"dtype": torch.float32}}  # fmt: skip
    q, k, v = _qkv_on("meta", **shapes.get(case, {}))
    if case == "dv64":
        v = v[..., :64]
    if case == "odd strides":  # rows of 4 * 129 elements: not a multiple of 16 bytes
        rows = torch.empty(1, 2048, 4 * 129, dtype=torch.bfloat16, device="meta")
        q = rows[..., :512].view(1, 2048, 4, 128).transpose(1, 2)
    if case == "expanded heads":
        k = k[:, :1].expand(1, 4, 2048, 128)
    mask_kind = 1 if case == "mask" else 0
    epilogue = "nvfp4" if case == "nvfp4" else "none"
    causal = case in ("causal", "d64 causal")
    assert attention_gluon.refusal(q, k, v, causal, mask_kind, epilogue) == reason


needs_sm90 = pytest.mark.skipif(not SM90, reason="needs an sm_90 GPU (H100, H200)")
GPU_CASES = [  # (epilogue, causal, Hq, Hkv, Sq, Skv, layout, lse, dtype, head dim)
    ("none", "none", 4, 4, 1031, 1031, "bs_hd", True, torch.bfloat16, 128),
    ("static", "top_left", 8, 1, 1100, 1100, "bs_hd", False, torch.bfloat16, 128),
    ("static div", "bottom_right", 4, 4, 1030, 2000, "bhsd", True, torch.bfloat16, 128),
    ("none", "bottom_right", 4, 2, 1500, 1100, "bhsd", True, torch.float16, 128),  # 400 see none
    ("none", "top_left", 4, 4, 2048, 2048, "bs_hd", True, torch.float16, 128),
    ("static", "none", 2, 2, 1025, 7, "bs_hd", True, torch.bfloat16, 128),  # keys short of a tile
    ("none", "top_left", 8, 2, 517, 517, "bs_hd", True, torch.bfloat16, 128),  # the shortest
    ("none", "none", 4, 4, 2051, 2051, "bs_hd", True, torch.bfloat16, 64),
    ("static", "none", 8, 2, 2048, 1500, "bhsd", True, torch.float16, 64),
    ("static div", "none", 4, 1, 2100, 3000, "bs_hd", False, torch.bfloat16, 64),
    ("none", "none", 4, 4, 1031, 1031, "bs_hd", True, torch.bfloat16, 64),  # two consumers
    ("static", "none", 8, 2, 700, 900, "bhsd", True, torch.float16, 64),
]


def _gpu_inputs(hq, hkv, sq, skv, dtype, seed=0, d=128):
    """q as its projection leaves it ([B, Sq, Hq, D] memory), k and v [B, Hkv, Skv, D]."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, sq, hq, d, generator=g).to(dtype).cuda().transpose(1, 2)
    k, v = (torch.randn(2, hkv, skv, d, generator=g).to(dtype).cuda() for _ in "kv")
    return q, k, v


def _counting_launches(monkeypatch) -> list:
    """The Gluon launches kernel_attention makes from now on (it must run, not refuse)."""
    calls = []
    launch = attention_gluon.launch
    monkeypatch.setattr(attention_gluon, "launch", lambda *a: calls.append(1) or launch(*a))
    return calls


@pytest.mark.cuda
@needs_sm90
@pytest.mark.parametrize(("epilogue", "causal", "hq", "hkv", "sq", "skv", "layout", "lse",
                          "dtype", "d"), GPU_CASES)  # fmt: skip
def test_gpu_gluon_prefill_matches_reference(epilogue, causal, hq, hkv, sq, skv, layout, lse,
                                             dtype, d, monkeypatch):  # fmt: skip
    """The Gluon prefill (it runs: counted) against the unfused reference ops: GQA,
    ragged lengths, each causal kind, both layouts, the static epilogues, lse, both head
    dims (two and three consumer warp groups)."""
    q, k, v = _gpu_inputs(hq, hkv, sq, skv, dtype, d=d)
    scale = None if epilogue == "none" else torch.tensor([0.02], device="cuda")
    calls = _counting_launches(monkeypatch)
    out, got_lse, _ = kernel_attention(q, k, v, scale, d**-0.5, causal, layout, lse, epilogue)
    assert calls == [1]
    want, want_lse, _ = kernels._reference(q, k, v, scale, d**-0.5, causal, layout, lse,
                                           epilogue, None, None)  # fmt: skip
    assert out.shape == want.shape and out.stride() == want.stride()
    if epilogue == "none":
        tol = 1.6e-2 if dtype == torch.bfloat16 else 2e-3
        torch.testing.assert_close(out, want, atol=tol, rtol=tol)
    else:
        assert_fp8_close(out, want, scale)
    if lse:
        torch.testing.assert_close(got_lse, want_lse, atol=1e-3, rtol=1e-3)
    else:
        assert got_lse.numel() == 0


@pytest.mark.cuda
@needs_sm90
# 1e-35: beyond the reciprocal pair; 0.0071062189526855946: the pair misses a bf16 quotient
@pytest.mark.parametrize("scale", [0.02, 3.0, 1e-35, 0.0071062189526855946])
@pytest.mark.parametrize(("causal", "d", "dtype", "gluon"), [
    ("none", 128, torch.bfloat16, True),
    ("top_left", 128, torch.float16, True),
    ("none", 64, torch.bfloat16, True),  # three consumers
    ("top_left", 64, torch.bfloat16, False),  # the Triton kernel
    ("top_left", 64, torch.float16, False),
])  # fmt: skip
def test_gpu_static_div_divides_the_output_as_the_graph_does(causal, d, dtype, gluon, scale,
                                                              monkeypatch):  # fmt: skip
    """`static div` quantizes each kernel's own output byte for byte as the graph's
    division, clamp and cast do, on both prefill kernels (the reciprocal pair where it is
    exact for every value of the dtype, div_by elsewhere)."""
    q, k, v = _gpu_inputs(4, 4, 2048, 2048, dtype, d=d)
    s = torch.tensor([scale], device="cuda")
    calls = _counting_launches(monkeypatch)
    o, _, _ = kernel_attention(q, k, v, None, d**-0.5, causal, "bs_hd", False, "none")
    got, _, _ = kernel_attention(q, k, v, s, d**-0.5, causal, "bs_hd", False, "static div")
    assert calls == ([1, 1] if gluon else [])
    want = (o.float() / s).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


@pytest.mark.cuda
@needs_sm90
def test_gpu_gluon_prefill_replays_in_a_cuda_graph(monkeypatch):
    """Captured in a CUDA graph (its TMA views are kernel parameters, built at capture)
    and replayed over new inputs in the same buffers."""
    q, k, v = _gpu_inputs(4, 2, 1100, 1100, torch.bfloat16)
    calls = _counting_launches(monkeypatch)
    run = lambda: kernel_attention(q, k, v, None, 128**-0.5, "top_left", "bs_hd", True, "none")  # noqa: E731
    run()  # compiled outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse, _ = run()
    for seed in (1, 2):
        new = _gpu_inputs(4, 2, 1100, 1100, torch.bfloat16, seed)
        for t, value in zip((q, k, v), new, strict=True):
            t.copy_(value)
        graph.replay()
        want, want_lse = ref.attention(q, k, v, None, 128**-0.5, "top_left", True)
        torch.testing.assert_close(out, want.transpose(1, 2).reshape(out.shape), atol=1.6e-2,
                                   rtol=1.6e-2)  # fmt: skip
        torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=1e-3)
    assert calls == [1, 1]


@pytest.mark.cuda
@needs_sm90
def test_gpu_refused_inputs_run_the_triton_kernel(monkeypatch):
    """An explicit mask (and a short q) run the Triton prefill, with the same results."""
    q, k, v = _gpu_inputs(4, 4, 1100, 1100, torch.bfloat16)
    mask = torch.ones(1100, 1100, dtype=torch.bool, device="cuda").tril()
    calls = _counting_launches(monkeypatch)
    out, _, _ = kernel_attention(q, k, v, None, 128**-0.5, "none", "bhsd", False, "none", mask)
    short, _, _ = kernel_attention(q[:, :, :500], k, v, None, 128**-0.5, "top_left", "bhsd",
                                   False, "none")  # fmt: skip
    assert calls == []
    want, _ = ref.attention(q, k, v, mask, 128**-0.5, "none", False)
    torch.testing.assert_close(out, want, atol=1.6e-2, rtol=1.6e-2)
    want, _ = ref.attention(q[:, :, :500], k, v, None, 128**-0.5, "top_left", False)
    torch.testing.assert_close(short, want, atol=1.6e-2, rtol=1.6e-2)


@pytest.mark.cuda
@needs_sm90
@pytest.mark.parametrize(("causal", "sq", "skv"), [("top_left", 700, 700),
                                                   ("bottom_right", 1000, 1500)])  # fmt: skip
def test_gpu_warp_groups_past_their_diagonal_free_their_tiles(causal, sq, skv, monkeypatch):
    """Causal at head dim 64 (the Triton kernel runs it by default), three consumers, a
    program an item:
    three warp groups of 64 rows, the first two stopping up to two key tiles before the
    program's last, free those tiles' slots for the producer (else it hangs) and match
    the reference."""
    three = attention_gluon.Plan(1, attention_gluon.THREE_NARROW, False)
    monkeypatch.setitem(attention_gluon.PLANS, (64, True), (three,))
    q, k, v = _gpu_inputs(4, 2, sq, skv, torch.bfloat16, d=64)
    calls = _counting_launches(monkeypatch)
    out, lse, _ = kernel_attention(q, k, v, None, 0.125, causal, "bhsd", True, "none")
    assert calls == [1]
    want, want_lse = ref.attention(q, k, v, None, 0.125, causal, True)
    torch.testing.assert_close(out, want, atol=1.6e-2, rtol=1.6e-2)
    torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=1e-3)


@pytest.mark.cuda
@needs_sm90
@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize(("causal", "hq", "hkv", "sq", "skv", "d"), [
    ("top_left", 4, 4, 1100, 1100, 128),
    ("bottom_right", 4, 2, 900, 1300, 64),
    ("none", 4, 1, 1000, 700, 64),
])  # fmt: skip
def test_gpu_work_items_in_sweeps_and_persistent_match_the_reference(
    causal, hq, hkv, sq, skv, d, persistent, monkeypatch
):
    """The work items in sweeps of 3 heads block by block (the 8 heads: sweeps of 3, 3
    and 2), a program each or persistent (5 programs striding over them, the producer
    loading an item's rows and keys while the consumers end the last): each item finds
    its block and head, and the rings their phases, lse included."""
    monkeypatch.setattr(kernels, "heads_per_sweep", lambda *args: 3)
    config = attention_gluon.plan(d, False, sq).config  # (causal head dim 64 has no plan)
    only = attention_gluon.Plan(1, config, persistent)
    monkeypatch.setitem(attention_gluon.PLANS, (d, causal != "none"), (only,))
    monkeypatch.setattr(attention_gluon, "sm_count", lambda device: 5)
    q, k, v = _gpu_inputs(hq, hkv, sq, skv, torch.bfloat16, d=d)
    sweeps, launch = [], attention_gluon.launch
    monkeypatch.setattr(attention_gluon, "launch", lambda *a: sweeps.append(a[-1]) or launch(*a))
    out, lse, _ = kernel_attention(q, k, v, None, d**-0.5, causal, "bs_hd", True, "none")
    assert sweeps == [3]
    want, want_lse = ref.attention(q, k, v, None, d**-0.5, causal, True)
    torch.testing.assert_close(out, want.transpose(1, 2).reshape(out.shape), atol=1.6e-2,
                               rtol=1.6e-2)  # fmt: skip
    torch.testing.assert_close(lse, want_lse, atol=1e-3, rtol=1e-3)
