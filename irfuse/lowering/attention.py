"""irfuse.attention -> generated Triton attention kernels, and their runtime op.

`torch.ops.irfuse.kernel_attention` runs the prefill flash-attention forward, or, for a
few query rows per kv head (decode), the split-KV kernel and its combine, of
irfuse/kernels/attention.py, ending with an epilogue (a quant scheme, see EPILOGUES) and
writing [B, Hq, Sq, Dv] or [B, Sq, Hq*Dv]. Per call it checks shapes, dtypes and devices
only (no host sync), so it runs inside CUDA graphs. The decode's launches and those of a
mask's summary are also described as KernelLaunches (decode_launches,
mask_tiles_launches), which graph_launch="all" writes into the graph for Inductor's
wrapper to make (graph_launches, summary_graph_launches; irfuse/lowering/graph_launch.py).
"""

from __future__ import annotations

import functools
import textwrap
from typing import Any

import torch
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from irfuse.kernels import attention as pieces
from irfuse.kernels import attention_gluon as gluon_pieces
from irfuse.kernels import quant as quant_pieces
from irfuse.kernels.attention import (
    DECODE_MAX_ROWS,
    DECODE_ONLY,
    EPILOGUES,
    HEAD_DIM_RULE,
    MAX_GRID_X,
    MAX_GRID_YZ,
    NEGATIVE_SCALE,
    takes_head_dim,
    uses_decode,
)
from irfuse.kernels.norm import MAX_COLS, ROUND_TO, conversions_in
from irfuse.lowering import attention_gluon
from irfuse.lowering.graph_launch import COPIED, KernelLaunch
from irfuse.lowering.kernel_cache import load_kernel
from irfuse.lowering.registration import runtime_op
from irfuse.lowering.runtime import (
    FP8,
    INTERPRET,
    cdiv,
    launch_config,
    next_power_of_2,
    shared_memory_limit,
    sm_count,
    tma_ok,
)
from irfuse.ops._checks import FLOAT_DTYPES, broadcasts_to
from irfuse.ops.attention import attention as ref_attention
from irfuse.ops.quant import (
    alloc_nvfp4_scales,
    nvfp4_quant,
    nvfp4_scales_padded,
    per_token_fp8_quant,
    per_token_fp8_quant_in_dtype,
    static_fp8_quant,
    static_fp8_quant_divided,
)

CAUSAL = {"none": 0, "top_left": 1, "bottom_right": 2}
_TL_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}
_SUFFIX = {"none": "", "static": "_static_fp8", "static div": "_static_div_fp8",
           "per_token": "_per_token_fp8", "per_token in_dtype": "_per_token_in_dtype_fp8",
           "nvfp4": "_nvfp4"}  # fmt: skip
_FUSES = {"none": "", "static": " + static fp8 quant",
          "static div": " + static fp8 quant (divided)", "per_token": " + per_token fp8 quant",
          "per_token in_dtype": " + per_token fp8 quant (scale in the output dtype)",
          "nvfp4": " + nvfp4 quant"}  # fmt: skip


def kernel_name(epilogue: str) -> str:
    """The name of an attention with `epilogue` (its kernels' sources, in dumps)."""
    return "irfuse_attention" + _SUFFIX[epilogue]


def _module(name: str, fuses: str, how: str, helpers: str, body: str,
            pieces_file: str = "attention.py", imports: str = "") -> str:  # fmt: skip
    return (
        f'"""irfuse generated kernel {name}.\n\nFuses: {fuses}.\n{how}; see '
        f'irfuse/kernels/{pieces_file}."""\n\nimport triton\nimport triton.language as tl\n'
        f"{imports}{ROUND_TO}{conversions_in(body)}{helpers}\n{body}"
    )


def prefill_name(epilogue: str, loads: str) -> str:
    return "irfuse_attention" + ("_tma" if loads == "tma" else "") + _SUFFIX[epilogue]


def _key_loop(stage: str, start: str, stop: str, loads: str, masked: bool) -> str:
    return pieces.KEY_LOOP.format(
        stage=stage, start=start, stop=stop, loads=pieces.KV_LOAD[(loads, masked)],
        softmax=pieces.MASKED_SOFTMAX if masked else pieces.FULL_SOFTMAX,
    )  # fmt: skip


def prefill_source(epilogue: str, loads: str = "pointer") -> str:
    """The prefill kernel; `loads`: "pointer" or "tma" (descriptors built on the host)."""
    if epilogue not in EPILOGUES or epilogue in DECODE_ONLY:
        raise ValueError(f"no prefill attention epilogue {epilogue!r}")
    # an explicit mask's mixed tiles before its full run: compiled out without a mask
    before = _key_loop("mixed mask tiles before the full ones: masked", "start",
                       "full_start", loads, True)  # fmt: skip
    loops = (
        "\n    if MASK != 0:" + textwrap.indent(before, "    ")
        + _key_loop("tiles every row sees in full: no masks", "full_start", "full_end",
                    loads, False)
        + _key_loop("diagonal, ragged-edge and mixed mask tiles: masked", "full_end", "end",
                    loads, True)
    )  # fmt: skip
    body = (
        pieces.PREFILL_SIGNATURE.format(name=prefill_name(epilogue, loads),
                                        head_cols=pieces.HEAD_COLS)
        + pieces.PREFILL_PRELOAD[epilogue] + pieces.Q_LOAD[loads] + pieces.SCORES_SETUP
        + pieces.PREFILL_SETUP
        + loops + pieces.PREFILL_FINISH + pieces.PREFILL_EPILOGUE[epilogue]
    )  # fmt: skip
    helpers = "" if epilogue == "none" else quant_pieces.epilogue(epilogue)[0]
    helpers += quant_pieces.RECIPROCAL_PAIR if epilogue == "static div" else ""
    how = "Flash-attention forward" + (", TMA loads" if loads == "tma" else "")
    return _module(prefill_name(epilogue, loads), "attention" + _FUSES[epilogue], how,
                   helpers, body)  # fmt: skip


def gluon_prefill_name(epilogue: str, consumers: int) -> str:
    return f"irfuse_attention_gluon_{consumers}wg" + _SUFFIX[epilogue]


