"""Inductor's generated wrapper launches the fused kernels as their runtime ops would.

The wrapper is generated on the CPU (tests/inductor_wrapper.py, in a process of its own:
Triton must not run in its interpreter there), with graph_launch="all": a decode step's
attention + static fp8 (split-KV slices, then the combine), the same beside a padding mask
(the mask summary's two kernels first), rms_norm + dynamic per-tensor
fp8 over 600 rows (the amax into zero-filled atomic slots, then the quant) and rms_norm +
static fp8 over a token count marked dynamic, HF's RMSNorm module under `dynamic=True`
(its eps an input), a [B, S, K] norm whose per-token quant reads it flattened, a
Gemma sandwich (norm, add, norm + static fp8), and over a token count marked dynamic
rms_norm + per-token fp8 of several rows a program and rms_norm + nvfp4 (its scales
padded).
Each kernel call of the wrapper is checked against the launches the runtime op computes
for the same inputs: the kernels in order, their arguments other than tensors, grids,
and the buffers passed from one to the next.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from irfuse.lowering.runtime import KERNEL_PARAMS, ROWS_WARPS

WRAPPER_SCRIPT = Path(__file__).parent / "inductor_wrapper.py"
# On a GPU machine the GPU tests compile and run the real wrappers; this CPU stand-in
# lifts GPU-only steps of the torch version it was written against (2.13).
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="on a GPU, test_user_kernels and test_attention_graph_launch run the real wrappers",
)
CALL = re.compile(r"^\s+(\w+)_\d+\.run\((.*), stream=\w+\)$", re.M)
# case: [(kernel call, its tensor argument, a later call, its argument)]: the buffers a
# kernel writes that a later one reads
HANDED_ON = {
    "decode attention": [(0, 5, 1, 0), (0, 6, 1, 1)],  # part, part_state
    "masked decode attention": [
        (0, 1, 1, 0),  # the mask's flags
        (1, 2, 2, 4),  # the tile ranges, read by the decode's slices
        (2, 5, 3, 0),  # part
        (2, 6, 3, 1),  # part_state
    ],
    "per-tensor": [  # the amax slots read as the scale; the output
        (0, KERNEL_PARAMS.index("scale_out_ptr"), 1, KERNEL_PARAMS.index("scale_ptr")),
        (0, KERNEL_PARAMS.index("out_ptr"), 1, KERNEL_PARAMS.index("out_ptr")),
    ],
}


@pytest.fixture(scope="module")
def wrappers(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("wrapper")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env |= {"TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor"), "IRFUSE_CACHE_DIR": str(tmp)}
    run = subprocess.run([sys.executable, str(WRAPPER_SCRIPT)], env=env, capture_output=True,
                         text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout)


def _calls(code: str) -> list[tuple[str, list[str]]]:
    """(kernel, arguments) of each kernel call of the wrapper, in order."""
    return [(name, _split(args)) for name, args in CALL.findall(code)]


def _split(args: str) -> list[str]:
    """Arguments separated by the commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(args):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(args[start:i].strip())
            start = i + 1
    return [*parts, args[start:].strip()]


def _is_tensor(arg: str) -> bool:  # a buffer, an input, or a view of one
    return re.match(r"(arg|buf)\d+_?\d*$|reinterpret_tensor\(|aten\.", arg) is not None


@pytest.mark.parametrize("case", ["decode attention", "masked decode attention", "per-tensor"])
def test_the_wrapper_launches_what_the_runtime_op_computes(wrappers, case):
    code, launches = wrappers[case]["code"], wrappers[case]["launches"]
    assert "kernel_attention" not in code and "kernel_norm" not in code
    calls = _calls(code)
    assert [name for name, _ in calls] == [launch["kernel"] for launch in launches], code
    for (_, args), launch in zip(calls, launches, strict=True):
        *kernel_args, grid_x, grid_y, grid_z = args  # the grid follows the kernel's arguments
        grid = [*launch["grid"], *[1] * (3 - len(launch["grid"]))]
        assert [int(g) for g in (grid_x, grid_y, grid_z)] == grid
        scalars = [float(arg) for arg in kernel_args if not _is_tensor(arg)]
        assert scalars == [float(value) for value in launch["scalars"]], (launch, kernel_args)
    for writer, written, reader, read in HANDED_ON[case]:
        buffer = calls[writer][1][written]
        assert _is_tensor(buffer) and calls[reader][1][read] == buffer, (
            calls[writer],
            calls[reader],
        )


def test_the_per_tensor_amax_slots_are_zeroed_before_the_first_kernel(wrappers):
    code = wrappers["per-tensor"]["code"]
    (_, first), _ = _calls(code)
    # 512 slots, then a row's rstd each: 1112 fp32
    slots = first[KERNEL_PARAMS.index("scale_out_ptr")]
    allocation = re.search(
        rf"{slots} = empty_strided_\w+\(\(1112, \), \(1, \), torch.float32", code
    )
    assert allocation is not None, code
    fill = code.index(f"({slots})")  # the fill kernel Inductor makes of `full(0)`
    assert allocation.end() < fill < code.index("irfuse_rms_norm_amax_0.run("), code


