"""Kernel specifications and the Triton source they generate (no IR here: the runtime
ops use this module, and only to_triton.py maps irfuse ops onto specs).

A KernelSpec names a producer body from irfuse/kernels and an epilogue per quant
scheme; `kernel_source` composes them into a readable module whose docstring names
the ops it fuses.
"""

from __future__ import annotations

import dataclasses
import functools
import textwrap
from dataclasses import dataclass

from irfuse.kernels import norm
from irfuse.kernels import quant as quant_pieces
from irfuse.kernels.quant import parse_scheme

# rms_norm_add: x's norm, then the graph's residual add (OLMo 2's post-norms); the quant
# reads the sum, rounded to the model dtype, which residual_out also holds
PRODUCERS = ("quant", "rms_norm", "fused_add_rms_norm", "rms_norm_add")


@dataclass(frozen=True)
class KernelSpec:
    producer: str  # one of PRODUCERS
    weight_mode: str = "none"  # plain | fp32 | gemma | none (no norm)
    quant: str = "none"  # none, or a scheme in #irfuse.quant syntax ("per_group 128 ue8m0")
    norm_out: str = "model"  # model: the norm rounds to the input dtype | fp32: it does not
    keep_value: bool = False  # with a quant: also store the unquantized value
    two_pass: bool = False  # per-token over wide rows (a launch-time choice, not encoded)
    # rms_norm + nvfp4 over a row of this many BLOCK-wide pieces (a launch-time choice, not
    # encoded: runtime.pieces_of); 0: the row in one BLOCK
    pieces: int = 0
    # rms_norm + a quant, no residual: this many rows a program, each row's successor
    # loaded while it computes (a launch-time choice, not encoded:
    # runtime.rows_per_program_of); 0: a program a row
    rows_per_program: int = 0
    # rows of exactly BLOCK columns, each whole in a program (one or several rows a
    # program; a launch-time choice, not encoded: runtime.full_block_of): the kernel takes
    # n_cols as the constant BLOCK
    full_block: bool = False
    rounded_sum: bool = False  # fused_add_rms_norm: the norm reads the sum in the model dtype
    # fused_add_rms_norm with rounded_sum: x is first normalised with its own weight (of
    # weight_mode) and eps (x_weight_ptr, x_eps: a sandwich's first norm)
    normed_x: bool = False

    @property
    def name(self) -> str:
        kind, group, _, ue8m0 = parse_scheme(self.quant)
        special = {"none": "", "nvfp4": "_nvfp4", "amax": "_amax"}
        suffix = special.get(kind, f"_{kind}{group or ''}_fp8")
        suffix = suffix.replace("_fp8", "_ue8m0_fp8") if ue8m0 else suffix
        suffix = suffix.replace("_fp8", "_div_fp8") if self.quant == "static div" else suffix
        suffix = suffix.replace("_fp8", "_in_dtype_fp8") if self.in_dtype else suffix
        mode = "" if self.weight_mode in ("none", "plain") else f"_{self.weight_mode}w"
        out = "_f32out" if self.norm_out == "fp32" else ""
        keep = "_keep" if self.keep_value else ""
        two_pass = "_two_pass" if self.two_pass else ""
        two_pass += f"_{self.pieces}_pieces" if self.pieces else ""
        two_pass += f"_{self.rows_per_program}_rows" if self.rows_per_program else ""
        two_pass += "_full_block" if self.full_block else ""
        producer = "add_rounded_rms_norm" if self.rounded_sum else self.producer
        producer = f"normed_{producer}" if self.normed_x else producer
        return f"irfuse_{producer}{mode}{out}{suffix}{keep}{two_pass}"

    @property
    def row_tiles(self) -> bool:
        """Whether a row may split into tiles over programs (grid: rows x tiles): a quant
        with no row-wide reduction, or phase 2 of a per-tensor quant after a plain norm
        (it normalises with phase 1's rstd)."""
        if self.producer == "quant":
            return self.quant.split()[0] in quant_pieces.TILEABLE
        return self.normalises_with_phase_1_rstd

    @property
    def in_dtype(self) -> bool:
        """The quant's scale is divided in the value's dtype (torchao's, no lower bound)."""
        return "in_dtype" in self.quant.split()

    @property
    def per_tensor(self) -> bool:
        """A dynamic per-tensor quant (`per_tensor`, `per_tensor in_dtype`): two phases."""
        return self.quant.split()[0] == "per_tensor"

    @property
    def normalises_with_phase_1_rstd(self) -> bool:
        """Phase 2 of a plain norm's per-tensor quant (per_tensor_phases)."""
        return self.producer == "rms_norm" and self.per_tensor

    @property
    def stores_rstd(self) -> bool:
        """Phase 1 of a per-tensor quant whose phase 2 normalises with its rstd: after a
        plain norm, or after an add whose sum phase 2 re-reads rounded (`residual_out`)."""
        return self.quant == "amax" and (self.producer == "rms_norm" or self.rounded_sum)

    def source(self) -> str:
        return kernel_source(self)

    def encode(self) -> str:
        """The string a runtime call carries (see `decode`)."""
        flags = "/keep_value" * self.keep_value + "/rounded_sum" * self.rounded_sum
        flags += "/normed_x" * self.normed_x
        return f"{self.producer}/{self.weight_mode}/{self.norm_out}/{self.quant}{flags}"

    @staticmethod
    def decode(text: str) -> KernelSpec:
        parts = text.split("/")
        flags = parts[4:]
        keep_value, rounded_sum = "keep_value" in flags, "rounded_sum" in flags
        normed_x = "normed_x" in flags
        expected = ["keep_value"] * keep_value + ["rounded_sum"] * rounded_sum
        if len(parts) >= 4 and flags == expected + ["normed_x"] * normed_x:
            producer, weight_mode, norm_out, quant = parts[:4]
            try:
                parse_scheme(quant)
                known_scheme = True
            except ValueError:
                known_scheme = False
            if (
                known_scheme
                and quant.split()[0] in LOWERED_SCHEMES
                and producer in PRODUCERS
                and norm_out in ("model", "fp32")
                and not (producer == "quant" and norm_out != "model")  # no norm to round
                and weight_mode in ((*norm.WEIGHT,) if producer != "quant" else ("none",))
                and not (keep_value and (producer in ("quant", "rms_norm_add") or quant == "none"))
                and not (rounded_sum and producer != "fused_add_rms_norm")
                and not (normed_x and not rounded_sum)
                and not (producer == "rms_norm_add" and norm_out != "model")
            ):
                return KernelSpec(
                    producer,
                    weight_mode,
                    quant,
                    norm_out,
                    keep_value,
                    rounded_sum=rounded_sum,
                    normed_x=normed_x,
                )
        raise ValueError(f"unknown irfuse kernel spec {text!r}")

    def describe(self) -> str:
        parts = {
            "quant": [],
            "rms_norm": ["rms_norm"],
            "fused_add_rms_norm": ["add", "rms_norm"],
            "rms_norm_add": ["rms_norm", "add (the sum rounded to the model dtype)"],
        }[self.producer]
        if self.rounded_sum:
            parts[0] = "add (the sum rounded to the model dtype)"
        if self.normed_x:
            parts.insert(0, "rms_norm of x")
        if self.weight_mode in ("fp32", "gemma"):
            at = 0 if self.producer == "rms_norm_add" else -1
            parts[at] += f" ({self.weight_mode} weight)"
        if self.quant == "nvfp4":
            parts.append("nvfp4 quant")
        elif self.quant == "amax":
            parts.append("amax (phase 1 of a per_tensor fp8 quant)")
        elif self.normalises_with_phase_1_rstd:
            parts[-1] += " (with phase 1's rstd)"
            parts.append("per_tensor fp8 quant (phase 2)")
        elif self.quant != "none":
            parts.append(f"{self.quant} fp8 quant")
        text = " + ".join(parts)
        text += " (the unquantized value kept too)" if self.keep_value else ""
        text += f" (each row as {self.pieces} pieces)" if self.pieces else ""
        text += " (rows of exactly BLOCK columns)" if self.full_block else ""
        if self.rows_per_program:
            text += f" ({self.rows_per_program} rows a program, the next one's load in flight)"
        return text + " (two passes over each row)" if self.two_pass else text


