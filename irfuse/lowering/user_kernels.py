"""Fused norm / quant kernels launched from Inductor's wrapper, not through a runtime op.

A `torch.ops.irfuse.kernel_norm` call costs host time on every call: the dispatcher,
the op's Python (checks, output allocation) and Triton's launch path, ~74 us on the H200
machine (bench/RESULTS.md) for a kernel whose GPU work at decode sizes is ~2 us. Where
the launch is known when the graph compiles, the lowering instead writes it into the
graph as an Inductor user-defined Triton kernel: an allocation per output and a
`triton_kernel_wrapper_functional` node whose constant arguments are the launch's sizes,
strides, block and warps. Inductor allocates the outputs with its memory planning and
launches the kernel from its generated wrapper, as it launches its own.

The launch is the one `kernel_norm` would make (runtime.single_launch, run on fake
tensors), so both paths run the same kernel with the same arguments. With a symbolic
token count the launch is computed at every row count where launch_config, the row
tiles, the two-pass choice or that of several rows a program change (SAMPLE_ROWS).
Where all of them agree but for the grid's rows (an add + norm + static fp8, or an
unquantized norm, at hidden 4096), one graph serves every count. Otherwise (a
per-token quant's warps drop from 1024 rows, as do a norm + static fp8's without a
residual) the graph takes the launch of the count it was compiled at, and guards on the
range of counts that launch alike: dynamo recompiles beyond it. A dynamic per-tensor
quant's two launches go through graph_launch.insert_launches, at static shapes. A kernel
of several rows a program (runtime.rows_per_program_of) takes the count, and launches a
program per so many of its rows (rounded up).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from irfuse.kernels.quant import AMAX_ROW_SLOTS
from irfuse.lowering.graph_launch import (
    COPIED,
    KernelLaunch,
    NodeInserter,
    insert_kernel_call,
    insert_launches,
    leading_sizes,
    read_host_scalar,
    same_start,
)
from irfuse.lowering.kernel_spec import KernelSpec
from irfuse.lowering.runtime import (
    KERNEL_PARAMS,
    MANY_ROWS,
    NORM_ROW_TILES,
    NUM_STAGES,
    ROW_TILES,
    ROWS_MAX_ROWS,
    ROWS_MIN_ROWS,
    ROWS_PARAMS,
    TWO_PASS_MIN_ROWS,
    NormLaunch,
    allocate_outputs,
    cdiv,
    compiled_kernel,
    kernel_params,
    per_tensor_launches,
    single_launch,
    stored_params,
)
from irfuse.ops.quant import NVFP4_SCALE_ROWS, nvfp4_scales_padded, round_up

INPUT_PARAMS = ("x_ptr", "residual_ptr", "weight_ptr", "x_weight_ptr", "scale_ptr")
OUTPUT_PARAMS = ("out_ptr", "residual_out_ptr", "scale_out_ptr", "value_ptr")  # kernel_norm's
# lower_norm_in_graph's inputs, in INPUT_PARAMS' order
NormInputs = tuple[fx.Node, fx.Node | None, fx.Node | None, fx.Node | None, fx.Node | None]
ROWS = "rows"  # a buffer dimension that is the token count
# one that is the token count rounded up to NVFP4_SCALE_ROWS: the swizzled nvfp4 scales'
# (ops.quant.nvfp4_scale_shape)
PADDED_ROWS = "rows, rounded up"
GRAPH_LAUNCH = "launched by Inductor's wrapper"


def _sample_rows() -> tuple[int, ...]:
    """Every row count at which a launch choice changes, one below and one above each, 1
    and 2^20. None of the counts above a threshold is a multiple of 128, so that every
    range holds one where a buffer sized by rows rounded up (nvfp4's swizzled scales)
    differs from one sized by the rows (_layout)."""
    thresholds = {MANY_ROWS, TWO_PASS_MIN_ROWS, ROWS_MIN_ROWS, ROWS_MAX_ROWS}
    for tiles in (*ROW_TILES.values(), *NORM_ROW_TILES.values()):
        thresholds |= {int(limit) for limit, *_ in tiles if limit != math.inf}
    around = {t + step for t in thresholds for step in (-1, 1)}
    return tuple(sorted({1, 2**20} | thresholds | around))


SAMPLE_ROWS = _sample_rows()


def graph_launch_problem(
    spec: KernelSpec, x: torch.Tensor, eps_input: bool, all_launches: bool
) -> str | None:
    """Why `spec` over the fake `x` launches through kernel_norm, as far as its kind and
    `x` tell (None if Inductor's wrapper may launch it; lower_norm_in_graph may still
    find the launch depends on the token count, or reads a copy). A symbolic token count
    and a per-tensor quant's two launches are taken only with `all_launches`
    (graph_launch="all", the default)."""
    if eps_input and not all_launches:
        return "its eps is read at run time; graph_launch='all' may launch it from the wrapper"
    if x.device.type != "cuda":
        return "its tensors are not on the GPU"
    if not isinstance(x.shape[-1], int):
        return "its hidden size is symbolic"
    static = all(isinstance(size, int) for size in x.shape)
    if spec.per_tensor and not all_launches:
        return "a per-tensor quant launches two kernels; graph_launch='all' may launch them"
    if spec.per_tensor and not static:
        return "its token count is symbolic (a per-tensor quant's launches need static shapes)"
    if not static and not all_launches:
        return "its token count is symbolic; graph_launch='all' may launch it from the wrapper"
    if static and x.numel() == 0:
        return "it has no rows"
    return None


@dataclass(frozen=True)
class _Sample:
    """kernel_norm's launch over `rows` rows, and the tensors it was computed on."""

    rows: int
    spec: KernelSpec
    launch: NormLaunch
    inputs: tuple  # (x, residual, weight, x_weight, scale) as the launch read them
    outputs: tuple  # allocate_outputs' at this row count

    def arg(self, name: str) -> Any:
        return self.launch.args[KERNEL_PARAMS.index(name)]


def _sample(spec: KernelSpec, inputs: tuple) -> _Sample:
    """The launch on `inputs` (no launch choice depends on the eps values: 0 here)."""
    x, residual, weight, x_weight, scale = inputs
    outputs = allocate_outputs(spec, x, residual is not None)
    launched, launch = single_launch(spec, x, residual, weight, scale, outputs, 0.0, x_weight)
    return _Sample(math.prod(x.shape[:-1]), launched, launch, inputs, outputs)


def _samples(spec: KernelSpec, fakes: tuple) -> list[_Sample] | str:
    """The launch at the graph's row count, or at SAMPLE_ROWS for a symbolic one (on
    stand-ins of x and the residual with their row stride)."""
    x = fakes[0]
    if all(isinstance(size, int) for size in x.shape):
        return [_sample(spec, fakes)]
    for t in fakes[:2]:
        if t is not None and (problem := _rows_problem(t)) is not None:
            return problem
    samples = []
    for rows in SAMPLE_ROWS:
        stand_ins = tuple(
            t.new_empty_strided((rows, t.shape[-1]), (t.stride(-2), 1)) if t is not None else None
            for t in fakes[:2]
        )
        samples.append(_sample(spec, (*stand_ins, *fakes[2:])))
    return samples


def _reads_a_copy(arg: Callable[[str], Any], inputs: tuple) -> bool:
    """Whether a launch, whose argument by parameter name is `arg(name)`, reads one of
    `inputs` (in INPUT_PARAMS' order) through a copy: one the runtime op makes at run
    time, which the graph cannot."""
    return any(
        fake is not None and (not same_start(arg(name), fake) or arg(name).dtype != fake.dtype)
        for name, fake in zip(INPUT_PARAMS, inputs, strict=True)
    )


def _rows_problem(t: torch.Tensor) -> str | None:
    """Why `t`'s rows (its last dim, over all the others) do not lie at one static stride
    (its view as [rows, n] needs no copy), decided without guarding on its symbolic
    sizes; None if they do."""
    if (
        t.dim() < 2
        or t.stride(-1) != 1
        or not all(
            statically_known_true(t.stride(i) == t.stride(i + 1) * t.shape[i + 1])
            for i in range(t.dim() - 2)
        )
    ):
        return COPIED
    if not isinstance(t.stride(-2), int):  # kernel_norm reads it as it comes
        return "an input's row stride is symbolic"
    return None


def _layout(samples: list[_Sample], name: str) -> tuple[list, list[int]] | None:
    """(shape, strides) of a buffer argument over the samples: each dim a size, ROWS
    where it is the row count, or PADDED_ROWS where it is that rounded up to
    NVFP4_SCALE_ROWS; None where its layout depends on the rows otherwise."""
    tensors = [s.arg(name) for s in samples]
    if any(t.stride() != tensors[0].stride() or t.dim() != tensors[0].dim() for t in tensors):
        return None
    shape: list = []
    for dim, size in enumerate(tensors[0].shape):
        if all(t.shape[dim] == size for t in tensors):
            shape.append(size)
        elif all(t.shape[dim] == s.rows for t, s in zip(tensors, samples, strict=True)):
            shape.append(ROWS)
        elif all(
            t.shape[dim] == round_up(s.rows, NVFP4_SCALE_ROWS)
            for t, s in zip(tensors, samples, strict=True)
        ):
            shape.append(PADDED_ROWS)
        else:
            return None
    return shape, list(tensors[0].stride())


def _range_at_hint(
    samples: list[_Sample], rows: Any
) -> tuple[list[_Sample], tuple[int, float]] | None:
    """The samples (by row count, ascending) that launch as the graph's own row count
    `rows` does, and the range [lo, hi) of row counts where that launch holds: bounded by
    the thresholds at which it changes (SAMPLE_ROWS holds each and the count below it,
    so a range holds two samples that agree, unless its launch varies with the count
    itself). A static count is its own sample. None for an unbacked count (no hint to go
    by), or a launch that varies with the count (the rows as a stride)."""
    if len(samples) == 1:
        return samples, (1, math.inf)
    hint = rows.node.hint if isinstance(rows, torch.SymInt) else rows
    if hint is None or hint < 1:  # no sample below 1 row
        return None
    at = max(i for i, s in enumerate(samples) if s.rows <= hint)
    lo, hi = at, at
    while lo > 0 and _agree([samples[at], samples[lo - 1]]):
        lo -= 1
    while hi + 1 < len(samples) and _agree([samples[at], samples[hi + 1]]):
        hi += 1
    if lo == hi:  # its neighbours disagree: it varies with the count (a stride), or the
        return None  # range is one count
    bounds = (
        samples[lo].rows if lo else 1,
        samples[hi + 1].rows if hi + 1 < len(samples) else math.inf,
    )
    return samples[lo : hi + 1], bounds


def _guard_rows(rows: Any, lo: int, hi: float) -> str:
    """Guard the graph on lo <= rows < hi (a symbolic count outside that range recompiles:
    dynamo checks the ShapeEnv's guards), and say how the kernel launches."""
    if lo == 1 and hi == math.inf:
        return GRAPH_LAUNCH
    # bool() of a symbolic comparison guards on it (true at the graph's own count)
    if not ((lo == 1 or bool(rows >= lo)) and (hi == math.inf or bool(rows < hi))):
        raise RuntimeError(f"the token count's range [{lo}, {hi}) misses its own count")
    upper = f" < {int(hi)}" if hi != math.inf else ""
    return f"{GRAPH_LAUNCH} for {lo} <= tokens{upper} (a recompile beyond)"


def _agree(samples: list[_Sample]) -> bool:
    """Whether the samples launch alike but for their grid's rows (and n_rows, the count
    a kernel of several rows a program takes)."""
    first = samples[0]
    for other in samples[1:]:
        if (other.spec, other.launch.num_warps) != (first.spec, first.launch.num_warps):
            return False
        if other.launch.grid[1] != first.launch.grid[1]:
            return False
        params = kernel_params(first.spec)
        for name, a, b in zip(params, first.launch.args, other.launch.args, strict=True):
            if name not in ROWS_PARAMS and not isinstance(a, torch.Tensor) and a != b:
                return False
    return True


def lower_norm_in_graph(
    graph: fx.Graph,
    anchor: fx.Node,
    spec: KernelSpec,
    inputs: NormInputs,
    eps: float | fx.Node,
    indices: list[int],
    x_eps: float | fx.Node = 0.0,
) -> tuple[list[fx.Node], list[fx.Node], str] | str:
    """Insert after `anchor` the launch of `spec` (which graph_launch_problem accepts) on
    `inputs` (x, residual, weight, x_weight, scale: INPUT_PARAMS') with `eps` and `x_eps`
    (x's own norm's), each a constant or an input the graph reads at each run
    (read_host_scalar). Returns (the inserted
    nodes in order, the nodes of kernel_norm's outputs `indices`, how it launches: for a
    symbolic token count whose launch changes with it, the graph is guarded on the range
    of counts that launch as its example does), or why the launch stays with
    kernel_norm: the kernel would read an input through a copy (kernel_norm makes it at
    run time), or its launch depends on a symbolic token count in a way no range
    captures."""
    scalars: dict[str, float | fx.Node] = {"eps": eps, "x_eps": x_eps}
    reads: list[fx.Node] = []
    lowered: tuple[list[fx.Node], list[fx.Node], str] | str | None = None
    for name, value in scalars.items():  # first: no launch choice depends on them
        if isinstance(value, fx.Node):
            read = read_host_scalar(graph, reads[-1] if reads else anchor, value)
            if read is None:
                lowered = f"its {name} is read at run time"
                break
            scalars[name] = read
            reads.append(read)
    if lowered is None:
        last = reads[-1] if reads else anchor
        lowered = _lower_launches(graph, last, spec, inputs, scalars, indices)
    if isinstance(lowered, str):  # the reads go with the launches
        for node in reversed(reads):
            graph.erase_node(node)
        return lowered
    return [*reads, *lowered[0]], *lowered[1:]


def _lower_launches(
    graph: fx.Graph,
    anchor: fx.Node,
    spec: KernelSpec,
    inputs: NormInputs,
    scalars: dict[str, float | fx.Node],
    indices: list[int],
) -> tuple[list[fx.Node], list[fx.Node], str] | str:
    """lower_norm_in_graph, the launches given the eps values `scalars` (by parameter)."""
    fakes = tuple(n.meta["val"] if n is not None else None for n in inputs)
    if spec.per_tensor:
        return _lower_per_tensor(graph, anchor, spec, inputs, fakes, scalars, indices)
    samples = _samples(spec, fakes)
    if isinstance(samples, str):
        return samples
    x = fakes[0]
    rows_val = math.prod(x.shape[:-1])
    in_range = _range_at_hint(samples, rows_val)
    if in_range is None:
        return "its launch depends on the token count"
    samples, bounds = in_range
    sample = samples[0]
    if _reads_a_copy(sample.arg, sample.inputs):
        return COPIED
    # an absent input is passed as x, never read (the kernel has no use for it)
    tensor_args: dict[str, Any] = {
        name: inputs[0] if node is None else node
        for name, node in zip(INPUT_PARAMS, inputs, strict=True)
    }
    outputs = allocate_outputs(spec, x, inputs[1] is not None)
    written = [n for n, t in zip(OUTPUT_PARAMS, sample.outputs, strict=True) if t.numel() > 0]
    layouts = {name: _layout(samples, name) for name in written}
    if any(layout is None for layout in layouts.values()):
        return "its launch depends on the token count"
    how = _guard_rows(rows_val, *bounds)

    insert = NodeInserter(graph, anchor)
    lead, rows = leading_sizes(insert, inputs[0])  # sizes, or nodes for them
    at = {ROWS: (rows, rows_val)}  # (size, fake size) of each placeholder dim
    if any(PADDED_ROWS in layout[0] for layout in layouts.values()):  # type: ignore[index]
        padded_val = round_up(rows_val, NVFP4_SCALE_ROWS)  # (a symbolic count)
        tiles = _cdiv_rows(insert, rows, rows_val, NVFP4_SCALE_ROWS)
        at[PADDED_ROWS] = (
            insert(operator.mul, (tiles, NVFP4_SCALE_ROWS), {}, padded_val),
            padded_val,
        )
    # the swizzled nvfp4 scales are zero-filled where their layout pads (alloc_nvfp4_scales)
    zeroed = spec.quant == "nvfp4" and nvfp4_scales_padded(rows_val, x.shape[-1])
    for name in OUTPUT_PARAMS:  # each buffer as the kernel indexes it (absent: x, unused)
        if name not in written:
            tensor_args[name] = inputs[0]
            continue
        shape, strides = layouts[name]  # type: ignore[misc]
        dtype = sample.arg(name).dtype
        fake = x.new_empty_strided([at[d][1] if d in at else d for d in shape], strides,
                                   dtype=dtype)  # fmt: skip
        sizes = [at[d][0] if d in at else d for d in shape]
        kwargs = {"dtype": dtype, "device": x.device}
        if zeroed and name == "scale_out_ptr":  # (Inductor lowers `full`, not `zeros`)
            tensor_args[name] = insert(torch.ops.aten.full.default, (sizes, 0), kwargs, fake)
        else:
            make = torch.ops.aten.empty_strided.default
            tensor_args[name] = insert(make, (sizes, strides), kwargs, fake)
    args = dict(zip(kernel_params(sample.spec), sample.launch.args, strict=True))
    args |= {**tensor_args, **scalars}
    # the grid: a program a row, or a program of several (sample.spec.rows_per_program)
    programs = sample.launch.grid[0]
    if not isinstance(rows, int):
        programs = rows
        if per_program := sample.spec.rows_per_program:  # and the count, as n_rows
            args["n_rows"] = rows
            programs = _cdiv_rows(insert, rows, rows_val, per_program)
    grid = (programs, sample.launch.grid[1])
    call = insert_kernel_call(insert, compiled_kernel(sample.spec), grid,
                              sample.launch.num_warps, NUM_STAGES, args, written)  # fmt: skip
    results = call.meta["val"]
    ends = []
    for index in indices:
        name, want = OUTPUT_PARAMS[index], outputs[index]
        if name not in written:  # an empty output, as kernel_norm returns it
            make = torch.ops.aten.empty_strided.default
            kwargs = {"dtype": want.dtype, "device": want.device}
            ends.append(insert(make, ([0], [1]), kwargs, want))
            continue
        end = insert(operator.getitem, (call, name), {}, results[name])
        if results[name].dtype != want.dtype:  # nvfp4 scales: bytes -> int32
            end = insert(torch.ops.aten.view.dtype, (end, want.dtype), {},
                         results[name].view(want.dtype))  # fmt: skip
        if want.dim() != 2:  # rows -> x's leading dims
            end = insert(torch.ops.aten.view.default, (end, [*lead, want.shape[-1]]), {}, want)
        ends.append(end)
    return insert.nodes, ends, how


def _cdiv_rows(insert: NodeInserter, rows: fx.Node, rows_val: Any, n: int) -> fx.Node:
    """Nodes computing (rows + n - 1) // n from the symbolic count `rows`."""
    more = insert(operator.add, (rows, n - 1), {}, rows_val + n - 1)
    return insert(operator.floordiv, (more, n), {}, cdiv(rows_val, n))


def _lower_per_tensor(
    graph: fx.Graph,
    anchor: fx.Node,
    spec: KernelSpec,
    inputs: tuple,
    fakes: tuple,
    scalars: dict[str, float | fx.Node],
    indices: list[int],
) -> tuple[list[fx.Node], list[fx.Node], str] | str:
    """lower_norm_in_graph for a per-tensor quant at static shapes: its two launches
    (runtime.per_tensor_launches), phase 1's results for phase 2 in a buffer of the graph,
    zero-filled where phase 1 takes an atomic max into it."""
    x, residual, weight, x_weight = fakes[:4]
    outputs = allocate_outputs(spec, x, residual is not None)
    computed = per_tensor_launches(spec, x, residual, weight, outputs, 0.0, x_weight)
    # (phase 1 reads every input; a copy of one would pass for a buffer the graph never
    # fills)
    first = dict(zip(KERNEL_PARAMS, computed[0][1].args, strict=True))
    if _reads_a_copy(first.__getitem__, fakes):
        return COPIED
    launches = []
    for launched, launch in computed:
        atomic = launched.quant == "amax" and launch.grid[0] > AMAX_ROW_SLOTS
        args = dict(zip(KERNEL_PARAMS, launch.args, strict=True)) | scalars
        launches.append(
            KernelLaunch.of(
                compiled_kernel(launched),
                launch.grid,
                list(args.values()),
                {},
                launch.num_warps,
                NUM_STAGES,
                stored_params(launched),
                ["scale_out_ptr"] * atomic,
            )  # fmt: skip
        )
    present = [n for n in inputs if n is not None]
    inserted = insert_launches(graph, anchor, launches, present, [outputs[i] for i in indices])
    return inserted if isinstance(inserted, str) else (*inserted, GRAPH_LAUNCH)
