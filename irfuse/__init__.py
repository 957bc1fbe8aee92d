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


def explain(fn: Any, *args: Any, **options: Any) -> FusionReport:
    """Compile `fn` with irfuse (eager inner compiler unless `inner` is given), run it on
    `args`, and return what fused and what was refused and why, over all its graphs.

    Every call compiles afresh: its backend is a new function (Dynamo reuses a compiled
    graph only for an equal backend), Inductor's and AOTAutograd's caches are off for it
    (a cache hit skips the passes, and so the report), and `fn`'s own compiled code is
    dropped afterwards (explaining a function many times would otherwise fill Dynamo's
    cache up to its recompile limit; a `torch.compile`d `fn` compiles again on its next
    call)."""
    import torch
    import torch._functorch.config
    import torch._inductor.config
    from torch._dynamo.eval_frame import remove_from_cache

    from irfuse.backend import irfuse_backend
    from irfuse.pipeline import capture_reports
    from irfuse.transforms.report import FusionReport

    def explaining_backend(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        return irfuse_backend(gm, example_inputs, **kwargs)

    options.setdefault("inner", "eager")
    compiled = torch.compile(fn, backend=explaining_backend, options=options, dynamic=False)
    no_caches = (
        torch._inductor.config.patch(fx_graph_cache=False),
        torch._functorch.config.patch(enable_autograd_cache=False),
    )
    try:
        with no_caches[0], no_caches[1], capture_reports() as reports:
            compiled(*args)
    finally:
        remove_from_cache(getattr(fn, "_orig_mod", fn))
    merged = FusionReport()
    for report in reports:
        merged.merge(report)
    if not reports:
        merged.notes.append(
            "no graph was compiled: Dynamo found no tensor operations to capture in "
            f"{getattr(fn, '__name__', type(fn).__name__)}, or fell back to eager"
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