# The schemes a spec string may name. per_tensor runs as two kernels, `amax` then
# `per_tensor` (per_tensor_phases builds the first; no string names it).
LOWERED_SCHEMES = ("none", "static", "per_token", "per_tensor", "per_group", "nvfp4")


@dataclass(frozen=True)
class AttentionKernel:
    """The generated attention kernels (prefill; split-KV decode + combine) with an
    epilogue (one of irfuse.kernels.attention.EPILOGUES)."""

    epilogue: str

    @property
    def name(self) -> str:
        from irfuse.lowering.attention import kernel_name

        return kernel_name(self.epilogue)

    def source(self) -> str:
        from irfuse.lowering.attention import attention_source

        return attention_source(self.epilogue)


@functools.cache
def per_tensor_phases(spec: KernelSpec) -> tuple[KernelSpec, KernelSpec]:
    """The two kernels of a dynamic per-tensor quant: producer + amax, then the quant.
    After a plain norm, phase 1 keeps each row's rstd and phase 2 normalises x again with
    it, in row tiles (x read twice, nothing else stored: 5 bytes per element instead of 7
    for a stored bf16 value). After an add whose norm reads the rounded sum, phase 2 is
    that same plain-norm phase over `residual_out` (9 bytes per element). After an add
    with the unrounded fp32 sum, phase 2 reads a value phase 1 stored (only x and the
    residual give that sum back: as much traffic, and the add twice): 11 bytes."""
    if spec.rounded_sum:
        plain = KernelSpec("rms_norm", spec.weight_mode, spec.quant, spec.norm_out)
        return dataclasses.replace(spec, quant="amax"), plain
    if spec.producer == "rms_norm_add":  # phase 2 quantizes the sum phase 1 stored
        return dataclasses.replace(spec, quant="amax"), KernelSpec("quant", "none", spec.quant)
    if spec.producer == "fused_add_rms_norm":  # unrounded sum
        amax = dataclasses.replace(spec, quant="amax", keep_value=True)
        return amax, KernelSpec("quant", "none", spec.quant)
    return dataclasses.replace(spec, quant="amax"), dataclasses.replace(spec, keep_value=False)