def gluon_prefill_source(epilogue: str, consumers: int) -> str:
    """The sm_90 prefill in Gluon (irfuse/kernels/attention_gluon.py), its query rows
    split over `consumers` warp groups."""
    if epilogue not in gluon_pieces.EPILOGUES:
        raise ValueError(f"no Gluon prefill epilogue {epilogue!r}")
    preload, store = gluon_pieces.EPILOGUES[epilogue]
    names = attention_gluon.TMA_COPIES
    body = (
        gluon_pieces.HELPERS.format(**names)
        + gluon_pieces.CONSUMER.format(preload=preload, store=store, **names)
        + gluon_pieces.kernel(gluon_prefill_name(epilogue, consumers), consumers)
    )  # fmt: skip
    helpers = "" if epilogue == "none" else quant_pieces.epilogue(epilogue)[0]
    helpers += quant_pieces.RECIPROCAL_PAIR if epilogue == "static div" else ""
    how = ("Flash-attention forward for sm_90 in Gluon: QK waited alone, the softmax beside "
           f"P@V, {consumers} consumer warp groups and a TMA producer warp")  # fmt: skip
    return _module(gluon_prefill_name(epilogue, consumers), "attention" + _FUSES[epilogue], how,
                   helpers, body, "attention_gluon.py", gluon_pieces.HEADER)  # fmt: skip


MASK_FLAGS_NAME = "irfuse_attention_mask_tile_flags"
MASK_TILES_NAME = "irfuse_attention_mask_tiles"


def mask_tile_flags_source() -> str:
    return _module(MASK_FLAGS_NAME, "nothing (an explicit mask's flags per query block and key "
                   "tile)", "One tile of the mask per program", "",
                   pieces.MASK_TILE_FLAGS.format(name=MASK_FLAGS_NAME))  # fmt: skip


def mask_tiles_source() -> str:
    return _module(MASK_TILES_NAME, "nothing (an explicit mask's key-tile ranges per query "
                   "block, from its tile flags)", "One block of query rows per program", "",
                   pieces.MASK_TILES.format(name=MASK_TILES_NAME))  # fmt: skip


SPLIT_KV_NAME = "irfuse_attention_split_kv"


def split_kv_source() -> str:
    body = (
        pieces.SPLIT_KV_HEAD.format(
            name=SPLIT_KV_NAME, head_cols=pieces.HEAD_COLS, q_load=pieces.Q_ROWS_LOAD
        )
        + pieces.SCORES_SETUP
        + pieces.SPLIT_KV_KEYS
        + _key_loop("this slice's keys: masked", "start", "kv_end", "pointer", True)
        + pieces.SPLIT_KV_STORE
    )
    return _module(SPLIT_KV_NAME, "attention (one slice of the keys; `combine` merges)",
                   "Split-KV decode", "", body)  # fmt: skip


def combine_name(epilogue: str) -> str:
    return "irfuse_attention_combine" + _SUFFIX[epilogue]


def combine_source(epilogue: str) -> str:
    if epilogue not in EPILOGUES:
        raise ValueError(f"no attention epilogue {epilogue!r}")
    helpers, preload, store = quant_pieces.epilogue(epilogue, value_dtype="MODEL_DTYPE")
    body = pieces.COMBINE.format(name=combine_name(epilogue), preload=preload) + store
    fuses = "merge of split-KV attention states" + _FUSES[epilogue]
    return _module(combine_name(epilogue), fuses, "One token row per program", helpers, body)


# Generated and compiled once per process: the runtime op only looks kernels up.
@functools.cache
def prefill_kernel(epilogue: str, loads: str) -> Any:
    return load_kernel(prefill_name(epilogue, loads), prefill_source(epilogue, loads))


@functools.cache
def gluon_prefill_kernel(epilogue: str, consumers: int) -> Any:
    return load_kernel(gluon_prefill_name(epilogue, consumers),
                       gluon_prefill_source(epilogue, consumers))  # fmt: skip


@functools.cache
def mask_tile_flags_kernel() -> Any:
    return load_kernel(MASK_FLAGS_NAME, mask_tile_flags_source())


@functools.cache
def mask_tiles_kernel() -> Any:
    return load_kernel(MASK_TILES_NAME, mask_tiles_source())


@functools.cache
def split_kv_kernel() -> Any:
    return load_kernel(SPLIT_KV_NAME, split_kv_source())


@functools.cache
def combine_kernel(epilogue: str) -> Any:
    return load_kernel(combine_name(epilogue), combine_source(epilogue))


def attention_source(epilogue: str) -> str:
    """The source of every kernel an attention with `epilogue` may run (for dumps)."""
    parts = [combine_source(epilogue), split_kv_source()]
    if epilogue not in DECODE_ONLY:
        prefills = [prefill_source(epilogue, loads) for loads in ("pointer", "tma")]
        if epilogue in gluon_pieces.EPILOGUES:
            consumers = sorted({config.consumers for config in attention_gluon.configs()})
            prefills += [gluon_prefill_source(epilogue, n) for n in consumers]
        parts = [*prefills, mask_tile_flags_source(), mask_tiles_source(), *parts]
    return "\n\n".join(parts)


