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
    `args`, and return what fused and what was refused and why, over all its graphs."""
    import torch

    from irfuse.backend import irfuse_backend
    from irfuse.pipeline import capture_reports
    from irfuse.transforms.report import FusionReport

    options.setdefault("inner", "eager")
    compiled = torch.compile(fn, backend=irfuse_backend, options=options, dynamic=False)
    with capture_reports() as reports:
        compiled(*args)
    merged = FusionReport()
    for report in reports:
        merged.merge(report)
    return merged


def __getattr__(name: str) -> Any:
    if name == "irfuse_backend":
        from irfuse.backend import irfuse_backend

        return irfuse_backend
    if name == "ops":
        import importlib

        return importlib.import_module("irfuse.ops")
    raise AttributeError(name)
