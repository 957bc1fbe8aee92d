"""IR dumps: per graph, the imported IR, the IR after each pass that changed it, the
generated Triton sources and report.json (the same content as `irfuse.explain`)."""

from __future__ import annotations

import io
import itertools
import json
import os
from pathlib import Path

from xdsl.dialects.builtin import ModuleOp
from xdsl.printer import Printer

from irfuse.transforms.report import FusionReport

_GRAPH_IDS = itertools.count()


def ir_text(module: ModuleOp) -> str:
    """The module in xDSL's custom syntax (what irfuse-opt parses)."""
    stream = io.StringIO()
    Printer(stream=stream).print_op(module)
    return stream.getvalue() + "\n"


class GraphDump:
    """Writes the files of one graph under `<dump_dir>/graph_<pid>_<n>/`, a directory of
    its own (n counts on past those an earlier run with this pid left)."""

    def __init__(self, dump_dir: str) -> None:
        Path(dump_dir).mkdir(parents=True, exist_ok=True)
        while True:  # a new directory: an earlier run may have had this pid (containers)
            self.path = Path(dump_dir) / f"graph_{os.getpid()}_{next(_GRAPH_IDS)}"
            try:
                self.path.mkdir()
                break
            except FileExistsError:
                continue
        self._step = 0

    def module(self, label: str, module: ModuleOp) -> None:
        (self.path / f"{self._step:02d}-{label}.mlir").write_text(ir_text(module))
        self._step += 1

    def source(self, name: str, text: str) -> None:
        (self.path / f"{name}.py").write_text(text)

    def report(self, report: FusionReport) -> None:
        (self.path / "report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
