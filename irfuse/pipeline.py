"""The irfuse graph pass: FX -> IR -> passes -> kernels -> FX, with options and dumps."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch.fx as fx
from xdsl.passes import PassPipeline
from xdsl.utils.exceptions import ArgSpecParseError, DiagnosticException, VerifyException

from irfuse.dialects import make_context
from irfuse.dump import GraphDump
from irfuse.frontend.fx_import import UnsupportedGraph, import_graph
from irfuse.transforms import DEFAULT_PIPELINE, PASSES, pipeline_error, policy
from irfuse.transforms.report import FusionReport, collect
from irfuse.version import __version__, source_hash

INNER_COMPILERS = ("inductor", "eager")
ATTENTION_MODES = ("auto", "irfuse", "sdpa")
# How Inductor launches a fused kernel (README, "How fused kernels launch"): every kernel
# whose launches are known when the graph compiles from its wrapper (a norm at a symbolic
# token count or with an eps read at run time, a per-tensor quant's two launches, the
# decode attention and a mask's summary too) | a norm kernel of one launch at static
# shapes only | always through the runtime ops.
GRAPH_LAUNCH_MODES = ("all", "static", "off")


@dataclass(frozen=True)
class Options:
    """irfuse's options; any other key of `torch.compile(options=...)` goes to Inductor."""

    passes: str = ",".join(DEFAULT_PIPELINE)  # an xdsl pass pipeline: "a,b{opt=value}"
    dump_dir: str | None = None
    inner: str = "inductor"
    attention: str = "auto"  # auto (measured on the GPU) | irfuse | sdpa
    graph_launch: str = "all"  # one of GRAPH_LAUNCH_MODES
    inductor: dict[str, object] = field(default_factory=dict, hash=False)
    autograd: bool = False  # set by the backend: the graph is traced for a backward too

    @classmethod
    def from_dict(cls, options: dict[str, object] | None) -> Options:
        options = dict(options or {})
        passes = options.pop("passes", DEFAULT_PIPELINE)
        if isinstance(passes, (list, tuple)) and all(isinstance(p, str) for p in passes):
            passes = ",".join(passes)
        if not isinstance(passes, str):
            raise ValueError(
                f"irfuse: passes must be a pipeline string or a list of pass names, got {passes!r}"
            )
        try:
            PassPipeline.parse_spec(PASSES, passes)
        except ValueError as error:
            known = f"; known passes: {sorted(PASSES)}" if "Unrecognized" in str(error) else ""
            raise ValueError(f"irfuse: passes {passes!r}: {error}{known}") from None
        except ArgSpecParseError as error:  # (a BaseException)
            raise ValueError(f"irfuse: passes {passes!r}: {pipeline_error(error)}") from None
        inner = options.pop("inner", "inductor")
        if inner not in INNER_COMPILERS:
            raise ValueError(f"irfuse: inner must be one of {INNER_COMPILERS}, got {inner!r}")
        attention = options.pop("attention", "auto")
        if attention not in ATTENTION_MODES:
            raise ValueError(
                f"irfuse: attention must be one of {ATTENTION_MODES}, got {attention!r}"
            )
        graph_launch = options.pop("graph_launch", "all")
        if graph_launch not in GRAPH_LAUNCH_MODES:
            raise ValueError(
                f"irfuse: graph_launch must be one of {GRAPH_LAUNCH_MODES}, got {graph_launch!r}"
            )
        dump_dir = options.pop("dump_dir", None) or os.environ.get("IRFUSE_DUMP_DIR") or None
        if dump_dir is not None and not isinstance(dump_dir, (str, os.PathLike)):
            raise ValueError(f"irfuse: dump_dir must be a path, got {dump_dir!r}")
        if dump_dir is not None and os.path.exists(dump_dir) and not os.path.isdir(dump_dir):
            raise ValueError(f"irfuse: dump_dir {str(dump_dir)!r} is not a directory")
        return cls(passes, dump_dir, str(inner), str(attention), str(graph_launch), options)

    def cache_key(self) -> str:
        """Changes whenever irfuse's version, its source (passes, lowering, kernels), an
        option that affects codegen or TRITON_INTERPRET does."""
        from irfuse.lowering.runtime import INTERPRET

        fields = {k: v for k, v in asdict(self).items() if k != "dump_dir"}
        text = json.dumps({"irfuse": __version__, "source": source_hash(), **fields,
                           "interpret": INTERPRET}, sort_keys=True, default=str)  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()


