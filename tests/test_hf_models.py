"""Hugging Face transformers models as they are written (tiny configs, random weights),
every projection of their decoder layers quantized per row as torchao does it: what
fuses in a decode step against a static KV cache (two prompts, a key of one masked out),
what is left and why, and the logits against eager. These are the graphs real users
compile: HF's attention interface, its masks, RoPE, fused qkv projections (Phi-3), q/k
norms (Qwen3, Gemma 3, OLMo 2), Gemma's and GLM-4's sandwich norms, OLMo 2's post-norms."""

from __future__ import annotations

import pytest
import torch

from irfuse.pipeline import capture_reports
from tests.models import Float8Linear

transformers = pytest.importorskip("transformers")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float16  # interpreter: no bf16 dot
BATCH, PROMPT, CACHE = 2, 5, 16

NORM = "irfuse_rms_norm_per_token_in_dtype_fp8"
ADD_NORM = "irfuse_add_rounded_rms_norm_per_token_in_dtype_fp8"
ATTENTION = "irfuse_attention_per_token_in_dtype_fp8"
LLAMA_KERNELS = [NORM, ATTENTION, ADD_NORM, ADD_NORM, ATTENTION, ADD_NORM]
GEMMA_NORM = "irfuse_rms_norm_gemmaw_per_token_in_dtype_fp8"
SANDWICH = "irfuse_normed_add_rounded_rms_norm_gemmaw_per_token_in_dtype_fp8"
GEMMA_KERNELS = [GEMMA_NORM, ATTENTION, SANDWICH, SANDWICH, ATTENTION, SANDWICH]
PLAIN_SANDWICH = "irfuse_normed_add_rounded_rms_norm_per_token_in_dtype_fp8"
GLM4_KERNELS = [NORM, ATTENTION, PLAIN_SANDWICH, PLAIN_SANDWICH, ATTENTION, PLAIN_SANDWICH]
POST_NORM = "irfuse_rms_norm_add_fp32w_per_token_in_dtype_fp8"
OLMO2_KERNELS = [ATTENTION, POST_NORM, POST_NORM, ATTENTION, POST_NORM]
NO_PRODUCER = "no producer to fuse into: left to the inner compiler"
NO_QUANT = "no fp8 quant reads its value"


def _config(name: str):
    sizes = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        vocab_size=96,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config = getattr(transformers, name)(**sizes)
    config._attn_implementation = "sdpa"
    return config


