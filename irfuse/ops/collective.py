"""Collective reference ops (see shared/NUMERICS.md, "Collectives")."""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES, check_tensor


def _check_all_reduce(x: torch.Tensor, group_name: str) -> None:
    check_tensor("all_reduce", "x", x, dtypes=FLOAT_DTYPES)
    if not isinstance(group_name, str):
        raise TypeError(f"irfuse.all_reduce: group_name must be a str, got {group_name!r}")


@torch.library.custom_op("irfuse::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    """Sum of x over the ranks of the group, accumulated in fp32, result in x's dtype.

    Without an initialized process group (or with a group of one rank) returns a copy of x.
    """
    _check_all_reduce(x, group_name)
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return x.clone(memory_format=torch.contiguous_format)
    group = dist.distributed_c10d._resolve_process_group(group_name)
    if dist.get_world_size(group) == 1:
        return x.clone(memory_format=torch.contiguous_format)
    acc = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    dist.all_reduce(acc, op=dist.ReduceOp.SUM, group=group)
    return acc.to(x.dtype).contiguous()


@all_reduce.register_fake
def _(x: torch.Tensor, group_name: str) -> torch.Tensor:
    _check_all_reduce(x, group_name)
    return torch.empty_like(x, memory_format=torch.contiguous_format)
