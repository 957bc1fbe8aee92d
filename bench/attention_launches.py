"""Launch every attention config class once on the GPU and check it against the reference
ops: the tiles, stages and register caps chosen by head dims, query rows, masks and
dtypes must compile, fit (shared memory, registers) and compute the right thing.

    python bench/attention_launches.py

Not a timing: a sweep to run after changing prefill_config / split_config or the
kernels. It prints one line per config and exits non-zero if any failed (thirteenth
session: 18 of the first sweep's configs failed to launch; bench/RESULTS.md).
"""

from __future__ import annotations

import re
import sys

import torch

import irfuse.ops as ref
from irfuse.kernels.attention import uses_decode
from irfuse.lowering.attention import kernel_attention

BF16, FP16 = torch.bfloat16, torch.float16


def mask_of(kind: str, keep: torch.Tensor) -> torch.Tensor | None:
    """none | bool | padding (keys only) | bf16 | fp32 (additive, -inf where hidden)."""
    if kind in ("bool", "padding"):
        return keep if kind == "bool" else keep[:, :, :1].contiguous()
    if kind == "none":
        return None
    dtype = {"bf16": BF16, "fp32": torch.float32}[kind]
    return torch.zeros(keep.shape, device="cuda", dtype=dtype).masked_fill(~keep, float("-inf"))


def launch(dtype, d, dv, b, hq, hkv, sq, skv, mask_kind, epilogue) -> str | None:
    """None if the config runs and matches the reference, else what went wrong."""
    q = torch.randn(b, hq, sq, d, device="cuda", dtype=dtype)
    k = torch.randn(b, hkv, skv, d, device="cuda", dtype=dtype)
    v = torch.randn(b, hkv, skv, dv, device="cuda", dtype=dtype)
    keep = torch.rand(b, 1, sq, skv, device="cuda") > 0.3
    keep[..., 0] = True
    mask = mask_of(mask_kind, keep)
    scale = torch.tensor([0.05], device="cuda") if epilogue != "none" else None
    layout = "bs_hd" if epilogue in ("nvfp4", "per_token") else "bhsd"
    try:
        out = kernel_attention(q, k, v, scale, d**-0.5, "none", layout, False, epilogue, mask)[0]
        torch.cuda.synchronize()
    except Exception as error:  # noqa: BLE001 (the sweep reports every failure)
        needed = re.search(r"Required: (\d+)", str(error))
        return f"{type(error).__name__}" + (f" ({needed.group(1)} B shared)" if needed else "")
    if epilogue == "none":
        expected = ref.attention(q, k, v, mask, d**-0.5, "none", False)[0]
        error = (out.float() - expected.float()).abs().max().item()
        return None if error <= 0.05 else f"max error {error:.3g}"
    return None


def configs():
    shapes = [(2, 4, 2, 300, 300), (2, 4, 2, 2053, 2053)]  # short, long prefill
    decodes = [(17, 64, 8, 8, 2048), (34, 64, 8, 8, 2048), (17, 32, 8, 1, 2048)]
    masks = ["none", "bool", "padding", "bf16", "fp32"]
    for dtype in (BF16, FP16):
        for d in (64, 128, 256):
            for shape in shapes + decodes:
                for mask in masks:
                    yield dtype, d, d, *shape, mask, "none"
            yield dtype, d, d, *shapes[0], "none", "static"
            yield dtype, d, d, *shapes[0], "none", "nvfp4"
            yield dtype, d, d, *decodes[2], "none", "per_token"
    for d in (80, 96, 192):  # padded to tiles of 128, 128, 256
        for shape in shapes + decodes:
            for mask in ("none", "bool", "bf16"):
                yield BF16, d, d, *shape, mask, "none"
        yield BF16, d, d, *shapes[0], "none", "static"
        yield BF16, d, d, *shapes[0], "none", "nvfp4"
        yield BF16, d, d, *decodes[2], "none", "per_token"
    pairs = [
        (64, 128),
        (128, 64),
        (64, 256),
        (256, 64),
        (128, 256),
        (256, 128),
        (16, 256),
        (192, 128),
    ]  # the last: MLA's prefill (nope + rope keys, 128-wide values)
    for d, dv in pairs:
        for shape in shapes + decodes[:1]:
            for mask in ("none", "fp32"):
                yield BF16, d, dv, *shape, mask, "none"


def main() -> None:
    failures = []
    for config in configs():
        dtype, d, dv, b, hq, hkv, sq, skv, mask, epilogue = config
        kind = "decode" if uses_decode(sq, hq, hkv) else "prefill"
        name = (f"{str(dtype)[6:]} d{d}/{dv} B{b} H{hq}/{hkv} S{sq}x{skv} {kind} mask {mask} "
                f"{epilogue}")  # fmt: skip
        problem = launch(*config)
        print(name, problem or "ok", flush=True)
        if problem:
            failures.append(f"{name}: {problem}")
        torch.cuda.empty_cache()
    print(f"{len(failures)} failed", *failures, sep="\n")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
