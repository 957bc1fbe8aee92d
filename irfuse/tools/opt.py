"""irfuse-opt: xdsl-opt with irfuse's dialects, passes and the `triton` target.

    irfuse-opt dump.mlir -p raise-rms-norm,raise-fp8-quant,fuse-rms-norm-quant [-t triton]

Errors (malformed IR, a failed verifier, an unknown pass) are one line,
`irfuse-opt: <file>:<line>:<col>: <message>`, with exit status 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from xdsl.utils.exceptions import (
    ArgSpecParseError,
    DiagnosticException,
    ParseError,
    VerifyException,
)
from xdsl.xdsl_opt_main import xDSLOptMain

from irfuse.tools.universe import IRFUSE_UNIVERSE
from irfuse.transforms import PASSES, pipeline_error


class IrfuseOptMain(xDSLOptMain):
    """Registers irfuse's universe even when its entry point is not installed."""

    def register_all_dialects(self) -> None:
        super().register_all_dialects()
        for name, factory in IRFUSE_UNIVERSE.all_dialects.items():
            if name not in self.ctx.registered_dialect_names:
                self.ctx.register_dialect(name, factory)

    def register_all_passes(self) -> None:
        super().register_all_passes()
        for name, factory in IRFUSE_UNIVERSE.all_passes.items():
            self.available_passes.setdefault(name, factory)

    def register_all_targets(self) -> None:
        super().register_all_targets()
        for name, factory in IRFUSE_UNIVERSE.all_targets.items():
            self.available_targets.setdefault(name, factory)


def _one_line(error: Exception, input_name: str) -> str:
    if isinstance(error, ParseError):
        where = error.span.get_location()
        return f"{where.file}:{where.line}:{where.col}: {error.msg}"
    message = str(error).strip()
    if isinstance(error, DiagnosticException):
        cause = error.__cause__ or error.__context__
        if isinstance(cause, VerifyException):
            message = str(cause)
        else:  # the last line of xDSL's annotated listing holds the message
            marked = [ln.strip(" |") for ln in message.splitlines() if ln.strip().startswith("|")]
            message = marked[0] if marked else message.splitlines()[-1]
    return f"{input_name}: {message.splitlines()[0] if message else type(error).__name__}"


# xdsl-opt's flags that take a value (the input file is the positional argument)
_VALUE_FLAGS = ("-p", "--passes", "-t", "--target", "-o", "--output-file", "-f", "--frontend")


def _input_name(args: Sequence[str]) -> str:
    after_flag = False
    for arg in args:
        if not after_flag and not arg.startswith("-"):
            return arg
        after_flag = arg in _VALUE_FLAGS
    return "<stdin>"


def _with_known_passes(message: str) -> str:
    if "Unrecognized passes" not in message:
        return message
    return f"{message}; irfuse's passes: {', '.join(PASSES)}"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    input_name = _input_name(args)
    try:
        IrfuseOptMain(description="irfuse modular optimizer driver", args=args).run()
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ParseError, DiagnosticException, VerifyException, ValueError, KeyError) as error:
        print(_with_known_passes(f"irfuse-opt: {_one_line(error, input_name)}"), file=sys.stderr)
        return 1
    except ArgSpecParseError as error:  # a malformed pipeline (xDSL: a BaseException)
        print(f"irfuse-opt: -p: {pipeline_error(error)}", file=sys.stderr)
        return 1
    except Exception as error:  # an unknown pass and friends: xDSL raises plain Exception
        print(_with_known_passes(f"irfuse-opt: {input_name}: {error}".splitlines()[0]),
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