def test_dynamic_true_reads_the_module_eps_in_the_wrapper(wrappers):
    """`dynamic=True` makes HF's module eps a 0-d CPU tensor input: the wrapper reads it
    with `.item()` (no device sync), once for the two norms of the module, and passes it
    as both kernels' eps, beside a symbolic token count."""
    code = wrappers["dynamic=True"]["code"]
    calls = _calls(code)
    # rows of 256 columns: n_cols as BLOCK (runtime.full_block_of)
    assert [name for name, _ in calls] == [
        "irfuse_add_rounded_rms_norm_static_div_fp8_full_block"
    ] * 2, code
    reads = re.findall(r"(\w+) = arg\d+_1\.item\(\)", code)
    assert len(reads) == 1, code
    for _, args in calls:
        assert args[KERNEL_PARAMS.index("eps")] == reads[0], args
        assert re.fullmatch(r"s\d+", args[-3]), args  # the grid: a row per program


def test_a_symbolic_token_count_sizes_the_grid_and_the_output(wrappers):
    code = wrappers["symbolic rows"]["code"]
    ((name, args),) = _calls(code)
    assert name == "irfuse_rms_norm_static_fp8_full_block"
    rows = args[-3]  # the grid's x: the token count's symbol
    assert re.fullmatch(r"s\d+", rows), args
    output = rf"empty_strided_\w+\(\({rows}, 256\), \(256, 1\), torch.float8_e4m3fn\)"
    assert re.search(output, code), code


def test_a_symbolic_token_count_sizes_a_grid_of_several_rows_a_program(wrappers):
    """A kernel of several rows a program (runtime.rows_per_program_of) over a symbolic
    token count: its grid is the count over 8 rounded up, the count is its n_rows, and it
    runs on ROWS_WARPS warps."""
    code = wrappers["symbolic rows, several a program"]["code"]
    ((name, args),) = _calls(code)
    assert name == "irfuse_rms_norm_per_token_fp8_8_rows_full_block"
    rows = args[-4]  # n_rows, the kernel's last parameter: the token count's symbol
    assert re.fullmatch(r"s\d+", rows), args
    assert args[-3] == f"(7 + {rows}) // 8", args  # the grid's x
    assert re.findall(r"'num_warps': (\d+)", code) == [str(ROWS_WARPS)], code


def test_a_symbolic_token_count_sizes_the_padded_nvfp4_scales(wrappers):
    """rms_norm + nvfp4 over a symbolic token count: the swizzled scales' buffer has the
    count rounded up to 128 rows, and is filled before the kernel writes it."""
    code = wrappers["symbolic rows, nvfp4"]["code"]
    ((name, args),) = _calls(code)
    assert name == "irfuse_rms_norm_nvfp4_full_block", args
    rows = args[-3]  # the grid's x: the token count's symbol
    scales = args[KERNEL_PARAMS.index("scale_out_ptr")]
    padded = rf"{scales} = empty_strided_\w+\(\(128\*\(\(127 \+ {rows}\) // 128\), 16\)"
    assert re.search(padded, code), code
    fill, launch = (code.index(f"({scales}, {rows})"), code.index(f"{name}_0.run("))
    assert fill < launch, code


def test_a_quant_of_flattened_hidden_states_launches_into_the_flattened_buffers(wrappers):
    """A [6, 100, 256] norm whose per-token quant reads it as [600, 256]: one kernel call,
    its outputs allocated as the graph's [600, ...] (the view back is a reinterpretation,
    no call in the wrapper)."""
    code = wrappers["flattened per-token"]["code"]
    ((name, args),) = _calls(code)
    assert name == "irfuse_rms_norm_per_token_fp8_full_block" and "kernel_norm" not in code
    out, scales = args[KERNEL_PARAMS.index("out_ptr")], args[KERNEL_PARAMS.index("scale_out_ptr")]
    assert re.search(rf"{out} = empty_strided_\w+\(\(600, 256\), \(256, 1\), torch.float8", code)
    assert re.search(rf"{scales} = empty_strided_\w+\(\(600, 1\), \(1, 1\), torch.float32", code)
    assert "flatten" not in code


def test_a_sandwich_launches_with_both_weights(wrappers):
    """Gemma's post-attention norm, the add and the quantized pre-feedforward norm: one
    call, reading each norm's weight (two inputs) and x and the residual in place."""
    code = wrappers["sandwich"]["code"]
    ((name, args),) = _calls(code)
    assert name == "irfuse_normed_add_rounded_rms_norm_gemmaw_static_div_fp8_full_block", code
    assert "kernel_norm" not in code
    inputs = [args[KERNEL_PARAMS.index(p)] for p in ("x_ptr", "residual_ptr", "weight_ptr",
                                                       "x_weight_ptr")]  # fmt: skip
    assert all(re.fullmatch(r"arg\d+_1", a) for a in inputs) and len(set(inputs)) == 4, args


def test_a_sandwich_compiled_dynamic_reads_both_module_eps_in_the_wrapper(wrappers):
    """Under `dynamic=True` each norm module's eps is an input: the wrapper reads both
    (`.item()`, no device sync) and passes them as the kernel's eps and x_eps."""
    code = wrappers["sandwich dynamic=True"]["code"]
    ((name, args),) = _calls(code)
    assert name == "irfuse_normed_add_rounded_rms_norm_gemmaw_static_div_fp8_full_block", code
    reads = re.findall(r"(\w+) = arg\d+_1\.item\(\)", code)
    assert len(reads) == 2, code
    eps, x_eps = args[KERNEL_PARAMS.index("eps")], args[KERNEL_PARAMS.index("x_eps")]
    assert sorted([eps, x_eps]) == sorted(reads), args


def test_the_decode_output_is_viewed_to_its_rows_without_a_call(wrappers):
    assert "flatten" not in wrappers["decode attention"]["code"]
