"""Concrete sizes for a graph traced with symbolic ones, for choices settled by timing.

A graph compiled with dynamic dims serves every size, so a measured choice (the
`attention` option's `auto`) times it at a few: the sizes it was traced with (each
symbol's hint) and those with every symbol doubled (a longer KV cache, a larger batch).
Sizes are assigned per symbol, so the shapes of one example agree with each other (a
mask's key count is the cache's).
"""

from __future__ import annotations

from collections.abc import Sequence

import sympy
import torch

Shape = tuple[int, ...]
SCALES = (1, 2)  # each symbol at its hint, then at twice it


def example_shapes(
    tensors: Sequence[torch.Tensor | None], scales: Sequence[int] = SCALES
) -> list[list[Shape | None]]:
    """For each of `scales`, the concrete shape of every tensor (None stays None) with
    each size symbol at scale x its hint; [] when some symbol has no hint (an unbacked,
    data-dependent size) or a tensor is not a fake one of this trace."""
    exprs: list[list[sympy.Expr] | None] = []
    hints: dict[sympy.Symbol, int] = {}
    for tensor in tensors:
        if tensor is None:
            exprs.append(None)
            continue
        if not isinstance(tensor, torch.Tensor):
            return []
        shape = []
        for size in tensor.shape:
            expr = size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(size)
            for symbol in expr.free_symbols:
                hint = _hint(size, symbol)
                if hint is None:
                    return []
                hints[symbol] = hint
            shape.append(expr)
        exprs.append(shape)
    examples = []
    for scale in scales:
        values = {symbol: hint * scale for symbol, hint in hints.items()}
        examples.append(
            [None if s is None else tuple(int(e.xreplace(values)) for e in s) for s in exprs]
        )
    return examples


def _hint(size: torch.SymInt | int, symbol: sympy.Symbol) -> int | None:
    shape_env = size.node.shape_env  # type: ignore[union-attr]
    # renamed from var_to_val in newer torch; both hold backed symbols only
    backed = getattr(shape_env, "backed_var_to_val", None)
    backed = shape_env.var_to_val if backed is None else backed
    value = backed.get(symbol)
    return None if value is None else int(value)
