"""Benchmark harness: candidates timed side by side in one process, alternating over
rounds under CUDA graphs (ANCHORS.md), medians reported, tables appended to RESULTS.md."""

from __future__ import annotations

import datetime
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import triton
import triton.testing

RESULTS = Path(__file__).parent / "RESULTS.md"


def time_us(fn: Callable[[], object]) -> float:
    """One timing of `fn` in microseconds, replayed from a CUDA graph."""
    return triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3


def compare(candidates: dict[str, Callable[[], object]], rounds: int = 5) -> dict[str, float]:
    """Median time (us) of each candidate, alternating candidates round by round."""
    for fn in candidates.values():  # warm up (compiles, autotunes) outside the timing
        fn()
    torch.cuda.synchronize()
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            samples[name].append(time_us(fn))
    return {name: statistics.median(times) for name, times in samples.items()}


def environment() -> str:
    return (
        f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
        f"Triton {triton.__version__}, {datetime.date.today().isoformat()}"
    )


def append_results(
    title: str,
    header: list[str],
    rows: list[list[str]],
    notes: str = "",
    raw: object = None,
    json_path: Path | None = None,
) -> str:
    lines = [f"## {title}", "", f"{environment()}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n\n"
    with RESULTS.open("a") as f:
        f.write(text)
    if json_path is not None:
        json_path.write_text(json.dumps({"env": environment(), "results": raw}, indent=2))
    return text