def prefill_config(head_dim: int, seq_q: int, mask_bytes: int = 0) -> dict[str, int | str]:
    """Tiles, warps, stages and loads by head dim and query length: the best of sweeps on
    H200 (bench/RESULTS.md); small for the interpreter. TMA loads (descriptors built on the
    host) win at head dim 128 and for head dim 64 with 64-row tiles, which short sequences
    want (twice the programs), as do unmasked head-dim-128 ones up to 1024 rows; long
    head-dim-64 sequences run 128-row tiles on pointers.
    A mask with a query dimension (`mask_bytes` per element) has its tiles pipelined too:
    at head dim 128 they need narrower key tiles to fit in shared memory, and two stages
    for 4-byte masks (three for 1- and 2-byte ones: 1.26x faster on a causal mask).
    Head dim 256: 128x64 tiles, 8 warps, 2 stages, TMA (0.75x-0.89x cuDNN causal at 512
    to 4096 rows, 3.1x SDPA's masked backend with a bool 4-D mask; 64x32 tiles on 8 warps
    with pointer loads ran 0.27x-0.29x), or 64x32 tiles on 4 warps (2.6x SDPA, bool mask)
    beside a 2- or 4-byte mask's tiles.
    `per_sm`: how many programs fit on an SM (by shared memory, registers)."""
    if INTERPRET:
        return {"BLOCK_M": 16, "BLOCK_N": 16, "num_warps": 1, "num_stages": 1,
                "loads": "pointer", "per_sm": 1}  # fmt: skip
    if head_dim == 64 and seq_q <= SHORT_SEQ:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "loads": "tma",
                "per_sm": 4}  # fmt: skip
    if head_dim <= 64:
        # capped at 128 registers: two programs per SM, where a mask's loops or an
        # epilogue would take more (174 with a causal 4-D mask: 1.24x faster, no spills)
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3,
                "loads": "pointer", "maxnreg": 128, "per_sm": 2}  # fmt: skip
    if head_dim == 128 and seq_q <= SHORT_SEQ_D128 and not mask_bytes:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "loads": "tma",
                "per_sm": 2}  # fmt: skip
    if head_dim <= 128 and mask_bytes:
        stages = 3 if mask_bytes <= 2 else 2
        return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": stages,
                "loads": "tma", "per_sm": 1}  # fmt: skip
    if head_dim <= 128:
        return {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3,
                "loads": "tma", "per_sm": 1}  # fmt: skip
    if mask_bytes > 1:  # a 2- or 4-byte mask's tiles do not fit beside 128x64 ones
        return {"BLOCK_M": 64, "BLOCK_N": 32, "num_warps": 4, "num_stages": 2, "loads": "tma",
                "per_sm": 2}  # fmt: skip
    return {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2, "loads": "tma",
            "per_sm": 1}  # fmt: skip


# Query length up to which head-dim-64 prefill runs 64-row tiles (measured: 1024 rows
# 0.92x cuDNN against 0.84x with 128-row tiles; 4096 rows 0.90x against 0.96x).
SHORT_SEQ = 2048
# The same for head dim 128 without a mask (causal: 512 rows 0.76x against 0.65x, 1024
# rows 0.89x against 0.80x; 2048 rows 0.84x against 0.86x). On sm_90 the Gluon prefill
# takes these from attention_gluon.PLANS' rows.
SHORT_SEQ_D128 = 1024


# The decode's key tiles (and those of its mask summary).
DECODE_BLOCK_N = 16 if INTERPRET else 64


# The widest K and V rows (head dim + value head dim) the decode takes 128-key tiles of:
# compiled for sm_90 (Triton 3.9, on the CPU: bench/decode_resources.py), a 128-key tile of
# head dim 256 spills 1072 bytes per thread, a 64-key one 152 (head dim 128 with 128-key
# tiles: 112). On the GPU (Triton 3.6) it does not even fit: 268 KB of shared memory.
DECODE_WIDE_TILE_MAX_DIMS = 256


def shared_bytes(
    block_m: int, block_n: int, dims: tuple[int, int], stages: int, mask_bytes: int
) -> int:
    """Shared memory of an attention program (bf16/fp16) as Triton 3.6 lays it out for
    sm_90: `stages` buffers of the K and V tiles (`dims`: head dim, value head dim), one of
    the query rows, `stages - 1` of a mask tile with a query dimension (`mask_bytes` per
    element, 0 for none or a padding mask) and 1 KB. Exact or 1 KB over on every config
    that ran out on H200: the decode's 64 rows of head dim 256 in 64-key tiles, 3 stages,
    ask 232 / 240 / 256 KB beside a bool / bf16 / fp32 mask, of head dim 128 in 128-key
    tiles 240 / 272 KB beside a bf16 / fp32 one; the prefill's 128x128 tiles of head dim
    128 with value head dim 256, 3 stages, 321 KB (of 227)."""
    d, dv = dims
    kv = stages * block_n * (d + dv) * 2
    return kv + block_m * d * 2 + (stages - 1) * block_m * block_n * mask_bytes + 1024


def fit_stages(
    stages: int, block_m: int, block_n: int, dims: tuple[int, int], mask_bytes: int, device
) -> int:
    """As many of `stages` as fit in `device`'s shared memory (shared_bytes), at least one."""
    limit = shared_memory_limit(device)
    while stages > 1 and shared_bytes(block_m, block_n, dims, stages, mask_bytes) > limit:
        stages -= 1
    return stages


def split_config(
    batch_kv: int,
    seq_kv: int,
    dims: tuple[int, int],
    device: torch.device,
    block_m: int = 16,
    mask_bytes: int = 0,
) -> dict[str, int]:
    """Slices of the keys for the decode: about one program per SM, slices of at least
    256 keys, 3 stages for long slices (the best of a sweep on H200, bench/RESULTS.md);
    small for the interpreter, so that tests see several slices. Beyond two (batch, kv
    head) rows per SM and 1024 keys, 128-key tiles (H200, B64 Hkv8 L4096-8192: 0.87x
    SDPA with 64-key tiles, 1.00x with 128; L1024 or at most two rows per SM: 64 stays
    best, by up to 12%), where K and V rows (`dims`: head dim, value head dim) are narrow
    enough not to spill (DECODE_WIDE_TILE_MAX_DIMS: head dim 256 keeps 64). Fewer stages
    where `block_m` query rows and their mask tiles would not fit in shared memory beside
    them (fit_stages)."""
    block_n = DECODE_BLOCK_N
    if INTERPRET:
        programs, min_len = 4 * batch_kv, 16
    else:
        programs, min_len = sm_count(device), 256
        wide = batch_kv > 2 * programs and seq_kv > 1024 and sum(dims) <= DECODE_WIDE_TILE_MAX_DIMS
        block_n = 128 if wide else block_n
    splits = max(1, min(cdiv(programs, batch_kv), cdiv(seq_kv, min_len)))
    split_len = max(1, cdiv(cdiv(seq_kv, splits), block_n)) * block_n
    splits = max(1, cdiv(seq_kv, split_len))  # no keys: one empty slice
    config = {"BLOCK_N": block_n, "splits": splits, "split_len": split_len}
    if INTERPRET:
        return {**config, "num_warps": 1, "num_stages": 1}
    stages = fit_stages(3 if split_len > 1024 else 2, block_m, block_n, dims, mask_bytes, device)
    return {**config, "num_warps": 4, "num_stages": stages}


# Row offsets (row * its stride) in the prefill kernel are 32-bit below this.
INT32_OFFSETS = 2**31


