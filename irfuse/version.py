"""irfuse's version and the digest of its source (parts of every cache key)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def source_hash() -> str:
    """Of every Python file of the package: what a graph in Inductor's cache was compiled
    with (its passes decide what fuses, its lowering what the graph launches). The
    version alone does not follow a working tree's edits."""
    return tree_hash(Path(__file__).parent)


def tree_hash(package: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
