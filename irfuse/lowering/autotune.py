"""The `attention` option's chooser: fused Triton attention + quant, or the graph's own
SDPA + quant, decided per shape class by timing both on the GPU at compile time.

`auto` (default) measures on CUDA, caches the decision per signature for the process,
and never fuses what it cannot measure; off the GPU it fuses (the interpreter runs the
kernels for testing). `irfuse` always fuses, `sdpa` never. A graph with dynamic dims
serves every size: `auto` times it at the sizes it was traced with and at twice them
(irfuse/frontend/size_examples.py) and fuses only if the fused kernel wins at each.
Where the host pays the fused kernel's runtime op on every call (no CUDA graphs, and no
launch from Inductor's wrapper: `host_pays`), each candidate counts the longer of its
GPU time and its time per call launched back to back.

Measured decisions persist in `attention_auto.json` in irfuse's cache directory
(`IRFUSE_CACHE_DIR`), keyed by GPU, versions, the kernels' code and the shape
class: a later process reuses them without timing. The file carries a token made with
it, which the pass's uuid includes, so Inductor's FX graph cache stays on: a cached
graph replays the decisions of the file it was compiled with, and deleting the file (to
time again) changes every key. The first process to decide a shape class wins; its
decision is then every process's.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import triton
from torch._subclasses.fake_tensor import unset_fake_temporarily
from triton.errors import TritonError

from irfuse.kernels.attention import uses_decode
from irfuse.lowering.kernel_cache import cache_dir, kernels_hash, write_atomically
from irfuse.lowering.kernel_spec import KernelSpec
from irfuse.lowering.runtime import INTERPRET
from irfuse.transforms.policy import Chooser
from irfuse.version import __version__

DYNAMIC = -(2**63)  # a dynamic dim in the signature (the dialect's `?`)

_DECISIONS: dict[tuple, tuple[bool, str]] = {}
MARGIN = 0.97  # timings of +-3% are noise between rounds (ANCHORS.md)
DECISIONS_FILE = "attention_auto.json"
# Only a direct irfuse.attention call has a bottom-right causal mask: unfused, it runs
# irfuse's kernel then the quant, which the fused kernel runs as its epilogue.
BOTTOM_RIGHT = "attention=auto: a bottom-right causal attention runs irfuse's kernel either way"


def attention_chooser(mode: str, cuda_graphs: bool = False, graph_launch: str = "off") -> Chooser:
    """The chooser for the `attention` option `mode`. `cuda_graphs` (Inductor's, under
    mode="reduce-overhead") and `graph_launch` (Options.graph_launch where Inductor
    compiles, else "off") say whether the host pays the fused kernel's runtime op on
    every call, which `auto` then counts (`host_pays`)."""

    def choose(
        kind: str, signature: dict[str, object], examples: list[dict[str, object]]
    ) -> tuple[bool, str]:
        if mode == "irfuse":
            return True, "attention=irfuse"
        if mode == "sdpa":
            return False, "attention=sdpa keeps the graph's SDPA + quant"
        if not can_measure():
            return INTERPRET, "attention=auto off the GPU: fused only under the interpreter"
        if signature["dtype"] == "float32":
            return False, "attention=auto: fp32 on the GPU would run the reference ops: SDPA kept"
        if signature["causal"] == "bottom_right":  # SDPA's is_causal is top-left
            return True, BOTTOM_RIGHT
        dynamic = [k for k, v in signature.items() if _dynamic(v)]
        if dynamic and not examples:
            return False, "attention=auto has no sizes to time the dynamic shapes at: SDPA kept"
        points = examples if dynamic else [signature]
        host = host_pays(signature, bool(dynamic), cuda_graphs, graph_launch)
        key = (kind, *sorted(signature.items()), *(tuple(sorted(p.items())) for p in points))
        key += (("host pays its launches", host),) if host else ()
        if key not in _DECISIONS:
            _DECISIONS[key] = _kept_or_decided(
                key, lambda: _decide(kind.split("+")[1], points, dynamic, host)
            )
        return _DECISIONS[key]

    return choose


def host_pays(
    signature: dict[str, object], dynamic: bool, cuda_graphs: bool, graph_launch: str
) -> bool:
    """Whether each call of the fused attention costs the host its runtime op
    (kernel_attention: the dispatcher, its Python, two Triton launches; 100-300 us on
    the H200 machine, bench/RESULTS.md), which a decode's few us of GPU work cannot hide:
    unless CUDA graphs replay the calls, or Inductor's wrapper launches the kernels
    itself (graph_launch="all": a decode at static shapes)."""
    if cuda_graphs:
        return False
    shape = [int(signature[k]) for k in ("seq_q", "heads_q", "heads_kv")]  # type: ignore[call-overload]
    return not (graph_launch == "all" and not dynamic and uses_decode(*shape))


def _kept_or_decided(key: tuple, decide: Callable[[], tuple[bool, str, bool]]) -> tuple[bool, str]:
    """The decision kept in the decisions file for `key` (on this GPU, with these
    versions), else `decide()`'s (fuse?, why, keep?), which is kept there if it says so,
    unless another process kept one first (then that one, so that every process agrees)."""
    entry = json.dumps([_device_name(), torch.__version__, triton.__version__, __version__,
                        kernels_hash(), *key])  # fmt: skip
    kept = _kept(entry)
    if kept is None:
        fuse, reason, keep = decide()
        if not keep:  # nor by Inductor's cache of this graph: a new token misses it
            _renew_token()
            return fuse, reason
        with _locked():  # processes that timed at once (tensor-parallel ranks) agree
            store = _read_decisions() or {"token": uuid.uuid4().hex, "decisions": {}}
            kept = _kept(entry, store)
            if kept is None:
                kept = store["decisions"][entry] = [fuse, reason]
                _write_decisions(store)
        if kept == [fuse, reason]:
            return fuse, reason
    return bool(kept[0]), f"{kept[1]} (kept in {_decisions_path()}; delete it to time again)"


def _renew_token() -> None:
    """Gives the decisions file a new token: the graphs compiled under the old one (the
    pass's uuid carries it) miss Inductor's cache, so a decision made but not kept (a
    timing that failed, a size that did not fit) is made again by the next process."""
    with _locked():
        store = _read_decisions() or {"decisions": {}}
        store["token"] = uuid.uuid4().hex
        _write_decisions(store)


def _kept(entry: str, store: dict | None = None) -> list | None:
    """The [fuse, why] kept for `entry`, if in that form (an edited file may hold other
    things: the entry is then decided again and replaced)."""
    kept = (store or _read_decisions() or {}).get("decisions", {}).get(entry)
    valid = (
        isinstance(kept, list)
        and len(kept) == 2
        and isinstance(kept[0], bool)
        and isinstance(kept[1], str)
    )
    return kept if valid else None


def decisions_token() -> str | None:
    """The token of the decisions file (made with it), for the pass's uuid: it changes
    only when the file is made anew. None where the file cannot be written."""
    with _locked():
        store = _read_decisions()
        if store is None:
            store = {"token": uuid.uuid4().hex, "decisions": {}}
            if not _write_decisions(store):
                return None
    return str(store["token"])


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Holds the decisions file's lock (a file beside it) for a read-modify-write; no
    lock where it cannot be taken (the write itself stays atomic)."""
    try:
        import fcntl

        lock = open(f"{_decisions_path()}.lock", "w")  # noqa: SIM115 (closed below)
    except (ImportError, OSError):
        yield
        return
    with lock:
        with contextlib.suppress(OSError):  # a file system without locks: left unlocked
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _decisions_path() -> Path:
    return cache_dir() / DECISIONS_FILE


def _read_decisions() -> dict | None:
    """{"token": str, "decisions": {entry: [fuse, reason]}}, or None (no file, unreadable,
    or not in that form: it is then made anew)."""
    try:
        store = json.loads(_decisions_path().read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(store, dict) and isinstance(store.get("token"), str)
            and isinstance(store.get("decisions"), dict)):  # fmt: skip
        return None
    return store


def _write_decisions(store: dict) -> bool:
    try:
        write_atomically(_decisions_path(), json.dumps(store, indent=1, sort_keys=True))
    except OSError:
        return False
    return True


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def can_measure() -> bool:
    return torch.cuda.is_available()


def _decide(
    scheme: str, points: list[dict[str, object]], dynamic: list[str], host: bool = False
) -> tuple[bool, str, bool]:
    """Fuse only where the fused kernel clearly wins at every point that fits in memory;
    with `host` (host_pays), each candidate costs the longer of its GPU time and its time
    per call launched back to back (the host's). (fuse?, why, keep?): a decision is kept
    for later processes only if every point was timed (free memory, and so what fits or
    fails, varies from run to run)."""
    sized = " (dynamic shapes, at the traced sizes and twice them)" if dynamic else ""
    timed = []
    for point in filter(_fits, points):
        at = ", ".join(f"{k} {point[k]}" for k in dynamic if k != "mask")
        try:
            # real tensors even where the pass runs under the compiler's fake mode (AOT
            # autograd's forward compiler, the eager inner path, keeps it active)
            with unset_fake_temporarily():
                gpu = time_candidates(scheme, point)
                calls = time_calls(scheme, point) if host else (0.0, 0.0)
        # out of memory, a grid too large, Triton's own (out of shared memory, ptxas)
        except (RuntimeError, ValueError, TritonError) as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            return False, f"attention=auto could not time{sized} {at or 'it'}: {first_line}", False
        times = (max(gpu[0], calls[0]), max(gpu[1], calls[1]))
        timed.append((point, at, times, calls[0] > gpu[0] or calls[1] > gpu[1]))
    if not timed:
        return False, "attention=auto: no size to time fits in GPU memory: SDPA kept", False
    fuse = all(ours < fuse_margin(point) * theirs for point, _, (ours, theirs), _ in timed)
    measured = "; ".join(
        f"{at + ': ' if at else ''}fused {ours:.1f} us vs SDPA + quant {theirs:.1f} us"
        + (" per call, the host's launches counted (no CUDA graphs)" if host_bound else "")
        for _, at, (ours, theirs), host_bound in timed
    )
    return fuse, f"attention=auto measured{sized} {measured}", len(timed) == len(points)


def _fits(sig: dict[str, object]) -> bool:
    """Whether q, k, v and the output take at most a quarter of the free GPU memory."""
    b, hq, hkv, sq, skv, d, dv = _dims(sig)
    elements = b * (hq * sq * (d + dv) + hkv * skv * (d + dv))
    return elements * getattr(torch, str(sig["dtype"])).itemsize * 4 <= _free_memory()


def _free_memory() -> int:
    return torch.cuda.mem_get_info()[0]


def _dims(sig: dict[str, object]) -> tuple[int, ...]:
    return tuple(
        int(sig[k])  # type: ignore[call-overload]
        for k in ("batch", "heads_q", "heads_kv", "seq_q", "seq_kv", "head_dim", "head_dim_v")
    )


def _dynamic(value: object) -> bool:
    """A dynamic dim, or a shape string with one ("bool 1x?x8x8")."""
    if isinstance(value, str):
        return "?" in value
    return not isinstance(value, (int, float)) or value == DYNAMIC


def _example_mask(text: str) -> torch.Tensor | None:
    """A mask like the signature's ("none", or "<dtype> <d0>x<d1>..."): keep-all bool or a
    zero bias (SDPA's time does not depend on its values; see `fuse_margin` for ours)."""
    if text == "none":
        return None
    dtype_name, _, dims = text.partition(" ")
    shape = [int(d) for d in dims.split("x") if d]  # "" for a 0-d mask
    dtype = getattr(torch, dtype_name)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype, device="cuda")
    return torch.zeros(shape, dtype=dtype, device="cuda")