def launched_kernels(spec: KernelSpec) -> tuple[KernelSpec, ...]:
    """The kernels a call of `spec` launches: a dynamic per-tensor quant's two phases (over
    several rows), else `spec` itself."""
    return per_tensor_phases(spec) if spec.per_tensor else (spec,)


def plain_norm_nvfp4(spec: KernelSpec) -> bool:
    """Whether `spec` is rms_norm + nvfp4 without a residual, storing only the quant: the
    one kernel bound by its instructions, not by memory, whose row may load as halves of
    blocks (quant.WHOLE_BLOCKS) or as pieces (runtime.pieces_of)."""
    nvfp4 = parse_scheme(spec.quant)[0] == "nvfp4"
    return nvfp4 and spec.producer == "rms_norm" and not spec.keep_value


PIECE_EPILOGUE_NAME = "normed_nvfp4_piece"


def whole_blocks_of(spec: KernelSpec) -> str | None:
    """The condition on BLOCK under which `spec`'s kernel loads its row as halves of nvfp4
    blocks (quant.row_columns): rms_norm + nvfp4 in one BLOCK (quant.WHOLE_BLOCKS), the
    standalone nvfp4 quant (quant.QUANT_WHOLE_BLOCKS); None for every other kernel."""
    if plain_norm_nvfp4(spec) and not spec.pieces:
        return quant_pieces.WHOLE_BLOCKS
    if spec.producer == "quant" and parse_scheme(spec.quant)[0] == "nvfp4":
        return quant_pieces.QUANT_WHOLE_BLOCKS
    return None


