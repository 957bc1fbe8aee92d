"""irfuse: a fusion compiler backend for PyTorch LLM inference.

`torch.compile(model, backend="irfuse")` (found through the `torch_dynamo_backends`
entry point), `irfuse.ops.*` reference ops, and `irfuse.explain(fn, *args, **options)`.
Nothing heavy is imported until used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from irfuse.version import __version__

if TYPE_CHECKING:
    from irfuse.transforms.report import FusionReport

__all__ = ["__version__", "explain", "irfuse_backend"]


def explain(
    fn: Any, *args: Any, kwargs: dict[str, Any] | None = None, **options: Any
) -> FusionReport:
    """Compile `fn` with irfuse (eager inner compiler unless `inner` is given), run it on
    `args` (and the keyword inputs `kwargs`: an HF model's `attention_mask=`; keyword
    arguments of explain itself are irfuse's options), and return what fused and what
    was refused and why, over all its graphs.

    Every call compiles afresh: its backend is a new function (Dynamo reuses a compiled
    graph only for an equal backend), Inductor's and AOTAutograd's caches are off for it
    (a cache hit skips the passes, and so the report), and the code of every frame it
    compiled (fn's, the functions it calls past a graph break, their resumptions) is
    dropped afterwards: explaining a function many times would otherwise reach Dynamo's
    recompile limit. A `torch.compile`d function among those frames compiles again at
    its next call."""
    import torch
    import torch._functorch.config
    import torch._inductor.config
    from torch._C._dynamo.eval_frame import reset_code
    from torch._dynamo.convert_frame import register_bytecode_hook

    from irfuse.backend import NEITHER, irfuse_backend, unknown_options
    from irfuse.pipeline import Options, capture_reports
    from irfuse.transforms.report import FusionReport

    def explaining_backend(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        return irfuse_backend(gm, example_inputs, **kwargs)

    if unknown := unknown_options(Options.from_dict(options)):
        raise TypeError(
            f"irfuse.explain: unknown option(s) {unknown}: {NEITHER} (the function's own "
            "keyword inputs go in kwargs={...})"
        )
    options.setdefault("inner", "eager")
    compiled = torch.compile(fn, backend=explaining_backend, options=options, dynamic=False)
    compiled_frames: list[Any] = []
    hook = register_bytecode_hook(lambda code, _new_code: compiled_frames.append(code))
    try:
        with (
            torch._inductor.config.patch(fx_graph_cache=False),
            torch._functorch.config.patch(enable_autograd_cache=False),
            capture_reports() as reports,
        ):
            compiled(*args, **(kwargs or {}))
    finally:
        hook.remove()
        for code in compiled_frames:
            reset_code(code)
    merged = FusionReport()
    for report in reports:
        merged.merge(report)
    if not reports:
        merged.notes.append(
            "no graph was compiled: Dynamo found no tensor operations to capture in "
            f"{getattr(fn, '__name__', type(fn).__name__)}, or fell back to eager (a graph "
            "break it cannot resume from, its recompile limit)"
        )
    return merged


def __getattr__(name: str) -> Any:
    if name == "irfuse_backend":
        from irfuse.backend import irfuse_backend

        return irfuse_backend
    if name == "ops":
        import importlib

        return importlib.import_module("irfuse.ops")
    raise AttributeError(name)