# Under autograd the forward graph returns the intermediates its backward reads: a chain
# with such a value inside is not replaced (each refusal names one), nor a quant whose
# input a matmul's backward keeps.
AUTOGRAD = (
    "autograd is on (grad mode, and an input or parameter requires grad): the forward "
    "keeps intermediates for the backward, which blocks most fusions; irfuse fuses "
    "inference graphs: compile and call the model under torch.no_grad() or "
    "torch.inference_mode()"
)

_REPORT_SINKS: list[list[FusionReport]] = []


@contextlib.contextmanager
def capture_reports() -> Iterator[list[FusionReport]]:
    """Collect the report of every graph irfuse transforms inside the block."""
    sink: list[FusionReport] = []
    _REPORT_SINKS.append(sink)
    try:
        yield sink
    finally:
        _REPORT_SINKS.remove(sink)


def transform_graph(graph: fx.Graph, options: Options) -> FusionReport:
    """Run irfuse's passes on `graph` in place; unchanged if nothing fuses or lowers."""
    report = FusionReport()
    for sink in _REPORT_SINKS:
        sink.append(report)
    dump = GraphDump(options.dump_dir) if options.dump_dir else None
    try:
        _transform(graph, options, report, dump)
    finally:
        if dump is not None:
            dump.report(report)
    return report


def _left_unchanged(report: FusionReport, reason: str) -> None:
    """The graph runs as it came: the passes' fusions are undone, and the note says which
    (the report's `fused` counts only what runs fused)."""
    undone = ", ".join(f"{name} {count}" for name, count in sorted(report.fused.items()))
    report.notes.append(
        f"graph left unchanged: {reason}" + (f" (undone: {undone})" if undone else "")
    )
    report.fused.clear()


def _transform(
    graph: fx.Graph, options: Options, report: FusionReport, dump: GraphDump | None
) -> None:
    from irfuse.lowering.kernel_spec import KernelSpec, launched_kernels
    from irfuse.lowering.to_fx import export_to_fx, plan_lowering
    from irfuse.lowering.to_triton import NoKernel

    try:
        imported = import_graph(graph)
        imported.module.verify()
    except (UnsupportedGraph, DiagnosticException) as error:
        report.notes.append(f"graph left to the inner compiler: {error}")
        return
    report.notes.extend(imported.notes)
    if options.autograd:
        report.notes.append(AUTOGRAD)
    module = imported.module
    if dump is not None:
        dump.module("imported", module)
    from irfuse.lowering.autotune import attention_chooser
    from irfuse.transforms.raise_rms_norm import inductor_cuda_graphs

    ctx = make_context()
    inductor = options.inner == "inductor"
    chooser = attention_chooser(
        options.attention,
        cuda_graphs=inductor and inductor_cuda_graphs(),
        graph_launch=options.graph_launch if inductor else "off",
    )
    with collect(report), policy.install(chooser, imported.example_shapes):
        for module_pass in PassPipeline.parse_spec(PASSES, options.passes).passes:
            before = sum(report.fused.values())
            try:
                module_pass.apply(ctx, module)
                module.verify()
            except (DiagnosticException, VerifyException) as error:  # a pass bug: no harm done
                last_line = (str(error).strip().splitlines() or [type(error).__name__])[-1]
                _left_unchanged(report, f"{module_pass.name} failed: {last_line}")
                return
            if dump is not None and sum(report.fused.values()) != before:
                dump.module(f"after-{module_pass.name}", module)
    try:
        plan = plan_lowering(imported)
    except NoKernel as error:
        _left_unchanged(report, str(error))
        return
    if not plan:
        return
    for lowered in plan:
        spec = lowered.spec
        for kernel in launched_kernels(spec) if isinstance(spec, KernelSpec) else (spec,):
            report.kernels.append(kernel.name)
            if dump is not None:
                dump.source(kernel.name, kernel.source())
    graph_launch = options.graph_launch if options.inner == "inductor" else "eager"
    report.launches.extend(export_to_fx(imported, plan, graph_launch))