def _quantized_model(name: str):
    """The model with every linear of its layers (not lm_head) a per-row Float8Linear."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_config(name))
    for layer in model.model.layers:
        for module in list(layer.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, torch.nn.Linear):
                    setattr(module, child_name, Float8Linear.replacing(child))
    return model.to(DEVICE, DTYPE).eval()


def _decode_step(model, token, cache, position, mask):
    return model(
        token, attention_mask=mask, past_key_values=cache, cache_position=position, use_cache=True
    ).logits


def _padding_mask(length: int) -> torch.Tensor:
    """The 2-D attention mask of a batch whose first prompt has its third token masked
    out. (Not left padding: its padded query rows see no key, their attention output is
    0, and torchao's per-row scale of a zero row, 0 / 0, makes their keys and values
    NaN, eager's too.)"""
    mask = torch.ones(BATCH, length, dtype=torch.long, device=DEVICE)
    mask[0, 2] = 0
    return mask


def _prefilled_caches(model, config, n: int = 2):
    """`n` static caches, each holding the same (masked) prompts' keys and values,
    and the next token (a decode step writes its cache: one for eager, one compiled)."""
    prompt = torch.randint(3, config.vocab_size, (BATCH, PROMPT), device=DEVICE)
    positions = torch.arange(PROMPT, device=DEVICE)
    caches = [transformers.StaticCache(config=config, max_cache_len=CACHE) for _ in range(n)]
    for cache in caches:
        logits = _decode_step(model, prompt, cache, positions, _padding_mask(PROMPT))
    return caches, logits[:, -1:].argmax(-1)


# kernels in launch order; the reasons (of raise-rms-norm, raise-dynamic-fp8-quant) left
# (down_proj's quant reads silu(gate) * up; lm_head, not quantized, reads the final norm)
MODELS = {
    "LlamaConfig": (LLAMA_KERNELS, {NO_PRODUCER: 2, NO_QUANT: 1}),
    # qkv_proj and gate_up_proj: one quant each, sliced after the matmul
    "Phi3Config": (LLAMA_KERNELS, {NO_PRODUCER: 2, NO_QUANT: 1}),
    # q / k norms over each head: no quant reads them (RoPE does), left to Inductor
    "Qwen3Config": (LLAMA_KERNELS, {NO_PRODUCER: 2, NO_QUANT: 5}),
    # Gemma's (1 + w) norms; each residual add between two norms (the post-attention /
    # post-feedforward norm, the add, the next pre-norm and its quant) is one sandwich
    # kernel; the last layer's post-feedforward norm, whose sum only the final norm reads,
    # is left with it
    "Gemma3TextConfig": (GEMMA_KERNELS, {NO_PRODUCER: 2, NO_QUANT: 6}),
    # Llama's layers (no sliding window by default)
    "MistralConfig": (LLAMA_KERNELS, {NO_PRODUCER: 2, NO_QUANT: 1}),
    # OLMo 2's post-norms: no norm before a projection; each quant reads a residual sum
    # `r + norm(x)` (fp32 weight), one kernel with its norm (fuse-norm-add-quant), or the
    # embedding (layer 0's q, k, v); the q / k norms (over all heads), the last layer's
    # post-feedforward norm and the final norm reach no quant
    "Olmo2Config": (OLMO2_KERNELS, {NO_PRODUCER: 5, NO_QUANT: 6}),
    # GLM-4's sandwich norms with HF's plain weight (post_self_attn_layernorm, the add,
    # post_attention_layernorm; post_mlp_layernorm, the add, the next input_layernorm);
    # the last layer's post_mlp_layernorm reaches only the final norm; qkv has a bias
    "Glm4Config": (GLM4_KERNELS, {NO_PRODUCER: 2, NO_QUANT: 2}),
}


def _compiled_decode_step(name: str, attention: str):
    """(the compiled step's logits, eager's, the report) of model `name`'s decode step
    with the `attention` option."""
    model = _quantized_model(name)
    with torch.no_grad():
        (cache, eager_cache), token = _prefilled_caches(model, model.config)
        position = torch.tensor([PROMPT], device=DEVICE)
        mask = _padding_mask(PROMPT + 1)
        expected = _decode_step(model, token, eager_cache, position, mask)
        options = {"inner": "eager", "attention": attention}
        step = torch.compile(_decode_step, backend="irfuse", options=options)
        with capture_reports() as reports:
            got = step(model, token, cache, position, mask)
    (report,) = reports
    return got, expected, report


@pytest.mark.parametrize("name", list(MODELS))
def test_a_decode_step_of_a_transformers_model_fuses_and_matches_eager(name):
    kernels, left = MODELS[name]
    got, expected, report = _compiled_decode_step(name, "irfuse")
    assert report.kernels == kernels, str(report)
    reasons = [r["reason"] for r in report.rejected]
    found = {reason: sum(r.startswith(reason) for r in reasons) for reason in left}
    assert found == left and len(reasons) == sum(left.values()), str(report)
    span = expected.float().abs().amax()
    torch.testing.assert_close(got.float(), expected.float(), atol=0.05 * span, rtol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_norm_fusions_alone_give_eagers_logits(name):
    """With the attention left to SDPA, what differs from eager is the norm / quant
    kernels alone: through the interpreter they reproduce eager's bytes, so the logits are
    eager's to the bit (a tolerance would let a norm kernel's error through: the attention's
    fp8 rounding moves the logits more). On the GPU, eager's reductions run in another
    order: the logits within the tolerance above."""
    kernels, _ = MODELS[name]
    got, expected, report = _compiled_decode_step(name, "sdpa")
    assert report.kernels == [k for k in kernels if k != ATTENTION], str(report)
    if DEVICE == "cpu":
        assert torch.equal(got, expected)
    else:
        span = expected.float().abs().amax()
        torch.testing.assert_close(got.float(), expected.float(), atol=0.05 * span, rtol=0)


@pytest.mark.slow
def test_inductor_fuses_a_transformers_decode_step_as_explain_reports():
    """Under Inductor (its joint-graph passes run before irfuse's) the same kernels fuse
    as `explain` (the eager inner compiler) reports, and the logits match eager."""
    model = _quantized_model("LlamaConfig")
    with torch.no_grad():
        (cache, eager_cache), token = _prefilled_caches(model, model.config)
        position = torch.tensor([PROMPT], device=DEVICE)
        mask = _padding_mask(PROMPT + 1)
        expected = _decode_step(model, token, eager_cache, position, mask)
        step = torch.compile(
            _decode_step, backend="irfuse", options={"attention": "irfuse", "fx_graph_cache": False}
        )
        with capture_reports() as reports:
            got = step(model, token, cache, position, mask)
    (report,) = reports
    assert report.kernels == LLAMA_KERNELS, str(report)
    span = expected.float().abs().amax()
    torch.testing.assert_close(got.float(), expected.float(), atol=0.05 * span, rtol=0)
