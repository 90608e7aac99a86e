"""Session-wide test settings."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without CUDA the suite's Triton kernels run under Triton's interpreter, on CPU tensors. It must
    # be on before triton is first imported (FlexAttention imports it with attentions), since
    # triton's own library functions are built for one mode or the other.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from small_results import make_small_results  # noqa: E402  (imports attentions, hence triton)


@pytest.fixture(scope="session", autouse=True)
def _single_intra_op_thread():
    """The tensors in these tests are tiny: extra intra-op threads only spin, and on a loaded 2-core
    machine that made the BRA tests ~20x slower. One thread for the session, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_results(tmp_path_factory):
    """Path of a small real results file with a mismatch and two oom rows injected."""
    return make_small_results(tmp_path_factory)
