"""Registration of the runtime ops that exported graphs call (torch.ops.irfuse.kernel_*).

They are defined on a `torch.library.Library` with one implementation for every device
(CompositeExplicitAutograd): a call costs one dispatcher hop. `torch.library.custom_op`
wraps its implementation in Python layers that cost ~46 us of host time per call on the
H200 machine (bench/RESULTS.md, fifteenth session), more than the kernels of a decode
step take on the GPU. The schema is inferred from the function's type hints, as
custom_op does; the fake (meta) implementation is registered with
`torch.library.register_fake`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

_LIB = torch.library.Library("irfuse", "FRAGMENT")  # noqa: TOR901 (kept for the process)

F = TypeVar("F", bound=Callable)


def runtime_op(name: str) -> Callable[[F], F]:
    """Define `irfuse::<name>` from the decorated function (which stays a plain Python
    function, callable without the dispatcher)."""

    def define(fn: F) -> F:
        schema = torch.library.infer_schema(fn, mutates_args=())
        _LIB.define(name + schema, tags=(torch.Tag.pt2_compliant_tag,))
        _LIB.impl(name, fn, "CompositeExplicitAutograd")
        return fn

    return define