def _candidates(scheme: str, sig: dict[str, object]) -> dict[str, Callable[[], object]]:
    """The calls `auto` times on inputs of the signature `sig`: the fused kernel, SDPA then
    a `scheme` quant pass over its output viewed as [B*S, H*D] (irfuse's standalone quant
    kernel, what the graph runs when it keeps SDPA), and SDPA alone. q is laid out as a
    model's projection leaves it ([B, S, H, D] memory, transposed), so SDPA's output
    views as [B*S, H*D] without a copy: a graph that hands SDPA other layouts pays more
    for its unfused quant than measured here, never less, so the choice errs towards
    SDPA. K and V as a KV cache holds them ([B, H, S, D] memory: HF's caches, whose
    DynamicCache copies a prefill's too; their layout does not move SDPA's output's),
    with the kv heads the fused kernel reads (unrepeated), which SDPA takes with
    enable_gqa: a graph that repeats them first (repeat_kv) also pays for that copy.
    Calls rotate over copies of q, k, v (example_inputs): each layer reads its own."""
    import torch.nn.functional as F

    from irfuse.lowering.attention import kernel_attention
    from irfuse.lowering.runtime import kernel_norm

    b, hq, hkv, sq, skv, d, dv = _dims(sig)
    causal, sm_scale = str(sig["causal"]), float(sig["scale"])  # type: ignore[arg-type]
    inputs = example_inputs(sig)
    scale = torch.ones(1, device="cuda") if scheme in ("static", "static div", "nvfp4") else None
    mask = _example_mask(str(sig.get("mask", "none")))
    quant_kernel = KernelSpec("quant", quant=scheme).encode()

    def fused() -> object:
        q, k, v = next(inputs)
        return kernel_attention(q, k, v, scale, sm_scale, causal, "bs_hd", False, scheme, mask)

    def sdpa() -> torch.Tensor:
        q, k, v = next(inputs)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=causal == "top_left",
            scale=sm_scale,
            enable_gqa=hq != hkv,
        )

    def sdpa_then_quant() -> object:
        rows = sdpa().transpose(1, 2).reshape(b * sq, hq * dv)
        return kernel_norm(rows, None, None, scale, 0.0, quant_kernel)

    return {"fused": fused, "sdpa": sdpa_then_quant, "sdpa alone": sdpa}


