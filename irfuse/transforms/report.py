"""What fused and what was refused, and why: filled by the patterns while a pass runs.

Patterns call `fused(...)`, `rejected(...)` and `note(...)`; outside `collect()` (e.g. in
irfuse-opt) these are no-ops. Rejections are recorded once per (pass, location, reason)
since the greedy driver may visit an op several times.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from xdsl.ir import Operation

if TYPE_CHECKING:
    import torch.fx as fx


@dataclass
class FusionReport:
    fused: Counter[str] = field(default_factory=Counter)
    rejected: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kernels: list[str] = field(default_factory=list)
    launches: list[str] = field(default_factory=list)  # how each norm kernel launches

    def merge(self, other: FusionReport) -> None:
        self.fused.update(other.fused)
        for item in other.rejected:
            if item not in self.rejected:
                self.rejected.append(item)
        self.notes.extend(other.notes)
        self.kernels.extend(other.kernels)
        self.launches.extend(other.launches)

    def to_json(self) -> dict[str, object]:
        return {
            "fused": dict(self.fused),
            "rejected": list(self.rejected),
            "notes": list(self.notes),
            "kernels": list(self.kernels),
            "launches": list(self.launches),
        }

    def __str__(self) -> str:
        lines = ["irfuse fusion report"]
        lines += [f"  fused    {name}: {count}" for name, count in sorted(self.fused.items())]
        if not self.fused:
            lines.append("  fused    nothing")
        lines += self._rejections()
        lines += [f"  note     {note}" for note in self.notes]
        lines += [f"  launch   {launch}" for launch in self.launches]
        return "\n".join(lines)

    def _rejections(self) -> list[str]:
        """A line per refusal; one refusal at several places (a model's layers) as one
        line and its places below it (the first SHOWN_PLACES)."""
        places: dict[tuple[str, str], list[str]] = {}
        for item in self.rejected:
            places.setdefault((item["pass"], item["reason"]), []).append(item["at"])
        lines = []
        for (pass_name, reason), where in places.items():
            if len(where) == 1:
                lines.append(f"  rejected {pass_name} at {where[0]}: {reason}")
                continue
            lines.append(f"  rejected {pass_name} at {len(where)} places: {reason}")
            lines += [f"             at {place}" for place in where[:SHOWN_PLACES]]
            if len(where) > SHOWN_PLACES:
                lines.append(f"             and {len(where) - SHOWN_PLACES} more")
        return lines


SHOWN_PLACES = 4

_CURRENT: contextvars.ContextVar[FusionReport | None] = contextvars.ContextVar(
    "irfuse_report", default=None
)


@contextlib.contextmanager
def collect(report: FusionReport) -> Iterator[FusionReport]:
    token = _CURRENT.set(report)
    try:
        yield report
    finally:
        _CURRENT.reset(token)


# The FX node the importer made each op of (an op a pass built has none): its name (xDSL
# drops a name hint's `_N` suffix), module path and source line, formatted only for the
# ops a refusal names.
_SOURCES: weakref.WeakKeyDictionary[Operation, fx.Node] = weakref.WeakKeyDictionary()


def set_source(op: Operation, node: fx.Node) -> None:
    _SOURCES[op] = node


# the root: a local (`L['self']`), or an item of one (`L['args'][0]`: transformers 5 wraps
# forward as (self, *args, **kwargs))
_MODULE_ROOT = re.compile(r"^L\['(?:args'\]\[\d+\]|[^']*'\])\.?")
_SUBMODULE = re.compile(r"\._modules\['([^']*)'\]|\[(\d+)\]|\['([^']*)'\]")
_SOURCE_LINE = re.compile(r'File "([^"]+)", line (\d+)')


def module_path(source: str) -> str:
    """`L['self'].layers[0].mlp`, `L['self']._modules['layers']._modules['0']` or
    `L['args'][0].layers[0].mlp` (dynamo's module sources) as `layers.0.mlp`."""
    path = _MODULE_ROOT.sub(".", source)
    path = _SUBMODULE.sub(lambda m: "." + next(g for g in m.groups() if g is not None), path)
    return path.lstrip(".")


def place(node: fx.Node) -> str:
    """`%name in <module path> (<file>:<line>)`: where a report points a user, from the
    node's module stack and stack trace (each where known)."""
    where = []
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = module_path(str(list(stack.values())[-1][0]))
        where.append(f"in {path or 'the model'}")
    lines = _SOURCE_LINE.findall(node.meta.get("stack_trace") or "")
    if lines:
        file, line = lines[-1]
        where.append(f"({os.path.basename(file)}:{line})")
    return " ".join([f"%{node.name}", *where])


def location(op: Operation) -> str:
    """A readable place for an op: where the importer found it, else its first result's
    name, else its op name."""
    if (node := _SOURCES.get(op)) is not None:
        return place(node)
    for result in op.results:
        if result.name_hint:
            return f"%{result.name_hint}"
    return op.name


def fused(pass_name: str) -> None:
    report = _CURRENT.get()
    if report is not None:
        report.fused[pass_name] += 1


def note(text: str) -> None:
    """A note for the report, once (say, why a measured choice fused)."""
    report = _CURRENT.get()
    if report is not None and text not in report.notes:
        report.notes.append(text)


def rejected(pass_name: str, op: Operation, reason: str) -> None:
    report = _CURRENT.get()
    if report is None:
        return
    item = {"pass": pass_name, "at": location(op), "reason": reason}
    if item not in report.rejected:
        report.rejected.append(item)
