"""Test setup: CPU runs the real generated Triton kernels through the interpreter."""

import os

import pytest

# Before triton is imported anywhere: on a machine without CUDA, kernels run on CPU
# tensors through Triton's interpreter.
if not os.environ.get("IRFUSE_TEST_NO_INTERPRET"):
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:  # pragma: no cover
        os.environ["TRITON_INTERPRET"] = "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_dynamo(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Each test compiles from scratch, with its own kernel cache."""
    import torch

    os.environ.setdefault("IRFUSE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "kernels"))
    torch._dynamo.reset()