def wide_offsets(*rows_and_strides: tuple[int, int]) -> bool:
    """Whether some (rows, row stride) reaches INT32_OFFSETS elements, counting a tile's
    rows past the end and a head dim (the kernel then computes offsets in 64 bits)."""
    return any((rows + 256) * stride >= INT32_OFFSETS for rows, stride in rows_and_strides)


def _check(q, k, v, scale, causal, layout, epilogue, mask, mask_summary=None,
           mask_hidden=None) -> None:  # fmt: skip
    what = f"irfuse.kernel_attention ({epilogue})"
    if epilogue not in EPILOGUES or causal not in CAUSAL or layout not in ("bhsd", "bs_hd"):
        raise ValueError(f"{what}: unknown epilogue, causal kind or layout")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4 or t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{what}: {name} must be a 4-D bf16/fp16/fp32 tensor")
        if t.dtype != q.dtype or t.device != q.device:
            raise TypeError(f"{what}: q, k, v must share dtype and device")
    if not q.shape[0] == k.shape[0] == v.shape[0]:
        raise ValueError(f"{what}: batch sizes {q.shape[0]} / {k.shape[0]} / {v.shape[0]} differ")
    if not k.shape[1] or q.shape[1] % k.shape[1] or k.shape[1:3] != v.shape[1:3]:
        raise ValueError(f"{what}: heads {q.shape[1]} / {k.shape[1]} / {v.shape[1]} mismatch")
    if (
        q.shape[-1] != k.shape[-1]
        or not takes_head_dim(q.shape[-1])
        or not takes_head_dim(v.shape[-1])
    ):
        raise ValueError(
            f"{what}: head dims must be equal for q and k, and {HEAD_DIM_RULE} (q "
            f"{q.shape[-1]}, k {k.shape[-1]}, v {v.shape[-1]})"
        )
    if epilogue in ("static", "static div", "nvfp4") and scale is None:
        raise ValueError(f"{what}: needs its scale")
    if epilogue == "per_token in_dtype" and scale is not None:
        raise ValueError(f"{what}: takes no scale (its scale has no upper bound)")
    if scale is not None and (scale.numel() != 1 or scale.dtype != torch.float32):
        raise ValueError(f"{what}: the scale must be a one-element float32 tensor")
    if scale is not None and scale.device != q.device:
        raise ValueError(f"{what}: the scale is on {scale.device}, q on {q.device}")
    if scale is not None and epilogue == "none":
        raise ValueError(f"{what}: takes no scale (no quant epilogue)")
    if epilogue in ("per_token", "per_token in_dtype", "nvfp4") and layout != "bs_hd":
        raise ValueError(f"{what}: quantizes [B, Sq, Hq*Dv] rows: needs layout bs_hd")
    if epilogue in DECODE_ONLY and not uses_decode(q.shape[2], q.shape[1], k.shape[1]):
        raise ValueError(
            f"{what}: a per-token scale spans all heads of a token, which only the decode "
            f"kernel holds (Hq/Hkv * Sq <= {DECODE_MAX_ROWS})"
        )
    if epilogue != "none" and q.shape[1] * v.shape[-1] > MAX_COLS:
        raise ValueError(f"{what}: rows of Hq*Dv > {MAX_COLS} are not supported")
    if mask is not None:
        _check_mask(what, mask, q, k, causal, mask_hidden)
    elif mask_hidden is not None:
        raise ValueError(f"{what}: mask_hidden without a mask")
    if mask_summary is not None:
        _check_summary(what, mask_summary, mask, q, k)
    if q.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(f"{what}: runs on CUDA tensors (CPU needs TRITON_INTERPRET=1)")


def _check_programs(what: str, programs: int) -> None:
    """A clear error where a 1-D grid would pass CUDA's limit (beyond any real model's
    shapes: a mask summary of over 2**31 tiles)."""
    if programs > MAX_GRID_X:
        raise ValueError(f"{what}: {programs} programs > {MAX_GRID_X} (CUDA's grid limit)")


def _check_mask(what: str, mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor, causal: str,
                hidden: float | None = None):  # fmt: skip
    if causal != "none":
        raise ValueError(f"{what}: an explicit mask and causal={causal!r} cannot be combined")
    if mask.dtype not in (torch.bool, *FLOAT_DTYPES):
        raise TypeError(f"{what}: the mask must be bool or bf16/fp16/fp32, got {mask.dtype}")
    if mask.device != q.device:
        raise ValueError(f"{what}: the mask is on {mask.device}, q on {q.device}")
    if hidden is not None and mask.dtype != torch.bool:
        raise ValueError(f"{what}: mask_hidden biases a bool mask's keys, got a {mask.dtype} mask")
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    if not broadcasts_to(mask.shape, target):
        raise ValueError(
            f"{what}: a mask of shape {list(mask.shape)} does not broadcast to [B, Hq, Sq, "
            f"Skv] = {list(target)}"
        )


def _reads_summary(q: torch.Tensor) -> bool:
    """Whether kernel_attention reads a mask summary for q (an empty q runs nothing)."""
    return 0 not in q.shape


def _summary_config(q: torch.Tensor, k: torch.Tensor, masking) -> dict:
    """The tiles a mask summary is computed over: the prefill kernel's, or for the decode
    one block of all the query rows and its key tiles."""
    if uses_decode(q.shape[2], q.shape[1], k.shape[1]):
        return {"BLOCK_M": max(16, next_power_of_2(q.shape[2])), "BLOCK_N": DECODE_BLOCK_N}
    return prefill_config(next_power_of_2(q.shape[-1]), q.shape[2], _mask_bytes(masking))


def _mask_heads(strides: tuple, h: int) -> int:
    """Heads a mask summary covers: all of them if the mask varies by head, else one."""
    return h if strides[1] else 1


def _check_summary(what: str, summary: torch.Tensor, mask, q, k) -> None:
    if mask is None:
        raise ValueError(f"{what}: a mask summary without its mask")
    if not _reads_summary(q):
        return
    expected = _summary_size(q, k, _mask_args(mask, q, k))
    if summary.dtype != torch.int32 or summary.numel() != expected or summary.device != q.device:
        raise ValueError(
            f"{what}: the mask summary ({summary.numel()} {summary.dtype} on {summary.device}) "
            f"is not kernel_attention_mask_summary's for these shapes ({expected} int32 on "
            f"{q.device})"
        )


