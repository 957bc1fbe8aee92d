"""Fusion choices that are settled by measurement, not by structure.

A pass asks `choose(kind, signature)` before a fusion that is not always a win (the
fused attention + quant against the graph's own SDPA + quant). The pipeline installs a
chooser (irfuse/lowering/autotune.py) for the graph it compiles; without one (irfuse-opt)
the pass fuses.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol


class Chooser(Protocol):
    def __call__(self, kind: str, signature: dict[str, object]) -> tuple[bool, str]:
        """(fuse?, why) for a fusion of `kind` on operands described by `signature`."""
        ...


_CURRENT: contextvars.ContextVar[Chooser | None] = contextvars.ContextVar(
    "irfuse_chooser", default=None
)


@contextlib.contextmanager
def install(chooser: Chooser) -> Iterator[None]:
    token = _CURRENT.set(chooser)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def choose(kind: str, signature: dict[str, object]) -> tuple[bool, str]:
    chooser = _CURRENT.get()
    return (True, "no chooser installed") if chooser is None else chooser(kind, signature)
