"""Compile-once cache of generated Triton kernels.

A kernel's source is written to `<cache>/<name>_<key>.py`, where the key hashes the
source, the Triton version and irfuse's version, and imported from there (Triton reads
a kernel's source from its file). Set `IRFUSE_CACHE_DIR` to move the cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import triton

from irfuse.version import __version__

_LOADED: dict[str, Any] = {}


@functools.cache
def kernels_hash() -> str:
    """Of the kernels' source and launch code (irfuse/kernels, irfuse/lowering): what a
    measured decision and a graph in Inductor's cache (whose wrapper holds the source of
    the kernels it launches) were made with. irfuse's version alone does not follow a
    working tree's edits."""
    package = Path(__file__).parent.parent
    files = sorted((*(package / "kernels").glob("*.py"), *(package / "lowering").glob("*.py")))
    text = "".join(path.read_text() for path in files)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """IRFUSE_CACHE_DIR (`~` expanded; unset or empty: ~/.cache/irfuse/kernels)."""
    default = Path.home() / ".cache" / "irfuse" / "kernels"
    path = Path(os.environ.get("IRFUSE_CACHE_DIR") or default).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def kernel_key(source: str) -> str:
    text = f"{source}\0triton {triton.__version__}\0irfuse {__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _file_mode() -> int:
    """The mode a new file gets under the process's umask (read without changing it)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def write_atomically(path: Path, text: str) -> None:
    """Writes `text` to `path` through a temporary file beside it: concurrent processes
    never see half a file. The file gets the umask's mode, as a plain write would (the
    temporary file is the owner's only): a cache dir may be shared."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.chmod(f.name, _FILE_MODE)
    os.replace(f.name, path)


def _holds(path: Path, source: str) -> bool:
    """Whether `path` holds exactly `source` (a missing, unreadable or corrupt file does
    not: it is written anew)."""
    try:
        return path.read_bytes() == source.encode()
    except OSError:
        return False


def load_kernel(name: str, source: str) -> Any:
    """The `@triton.jit` function `name` defined by `source` (written and imported once)."""
    key = kernel_key(source)
    if key in _LOADED:
        return _LOADED[key]
    path = cache_dir() / f"{name}_{key}.py"
    if not _holds(path, source):
        write_atomically(path, source)
    spec = importlib.util.spec_from_file_location(f"irfuse_kernels.{name}_{key}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _LOADED[key] = getattr(module, name)
    return _LOADED[key]
