"""xDSL dialects of irfuse: `irfuse` (domain ops) and `aten` (the generic call op)."""

from xdsl.context import Context
from xdsl.dialects.arith import Arith
from xdsl.dialects.builtin import Builtin
from xdsl.dialects.func import Func

from irfuse.dialects.aten import Aten
from irfuse.dialects.irfuse import Irfuse


def make_context() -> Context:
    """A context with every dialect an irfuse module uses."""
    ctx = Context()
    for dialect in (Builtin, Func, Arith, Aten, Irfuse):
        ctx.load_dialect(dialect)
    return ctx