def _mask_args(
    mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor, hidden: float | None = None
):
    """(tensor, its 4 strides over [B, Hq, Sq, Skv] (0 where it broadcasts), MASK kind,
    KEY_MASK: whether it varies with batch and key only, the bias of a bool mask's hidden
    keys (MASK 3; -inf is a plain bool mask))."""
    if mask is None:
        return q, (0, 0, 0, 0), 0, False, 0.0
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    key_mask = mask.stride(1) == 0 and mask.stride(2) == 0
    if mask.dtype == torch.bool:
        biased = hidden is not None and hidden != float("-inf")
        return mask.view(torch.uint8), mask.stride(), 3 if biased else 1, key_mask, hidden or 0.0
    return mask, mask.stride(), 2, key_mask, 0.0


def _allocate(q, v, layout: str, epilogue: str, return_lse: bool):
    """(out, lse, scales). bhsd is stored as [B, Sq, Hq, Dv] (rows the decode combine
    writes whole) and returned transposed; nvfp4 returns the 2-D [B*Sq, Hq*Dv/2]."""
    b, h, sq, dv = q.shape[0], q.shape[1], q.shape[2], v.shape[-1]
    lse = q.new_empty((b, h, sq), dtype=torch.float32) if return_lse else q.new_empty(0)
    scales = q.new_empty(0)
    if epilogue == "nvfp4":
        out = q.new_empty((b * sq, h * dv // 2), dtype=torch.uint8)
        scales = alloc_nvfp4_scales(b * sq, h * dv, q)
        return out, lse, scales
    dtype = q.dtype if epilogue == "none" else FP8
    if epilogue in DECODE_ONLY:  # the per-token schemes
        scales = q.new_empty((b, sq, 1), dtype=torch.float32)
    if layout == "bs_hd":
        return q.new_empty((b, sq, h * dv), dtype=dtype), lse, scales
    return q.new_empty((b, sq, h, dv), dtype=dtype).transpose(1, 2), lse, scales


@runtime_op("kernel_attention")
def kernel_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: torch.Tensor | None,
    sm_scale: float,
    causal: str,
    layout: str,
    return_lse: bool,
    epilogue: str,
    mask: torch.Tensor | None = None,
    mask_summary: torch.Tensor | None = None,
    mask_hidden: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of q [B,Hq,Sq,D] against k, v [B,Hkv,Skv,D(v)] ending with `epilogue`;
    `scale`: the static scale, per-token upper bound or nvfp4 global scale; `mask`: an
    explicit mask (bool, True = keep, or additive float) broadcastable to [B,Hq,Sq,Skv];
    `mask_summary`: its kernel_attention_mask_summary for these shapes (computed here if
    absent); `mask_hidden`: with a bool mask, the additive bias its hidden keys take
    (the mask means where(mask, 0, mask_hidden); None: hidden). Returns (out, lse,
    scales); lse and scales are empty when not asked for / not produced."""
    _check(q, k, v, scale, causal, layout, epilogue, mask, mask_summary, mask_hidden)
    if sm_scale < 0:
        raise ValueError(f"irfuse.kernel_attention: sm_scale {sm_scale}: {NEGATIVE_SCALE}")
    if runs_reference(q):
        return _reference(q, k, v, scale, sm_scale, causal, layout, return_lse, epilogue, mask,
                          mask_hidden)  # fmt: skip
    out, lse, scales = _allocate(q, v, layout, epilogue, return_lse)
    if out.numel() == 0:
        return out, lse, scales
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    masking = _mask_args(mask, q, k, mask_hidden)
    if uses_decode(q.shape[2], q.shape[1], k.shape[1]):
        for launch in decode_launches(q, k, v, masking, mask_summary, scale, sm_scale, causal,
                                      epilogue, out, lse, scales):  # fmt: skip
            launch.run()
    else:
        _prefill(q, k, v, masking, mask_summary, scale, sm_scale, causal, layout, epilogue, out,
                 lse, scales)  # fmt: skip
    return out, lse, scales


def graph_launch_problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> str | None:
    """Why kernel_attention over the fake q, k, v launches through the runtime op, as far
    as their shapes and device tell (None if Inductor's wrapper may make its launches,
    graph_launches): only the decode's, at static shapes (its slices depend on the key
    count; the prefill takes TMA descriptors built on the host)."""
    if q.device.type != "cuda":
        return "its tensors are not on the GPU"
    if not all(isinstance(size, int) for t in (q, k, v) for size in t.shape):
        return "its shapes are symbolic"
    if runs_reference(q):
        return "fp32 runs the reference ops"
    if not uses_decode(q.shape[2], q.shape[1], k.shape[1]):
        return "the prefill takes TMA descriptors built per call"
    return None


def prefill_note(q, k, v, causal: str, has_mask: bool, epilogue: str) -> str | None:
    """Which prefill kernel kernel_attention runs on tensors like the fake q, k, v (for
    the report's launches; its runtime op decides per call), or None where it runs none
    or that is not known when the graph compiles (decode, fp32, symbolic shapes, not on
    the GPU)."""
    if q.device.type != "cuda" or not all(isinstance(n, int) for t in (q, k, v) for n in t.shape):
        return None
    if runs_reference(q) or uses_decode(q.shape[2], q.shape[1], k.shape[1]):
        return None
    chosen = attention_gluon.choice(q, k, v, causal != "none", int(has_mask), epilogue, False)
    if isinstance(chosen, str):
        return f"its prefill: the Triton kernel ({chosen})"
    name = gluon_prefill_name(epilogue, chosen.config.consumers)
    return f"its prefill: {name} (Gluon, sm_90{', persistent' if chosen.persistent else ''})"


def graph_launches(
    q,
    k,
    v,
    scale,
    sm_scale,
    causal,
    layout,
    return_lse,
    epilogue,
    mask=None,
    mask_summary=None,
    mask_hidden=None,
) -> tuple[list[KernelLaunch], tuple[torch.Tensor, ...]] | str:
    """kernel_attention's launches and outputs (out, lse, scales) over fake tensors that
    graph_launch_problem accepts, or why it makes none the graph can hold (no rows, or an
    input it would copy)."""
    _check(q, k, v, scale, causal, layout, epilogue, mask, mask_summary, mask_hidden)
    out, lse, scales = _allocate(q, v, layout, epilogue, return_lse)
    if out.numel() == 0:
        return "it has no rows"
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        return COPIED
    masking = _mask_args(mask, q, k, mask_hidden)
    launches = decode_launches(q, k, v, masking, mask_summary, scale, sm_scale, causal, epilogue,
                               out, lse, scales)  # fmt: skip
    return launches, (out, lse, scales)


def summary_graph_problem(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> str | None:
    """Why kernel_attention_mask_summary over these fakes launches through the runtime op,
    as far as their device and shapes tell (None: summary_graph_launches may launch it
    from Inductor's wrapper)."""
    if q.device.type != "cuda":
        return "its tensors are not on the GPU"
    if not all(isinstance(size, int) for t in (q, k, mask) for size in t.shape):
        return "its shapes are symbolic"
    return None


def summary_graph_launches(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, mask_hidden: float | None = None
) -> tuple[list[KernelLaunch], tuple[torch.Tensor]] | str:
    """kernel_attention_mask_summary's launches and outputs (the tiles) over fake tensors
    that summary_graph_problem accepts, or why it makes none (no kernel reads one)."""
    _check_summary_args(q, k, mask, mask_hidden)
    if not _reads_summary(q):
        return "no kernel reads it"
    masking = _mask_args(mask, q, k, mask_hidden)
    b, h, sq, _ = q.shape
    config = _summary_config(q, k, masking)
    launches, tiles, _ = mask_tiles_launches(masking, b, h, sq, k.shape[2], config)
    return launches, (tiles,)


@runtime_op("kernel_attention_mask_summary")
def kernel_attention_mask_summary(
    q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, mask_hidden: float | None = None
) -> torch.Tensor:
    """The tile summary of `mask` (and `mask_hidden`, as kernel_attention takes them) that
    kernel_attention reads for q's and k's shapes (int32: the prefill's blocks, or for
    the decode one block of all the query rows; empty for an empty q): computed once for
    every attention of those shapes that shares the mask (to_fx)."""
    _check_summary_args(q, k, mask, mask_hidden)
    if not _reads_summary(q):
        return q.new_empty(0, dtype=torch.int32)
    masking = _mask_args(mask, q, k, mask_hidden)
    b, h, sq, _ = q.shape
    return _mask_tiles(masking, b, h, sq, k.shape[2], _summary_config(q, k, masking))[0]


@torch.library.register_fake("irfuse::kernel_attention_mask_summary")
def _(q, k, mask, mask_hidden=None):
    _check_summary_args(q, k, mask, mask_hidden)
    if not _reads_summary(q):
        return q.new_empty(0, dtype=torch.int32)
    return q.new_empty(_summary_size(q, k, _mask_args(mask, q, k)), dtype=torch.int32)


def _check_summary_args(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor, hidden) -> None:
    what = "irfuse.kernel_attention_mask_summary"
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"{what}: q and k must be 4-D, got {list(q.shape)} / {list(k.shape)}")
    if not k.shape[1] or q.shape[1] % k.shape[1] or q.shape[0] != k.shape[0]:
        raise ValueError(f"{what}: q {list(q.shape)}, k {list(k.shape)}: batch or heads mismatch")
    _check_mask(what, mask, q, k, "none", hidden)


def _mask_bytes(masking) -> int:
    """What prefill_config is told of a mask: the bytes per element of one with a query
    dimension, 0 for none or a padding mask (read one row of keys per tile)."""
    mask, _, kind, key_mask, _ = masking
    return 0 if kind == 0 or key_mask else mask.element_size()


def _summary_size(q: torch.Tensor, k: torch.Tensor, masking) -> int:
    """Entries of the mask summary: 4 per (batch, mask head, block of query rows)."""
    config = _summary_config(q, k, masking)
    mask_heads = _mask_heads(masking[1], q.shape[1])
    return q.shape[0] * mask_heads * cdiv(q.shape[2], config["BLOCK_M"]) * 4


def runs_reference(q: torch.Tensor) -> bool:
    """fp32 on the GPU: kernel_attention runs the reference ops, exact fp32, where the
    kernels' dots would round to tf32 and their fp32 tiles overflow shared memory (they
    are tuned for bf16 and fp16; the interpreter runs them in fp32 exactly)."""
    return q.dtype == torch.float32 and not INTERPRET


def _reference(q, k, v, scale, sm_scale, causal, layout, return_lse, epilogue, mask, hidden):
    """kernel_attention by the reference ops (irfuse/ops), its outputs laid out alike."""
    bias = mask if mask is None or hidden is None else torch.where(mask, 0.0, hidden)
    out, lse = ref_attention(q, k, v, bias, sm_scale, causal, return_lse)
    b, h, sq, dv = out.shape
    rows = out.transpose(1, 2).reshape(b * sq, h * dv)
    scales = q.new_empty(0)
    if epilogue == "nvfp4":
        packed, block_scales = nvfp4_quant(rows, scale)
        return packed, lse, block_scales
    if epilogue == "static":
        rows = static_fp8_quant(rows, scale)
    elif epilogue == "static div":
        rows = static_fp8_quant_divided(rows, scale)
    elif epilogue in DECODE_ONLY:  # the per-token schemes
        rows, token_scales = (
            per_token_fp8_quant(rows, scale)
            if epilogue == "per_token"
            else per_token_fp8_quant_in_dtype(rows)
        )
        scales = token_scales.view(b, sq, 1)
    if layout == "bs_hd":
        return rows.view(b, sq, h * dv), lse, scales
    return rows.view(b, sq, h, dv).transpose(1, 2), lse, scales


def wide_values_config(config: dict, d: int, dv: int, mask_bytes: int, device) -> dict:
    """prefill_config's tiles (tuned for dv == d; the mask summary shares them and knows
    only q's and k's head dims) for any value head dim: no register cap past d (a 128 x
    256 fp32 accumulator alone takes 128 registers a thread on 8 warps; ptxas fails), and
    fewer stages where the K and V tiles would pass shared memory (fit_stages: d 128 with
    dv 256 asked 321 KB in 3)."""
    if INTERPRET:
        return config
    if dv > d:
        config = {key: value for key, value in config.items() if key != "maxnreg"}
    stages = fit_stages(config["num_stages"], config["BLOCK_M"], config["BLOCK_N"], (d, dv),
                        mask_bytes, device)  # fmt: skip
    return {**config, "num_stages": stages}


def _prefill(
    q, k, v, masking, mask_summary, scale, sm_scale, causal, layout, epilogue, out, lse, scales
):
    mask, mask_strides, mask_kind, key_mask, mask_hidden = masking
    chosen = attention_gluon.choice(q, k, v, causal != "none", mask_kind, epilogue)
    if not isinstance(chosen, str):
        kernel = gluon_prefill_kernel(epilogue, chosen.config.consumers)
        items = attention_gluon.work_items(q, chosen.config)
        sweep = heads_per_sweep(q, k, v, causal != "none", items,
                                attention_gluon.PROGRAMS_PER_SM)  # fmt: skip
        attention_gluon.launch(kernel, q, k, v, out, layout, lse, scale, sm_scale,
                               CAUSAL[causal], chosen, sweep)  # fmt: skip
        return
    b, h, sq, d = q.shape
    seq_kv, dv = k.shape[2], v.shape[-1]
    if epilogue == "nvfp4":  # bytes: token row stride Hq*Dv/2, head h at h*Dv/2
        o_strides = (sq * h * dv // 2, dv // 2, h * dv // 2)
    elif layout == "bhsd":
        o_strides = out.stride()[:3]
    else:  # [B, S, H*Dv]: head h starts at column h*Dv
        o_strides = (out.stride(0), dv, out.stride(1))
    mask_bytes = _mask_bytes(masking)
    # tiles span the next power of two of a head dim; configs go by their widths
    tile_d, tile_dv = next_power_of_2(d), next_power_of_2(dv)
    config = wide_values_config(prefill_config(tile_d, sq, mask_bytes), tile_d, tile_dv,
                                mask_bytes, q.device)  # fmt: skip
    # a descriptor needs a non-empty tensor (no keys: the loops are empty anyway)
    wants_tma = config.pop("loads") == "tma" and seq_kv > 0
    loads = "tma" if wants_tma and tma_ok(q, k, v) else "pointer"
    qkv = (q, k, v)
    if loads == "tma":  # blocks of one (batch, head): [1, 1, rows, D]
        rows = (config["BLOCK_M"], config["BLOCK_N"], config["BLOCK_N"])
        widths = (tile_d, tile_d, tile_dv)
        qkv = tuple(TensorDescriptor.from_tensor(t, [1, 1, n, width])
                    for t, n, width in zip(qkv, rows, widths, strict=True))  # fmt: skip
    n_blocks = cdiv(sq, config["BLOCK_M"])
    uneven = causal != "none" or (mask_kind != 0 and not key_mask)
    sweep = heads_per_sweep(q, k, v, uneven, n_blocks * b * h, config.pop("per_sm"))
    sweeps = sweep > 1 or b * h > MAX_GRID_YZ  # the 1-D grid holds any count of heads
    grid = (n_blocks * b * h,) if sweeps else (n_blocks, b * h)
    if mask_summary is None:
        tiles, mask_heads = _mask_tiles(masking, b, h, sq, seq_kv, config)
    else:
        tiles, mask_heads = mask_summary, _mask_heads(mask_strides, h)
    prefill_kernel(epilogue, loads)[grid](
        *qkv, mask, tiles, scale if scale is not None else q, out, lse if lse.numel() else out,
        scales.view(torch.uint8) if scales.numel() else out,
        sm_scale, mask_hidden, sq, seq_kv, h // k.shape[1],
        sweep,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *mask_strides, mask_heads,
        *o_strides, h, sq,
        HEAD_DIM=d, HEAD_DIM_V=dv, BLOCK_D=tile_d, BLOCK_DV=tile_dv, CAUSAL=CAUSAL[causal],
        MASK=mask_kind, KEY_MASK=key_mask,
        HAS_LSE=lse.numel() > 0, SWEEPS=sweeps, INTERPRET=INTERPRET, **config,
        WIDE_OFFSETS=wide_offsets((sq, q.stride(2)), (sq, o_strides[2]), (seq_kv, k.stride(2)),
                                  (seq_kv, v.stride(2))),
    )  # fmt: skip


# The keys and values a sweep of prefill programs keeps in L2 (50 MB on H100 and H200).
SWEEP_KV_BYTES = 16 << 20
# Launches of up to this many waves sweep, at head dims up to SWEEP_MAX_HEAD_DIM (H200,
# causal, head dim 64: 3.9 waves 1.03x faster, 15.5 waves 1.02x-1.03x; head dim 128: 7.8
# waves 1.01x-1.02x, 15.5 waves 0.94x-0.97x, 31 waves 0.95x with the static epilogue).
SWEEP_MAX_WAVES = 16
SWEEP_MAX_HEAD_DIM = 64


def heads_per_sweep(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, uneven: bool, programs: int, per_sm: int
) -> int:
    """How many (batch, query head)s the prefill kernel interleaves, block by block.
    Blocks of uneven length (causal, a mask with a query dimension) of small head dims,
    when the `programs` (`per_sm` of them fit on an SM) are a few waves, whose last would
    otherwise hold the longest blocks: across as many heads as keep their keys and values
    in L2 (SWEEP_KV_BYTES), so the longest start first. Otherwise one head at a time."""
    waves = 0 if INTERPRET else programs / (per_sm * sm_count(q.device))
    if not uneven or waves > SWEEP_MAX_WAVES or q.shape[-1] > SWEEP_MAX_HEAD_DIM:
        return 1
    group = q.shape[1] // k.shape[1]  # query heads per kv head share its keys and values
    kv_bytes = k.shape[2] * (k.shape[3] + v.shape[3]) * k.element_size()
    return max(1, min(q.shape[0] * q.shape[1], SWEEP_KV_BYTES * group // max(kv_bytes, 1)))


def _mask_tiles(masking, b: int, h: int, sq: int, seq_kv: int, config: dict) -> tuple:
    """(tile ranges, mask heads) of an explicit mask for the prefill kernel's blocks
    (mask_tiles_launches, run); without a mask, a placeholder."""
    if masking[2] == 0:
        return masking[0], 1
    launches, tiles, mask_heads = mask_tiles_launches(masking, b, h, sq, seq_kv, config)
    for launch in launches:
        launch.run()
    return tiles, mask_heads


def mask_tiles_launches(
    masking, b: int, h: int, sq: int, seq_kv: int, config: dict
) -> tuple[list[KernelLaunch], torch.Tensor, int]:
    """The launches that summarise an explicit mask for the blocks of `config`: its flags
    per (block, key tile), one pass over the mask, then each block's scan of them (a
    small part of the attention's time); a mask the same for every head is summarised
    once. Returns (launches, the tile ranges they write, mask heads); the flags between
    them are allocated here."""
    mask, strides, kind, _, hidden = masking
    mask_heads = _mask_heads(strides, h)
    blocks = cdiv(sq, config["BLOCK_M"])
    n_tiles = cdiv(seq_kv, config["BLOCK_N"])
    flags = mask.new_empty(b * mask_heads * blocks * n_tiles, dtype=torch.int8)
    row_bits = flags  # an additive mask's, per (batch, mask head, tile, row)
    if kind >= 2:
        row_bits = mask.new_empty(b * mask_heads * n_tiles * sq, dtype=torch.int8)
    num_warps = 1 if INTERPRET else 4
    _check_programs("the mask summary", b * mask_heads * blocks * n_tiles)
    launches = []
    if n_tiles:
        launches.append(KernelLaunch.of(
            mask_tile_flags_kernel(), (n_tiles * blocks * b * mask_heads,),
            (mask, flags, row_bits, hidden, sq, seq_kv, mask_heads, *strides),
            dict(BLOCK_M=config["BLOCK_M"], BLOCK_N=config["BLOCK_N"], MASK=kind),
            num_warps, 3, ["flags_ptr", *["row_bits_ptr"] * (kind >= 2)],
        ))  # fmt: skip
    tiles = mask.new_empty(b * mask_heads * blocks * 4, dtype=torch.int32)
    launches.append(KernelLaunch.of(
        mask_tiles_kernel(), (blocks * b * mask_heads,),
        (flags, row_bits, tiles, sq, n_tiles), dict(BLOCK_M=config["BLOCK_M"], MASK=kind),
        num_warps, 3, ["tiles_ptr"],
    ))  # fmt: skip
    return launches, tiles, mask_heads


def decode_launches(
    q, k, v, masking, mask_summary, scale, sm_scale, causal, epilogue, out, lse, scales
) -> list[KernelLaunch]:
    """Split-KV decode, then the combine with the epilogue. With a mask summary (what
    kernel_attention_mask_summary computes once for the layers sharing the mask), the
    slices split only the keys some row sees; without one (a direct call) they split all
    the keys, each tile reading the mask. The slices' partial results are allocated here."""
    b, h, sq, d = q.shape
    hkv, seq_kv, dv = k.shape[1], k.shape[2], v.shape[-1]
    group = h // hkv
    block_m = max(16, next_power_of_2(group * sq))
    tile_d, tile_dv = next_power_of_2(d), next_power_of_2(dv)
    config = split_config(b * hkv, seq_kv, (tile_d, tile_dv), q.device, block_m,
                          _mask_bytes(masking))  # fmt: skip
    splits, split_len = config.pop("splits"), config.pop("split_len")
    num_warps, num_stages = config.pop("num_warps"), config.pop("num_stages")
    part = q.new_empty((b, h, sq, splits, dv), dtype=torch.float32)
    part_state = q.new_empty((b, h, sq, splits, 2), dtype=torch.float32)  # max, sum
    mask, mask_strides, mask_kind, key_mask, mask_hidden = masking
    summary = mask_summary is not None  # _check: a summary comes with its mask
    _check_programs("the split-KV decode", splits * b * hkv)
    wide = wide_offsets((h, q.stride(1)), (sq, q.stride(2)), (seq_kv, k.stride(2)),
                        (seq_kv, v.stride(2)))  # fmt: skip
    split = KernelLaunch.of(
        split_kv_kernel(), (splits * b * hkv,),
        (q, k, v, mask, mask_summary if summary else mask, part, part_state, sm_scale,
         mask_hidden, sq, seq_kv, group, split_len, splits, *q.stride()[:3], *k.stride()[:3],
         *v.stride()[:3], *mask_strides, _mask_heads(mask_strides, h), hkv),
        dict(HEAD_DIM=d, HEAD_DIM_V=dv, BLOCK_D=tile_d, BLOCK_DV=tile_dv, BLOCK_M=block_m,
             CAUSAL=CAUSAL[causal], MASK=mask_kind, KEY_MASK=key_mask, SUMMARY=summary,
             SUMMARY_BLOCK_N=DECODE_BLOCK_N, INTERPRET=INTERPRET, WIDE_OFFSETS=wide, **config),
        num_warps, num_stages, ("part_ptr", "part_state_ptr"),
    )  # fmt: skip
    n_cols = h * dv
    block, num_warps = launch_config(b * sq, n_cols, epilogue)
    scales2 = scales.view(torch.uint8) if epilogue == "nvfp4" else scales
    combine = KernelLaunch.of(
        combine_kernel(epilogue), (b * sq,),
        (part, part_state, lse if lse.numel() else part, scale if scale is not None else part,
         out, scales2 if scales2.numel() else part, h, sq, splits, n_cols,
         n_cols // 2 if epilogue == "nvfp4" else n_cols, 1, 0),
        dict(HEAD_DIM_V=dv, BLOCK=block, MODEL_DTYPE=_TL_DTYPES[q.dtype],
             HAS_LSE=lse.numel() > 0, HAS_SCALE=scale is not None, INTERPRET=INTERPRET),
        1 if INTERPRET else num_warps, 3,
        [name for name, t in (("out_ptr", out), ("lse_ptr", lse), ("scale_out_ptr", scales))
         if t.numel()],
        # the swizzled nvfp4 scales are zero-filled where their layout pads (_allocate)
        ["scale_out_ptr"] * (epilogue == "nvfp4" and nvfp4_scales_padded(b * sq, n_cols)),
    )  # fmt: skip
    return [split, combine]


@torch.library.register_fake("irfuse::kernel_attention")
def _(q, k, v, scale, sm_scale, causal, layout, return_lse, epilogue, mask=None,
      mask_summary=None, mask_hidden=None):  # fmt: skip
    _check(q, k, v, scale, causal, layout, epilogue, mask, mask_summary, mask_hidden)
    return _allocate(q, v, layout, epilogue, return_lse)