def kernel_source(spec: KernelSpec) -> str:
    whole_blocks = whole_blocks_of(spec)
    helpers, _, _ = quant_pieces.epilogue(
        spec.quant, spec.producer == "quant", whole_blocks=whole_blocks
    )
    piece_helper = ""  # a `pieces` kernel's helper: it calls conversions too
    if spec.pieces:
        piece_helper = _piece_epilogue(spec)
        body = _pieces_body(spec)
        how = f"One row per program, held as {spec.pieces} pieces of BLOCK columns"
    elif spec.two_pass:
        if (spec.producer, parse_scheme(spec.quant)[0]) != ("quant", "per_token"):
            raise ValueError(f"no two-pass kernel for {spec.describe()}")
        body = quant_pieces.per_token_two_pass(spec.quant)
        how = "One row per program, in two passes over its quarters"
    elif spec.rows_per_program:
        body = _rows_body(spec)
        how = f"{spec.rows_per_program} rows per program, each next row loaded early"
    else:
        body = _row_body(spec)
        how = "A tile of a row per program" if spec.row_tiles else "One row per program"
    if spec.full_block and (spec.pieces or spec.two_pass or spec.row_tiles):
        raise ValueError(
            f"n_cols is BLOCK only where a program has a whole row in one BLOCK: {spec.describe()}"
        )
    rows_param = norm.ROWS_PARAM if spec.rows_per_program else ""
    return (
        f'"""irfuse generated kernel {spec.name}.\n\nFuses: {spec.describe()}.\n'
        f'{how}; see irfuse/kernels for the pieces."""\n\n'
        "import triton\nimport triton.language as tl\n"
        f"{norm.ROUND_TO}{norm.conversions_in(body + piece_helper)}{helpers}{piece_helper}\n"
        f"{norm.SIGNATURE.format(name=spec.name, rows_param=rows_param)}{body}"
    )


def _row_body(spec: KernelSpec) -> str:
    """The body of a row (or row tile) per program: producer, then the quant epilogue."""
    value_dtype = _value_dtype(spec)
    whole_blocks = whole_blocks_of(spec)
    _, preload, store = quant_pieces.epilogue(
        spec.quant, spec.producer == "quant", value_dtype, whole_blocks
    )
    if spec.row_tiles:
        rows = norm.ROW_TILES_LAST_FIRST if spec.per_tensor else norm.ROW_TILES_IN_ORDER
        body = rows + norm.ROW_TILE
    else:
        rows = norm.ROWS_LAST_FIRST if spec.per_tensor else norm.ROWS_IN_ORDER
        body = rows + norm.WHOLE_ROW + (norm.FULL_BLOCK if spec.full_block else "")
    body += norm.ROW_COLUMNS.format(cols=quant_pieces.row_columns(whole_blocks)) + norm.LOAD_ROW
    if spec.producer != "quant":
        body += norm.PRELOAD_WEIGHT
    body += preload
    if spec.producer in ("fused_add_rms_norm", "rms_norm_add"):  # loaded before any norm
        body += norm.LOAD_RESIDUAL
    if spec.normed_x:
        body += norm.norm_of_x(spec.weight_mode)
    if spec.producer == "fused_add_rms_norm":
        body += norm.ADD_RESIDUAL
        body += norm.ROUND_SUM if spec.rounded_sum else ""
    if spec.producer != "quant":
        slots = quant_pieces.AMAX_ROW_SLOTS
        if spec.normalises_with_phase_1_rstd:
            body += norm.RSTD_OF_PHASE_1.format(norm_dtype=value_dtype, slots=slots)
        else:
            body += norm.RMS_NORM.format(norm_dtype=value_dtype)
        if spec.stores_rstd:
            body += norm.STORE_RSTD.format(slots=slots)
        body += norm.weighted(spec.weight_mode)
    if spec.producer == "rms_norm_add":  # the residual added to the norm's rounded result
        body += norm.ADD_RESIDUAL + norm.ROUND_SUM
    if spec.keep_value:
        body += norm.STORE_VALUE
    return body + store


