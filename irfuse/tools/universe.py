"""The xdsl.universe entry point: stock `xdsl-opt` sees irfuse's dialects, passes and
the `triton` target. Everything is a lazy factory, so discovery imports nothing heavy."""

from __future__ import annotations

from xdsl.ir import Dialect
from xdsl.universe import Universe
from xdsl.utils.target import Target

from irfuse.transforms import PASSES


def _irfuse_dialect() -> Dialect:
    from irfuse.dialects.irfuse import Irfuse

    return Irfuse


def _aten_dialect() -> Dialect:
    from irfuse.dialects.aten import Aten

    return Aten


def _triton_target() -> type[Target]:
    from irfuse.tools.triton_target import TritonTarget

    return TritonTarget


IRFUSE_UNIVERSE = Universe(
    all_dialects={"irfuse": _irfuse_dialect, "aten": _aten_dialect},
    all_passes=dict(PASSES),
    all_targets={"triton": _triton_target},
)