# Timed calls rotate over copies of q, k, v that together take at least this many times
# the L2, so that each reads them from memory (replayed on one set, a decode's K and V of a
# few MB stay in L2 and the unfused path's extra launch weighs more than it does in a
# model); at most INPUT_COPIES copies, and a quarter of the free memory.
L2_PASSES, INPUT_COPIES = 3, 256


def example_inputs(sig: dict[str, object]) -> Iterator[tuple[torch.Tensor, ...]]:
    """q, k, v of the signature, laid out as _candidates says, cycling over copies."""
    b, hq, hkv, sq, skv, d, dv = _dims(sig)
    dtype = getattr(torch, str(sig["dtype"]))

    def one_set() -> tuple[torch.Tensor, ...]:
        q = torch.randn(b, sq, hq, d, device="cuda", dtype=dtype).transpose(1, 2)
        k = torch.randn(b, hkv, skv, d, device="cuda", dtype=dtype)
        v = torch.randn(b, hkv, skv, dv, device="cuda", dtype=dtype)
        return q, k, v

    first = one_set()
    bytes_per_set = max(1, sum(t.numel() * t.element_size() for t in first))  # (batch 0)
    l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    wanted = -(-L2_PASSES * l2 // bytes_per_set)
    copies = max(1, min(INPUT_COPIES, wanted, _free_memory() // 4 // bytes_per_set))
    return itertools.cycle([first] + [one_set() for _ in range(copies - 1)])


def time_candidates(scheme: str, sig: dict[str, object]) -> tuple[float, float]:
    """(fused, SDPA + quant) GPU times in us (_candidates). The two run back to back in
    one timing, as in the model, so the quant finds part of SDPA's output in L2 (timed
    alone, its input stays in L2 between replays and it looks cheaper than it is)."""
    import triton.testing

    candidates = _candidates(scheme, sig)
    times: dict[str, float] = {}
    for _ in range(3):  # alternate the candidates; keep each one's best
        for name in ("fused", "sdpa"):
            # under CUDA graphs, as the compiled model runs: no launch overhead counted
            t = triton.testing.do_bench_cudagraph(candidates[name], rep=20)
            times[name] = min(times.get(name, t), t)
    return times["fused"] * 1e3, times["sdpa"] * 1e3


def time_calls(scheme: str, sig: dict[str, object], calls: int = 100) -> tuple[float, float]:
    """(fused, SDPA) in us per call launched back to back without CUDA graphs: the
    longer of the host's time per call and the GPU's. The fused kernel through its
    runtime op, as the graph calls it; SDPA alone, as Inductor's wrapper calls it (the
    quant kernel it launches after adds little host time; through kernel_norm here it
    would add the runtime op's)."""
    candidates = _candidates(scheme, sig)
    times: dict[str, float] = {}
    for _ in range(3):
        for name in ("fused", "sdpa alone"):
            fn = candidates[name]
            fn()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            t = (time.perf_counter() - start) * 1e6 / calls
            times[name] = min(times.get(name, t), t)
    return times["fused"], times["sdpa alone"]


def fuse_margin(sig: dict[str, object]) -> float:
    """How much faster than SDPA + quant the fused kernel must measure to be chosen: a
    clear win (MARGIN), except for a decode with a mask, where within noise is enough.
    The decode visits only the key tiles some row sees (its mask summary), so the
    keep-all example is its slowest case, while SDPA's masked backend reads every key of
    any mask: at worst the fused kernel is slower by noise (3%), and every hidden key
    (left padding, the unfilled part of a static cache) is its gain (H200: 2.0x-2.5x SDPA
    on a static cache 31% full, bench/RESULTS.md). The prefill's mixed tiles cost more
    than keep-all's full ones, so it keeps the margin."""
    shape = [sig[k] for k in ("seq_q", "heads_q", "heads_kv")]
    if sig.get("mask", "none") != "none" and uses_decode(*map(int, shape)):  # type: ignore[arg-type]
        return 1 / MARGIN
    return MARGIN