def _rows_body(spec: KernelSpec) -> str:
    """rms_norm + a quant without a residual, `spec.rows_per_program` rows a program: the
    weight and the quant's preload loaded once, then the rows in a loop, each row's
    successor loaded before the row computes (norm.NEXT_ROW)."""
    if spec.producer != "rms_norm" or spec.keep_value or spec.per_tensor:
        raise ValueError(f"no kernel of several rows a program for {spec.describe()}")
    value_dtype = _value_dtype(spec)
    whole_blocks = whole_blocks_of(spec)
    _, preload, store = quant_pieces.epilogue(spec.quant, False, value_dtype, whole_blocks)
    head = norm.WHOLE_ROW + (norm.FULL_BLOCK if spec.full_block else "")
    head += norm.ROW_COLUMNS.format(cols=quant_pieces.row_columns(whole_blocks))
    head += norm.ROWS_OF_A_PROGRAM.format(rows=spec.rows_per_program)
    row = norm.RMS_NORM.format(norm_dtype=value_dtype) + norm.weighted(spec.weight_mode) + store
    loop = norm.NEXT_ROW + textwrap.indent(row, "    ")
    return head + norm.PRELOAD_WEIGHT + preload + loop


def _value_dtype(spec: KernelSpec) -> str:
    """The dtype of the value a quant reads, as the kernel names it."""
    return "tl.float32" if spec.norm_out == "fp32" else "model_dtype"


def _piece_epilogue(spec: KernelSpec) -> str:
    """The helper a `pieces` kernel calls on each piece: the weight step, then nvfp4."""
    if not plain_norm_nvfp4(spec):
        raise ValueError(f"no kernel in pieces for {spec.describe()}")
    store = quant_pieces.nvfp4_store(whole_blocks=None, scales_in_place=True)
    weighted = norm.weighted(spec.weight_mode)
    helper = norm.PIECE_EPILOGUE.format(name=PIECE_EPILOGUE_NAME, weighted=weighted, store=store)
    return quant_pieces.STORE_IN_PLACE + helper


def _pieces_body(spec: KernelSpec) -> str:
    """rms_norm + nvfp4 over a row held as `spec.pieces` pieces of BLOCK columns: every
    piece loaded, the row's rstd, then each piece's weight step and epilogue. (Several
    rows a program in pieces ran 0.75x-0.87x a row a program on an H100: runtime's
    ROWS_PER_PROGRAM comment.)"""
    if spec.rows_per_program:
        raise ValueError(f"no kernel of several rows a program in pieces: {spec.describe()}")
    pieces = range(spec.pieces)
    columns = norm.PIECE_COLUMNS.format(pieces=spec.pieces)
    weights = "".join(norm.PIECE_WEIGHT.format(i=i) for i in pieces) + quant_pieces.NVFP4_PRELOAD
    lines = (" + ".join(f"v{i} * v{i}" for i in pieces[j : j + 4]) for j in pieces[::4])
    squares = "\n        + ".join(lines)
    row = norm.PIECES_NORM.format(norm_dtype=_value_dtype(spec), squares=squares)
    call = norm.PIECE_CALL.format
    row += "".join(call(name=PIECE_EPILOGUE_NAME, i=i, pieces=spec.pieces) for i in pieces)
    loads = "".join(norm.PIECE_LOAD.format(i=i) for i in pieces)
    return norm.ROWS_IN_ORDER + columns + loads + weights + row
