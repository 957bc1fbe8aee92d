"""Fusion choices that are settled by measurement, not by structure.

A pass asks `choose(kind, signature, examples)` before a fusion that is not always a win
(the fused attention + quant against the graph's own SDPA + quant). The pipeline installs
a chooser (irfuse/lowering/autotune.py) for the graph it compiles; without one
(irfuse-opt) the pass fuses. A signature with dynamic dims comes with `examples`, the
same signature at concrete sizes to time it at: the pipeline also installs what turns
the operands' symbolic shapes into such sizes (`example_shapes`; from the trace).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Protocol

from xdsl.ir import SSAValue

from irfuse.frontend.size_examples import Shape


class Chooser(Protocol):
    def __call__(
        self, kind: str, signature: dict[str, object], examples: list[dict[str, object]]
    ) -> tuple[bool, str]:
        """(fuse?, why) for a fusion of `kind` on operands described by `signature`;
        `examples` holds it at concrete sizes when it has dynamic dims ([]: unknown)."""
        ...


class ShapeExamples(Protocol):
    def __call__(self, values: Sequence[SSAValue | None]) -> list[list[Shape | None]]:
        """The shapes of `values` at each size a choice is timed at, consistent across the
        values (irfuse/frontend/size_examples.py); [] when unknown."""
        ...


_CURRENT: contextvars.ContextVar[tuple[Chooser, ShapeExamples] | None] = contextvars.ContextVar(
    "irfuse_chooser", default=None
)


@contextlib.contextmanager
def install(chooser: Chooser, shape_examples: ShapeExamples) -> Iterator[None]:
    token = _CURRENT.set((chooser, shape_examples))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def choose(
    kind: str, signature: dict[str, object], examples: list[dict[str, object]]
) -> tuple[bool, str]:
    current = _CURRENT.get()
    if current is None:
        return True, "no chooser installed"
    chooser, _ = current
    return chooser(kind, signature, examples)


def example_shapes(values: Sequence[SSAValue | None]) -> list[list[Shape | None]]:
    current = _CURRENT.get()
    if current is None:
        return []
    _, shape_examples = current
    return shape_examples(values)
