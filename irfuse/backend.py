"""`torch.compile(model, backend="irfuse", options={...})`.

Inductor compiles the graph with irfuse's pass installed as its post-grad custom pass
(`options={"inner": "eager"}` runs the same pass on the AOT graph and executes it
eagerly). Options: `passes` (an xdsl pipeline, "a,b{opt=v}", or a list of names;
default: the whole pipeline), `dump_dir` (or `IRFUSE_DUMP_DIR`), `inner`, `attention`
(auto | irfuse | sdpa), `graph_launch` (all | static | off: which fused kernels
Inductor's wrapper launches itself); any other key is an Inductor config
option. `mode` works as for Inductor ("reduce-overhead" = CUDA graphs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from irfuse.pipeline import Options, transform_graph


class IrfuseGraphPass(CustomGraphPass):
    """Inductor post-grad custom pass; `uuid` keys Inductor's FX graph cache, so a cache
    entry made with another irfuse version or other options is never reused. With
    `attention="auto"` on a GPU the pass's result depends on measured decisions, which
    persist in a file (irfuse/lowering/autotune.py): the uuid then also carries the
    file's token, so that a cached graph is replayed only while the decisions it was
    compiled with are the file's. Where the file cannot be written, the uuid is None,
    which makes Inductor bypass its cache."""

    def __init__(self, options: Options) -> None:
        self.options = options

    def __call__(self, graph: fx.Graph) -> None:
        transform_graph(graph, self.options)

    def uuid(self) -> str | None:
        from irfuse.lowering.autotune import can_measure, decisions_token

        if self.options.attention == "auto" and can_measure():
            token = decisions_token()
            return None if token is None else f"{self.options.cache_key()}-{token}"
        return self.options.cache_key()


def irfuse_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    mode: str | None = None,
    options: dict[str, object] | None = None,
) -> Callable[..., Any]:
    opts = Options.from_dict(options)
    autograd = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs
    )
    opts = dataclasses.replace(opts, autograd=autograd)
    # Registers the runtime ops: a graph served from Inductor's cache calls them without
    # the pass having run in this process.
    import irfuse.lowering.attention  # noqa: F401
    import irfuse.lowering.runtime  # noqa: F401

    if opts.inner == "eager":
        # Inductor options have nothing to configure; a key Inductor does not know either
        # is a typo (under Inductor, its config refuses one)
        if unknown := unknown_options(opts):
            raise ValueError(f"irfuse: unknown option(s) {unknown}: {NEITHER}")
        return _eager(gm, example_inputs, opts)
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    patches: dict[str, object] = {**(list_mode_options(mode) if mode else {}), **opts.inductor}
    patches["post_grad_custom_pre_pass"] = IrfuseGraphPass(opts)
    return compile_fx(gm, example_inputs, config_patches=patches)


NEITHER = "neither irfuse's (passes, dump_dir, inner, attention, graph_launch) nor Inductor's"


def unknown_options(opts: Options) -> list[str]:
    """The keys of the options neither irfuse nor Inductor knows."""
    return sorted(key for key in opts.inductor if not _inductor_option(key))


def _inductor_option(key: str) -> bool:
    from torch._inductor import config

    return key in config.get_config_copy() or hasattr(config, key)


def _eager(gm: fx.GraphModule, example_inputs: Sequence[Any], opts: Options) -> Callable[..., Any]:
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.fx_passes import joint_graph
    from torch._inductor.fx_passes.post_grad import remove_noop_ops

    def forward_compiler(graph_module: fx.GraphModule, _: Sequence[Any]) -> Callable[..., Any]:
        # The graph as Inductor's joint-graph passes leave it for irfuse's pass: no-op
        # casts and views removed (torchao's identity reshapes, `view(x, [1, -1, S, D])`
        # of a [1, H, S, D] attention output), tensor constants folded (`aten.full`), so
        # that the pass matches, and `irfuse.explain` reports, what it does under Inductor.
        remove_noop_ops(graph_module.graph)
        joint_graph.constant_fold_uniform_value(graph_module)
        joint_graph.lazy_init()
        joint_graph.early_patterns.apply(graph_module.graph)
        transform_graph(graph_module.graph, opts)
        graph_module.recompile()
        return make_boxed_func(graph_module.forward)

    def backward_compiler(graph_module: fx.GraphModule, _: Sequence[Any]) -> Callable[..., Any]:
        return make_boxed_func(graph_module.forward)

    # Grad mode as the caller has it: under autograd (a parameter that requires grad) the
    # forward keeps what the backward saves (the pass leaves those values alone, as under
    # Inductor) and the backward runs as traced.
    compiler = aot_autograd(fw_compiler=forward_compiler, bw_compiler=backward_compiler)
    return compiler(gm, example_inputs)
