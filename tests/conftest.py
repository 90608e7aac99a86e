"""Session-wide test settings."""

from __future__ import annotations

import pytest
import torch

from small_results import make_small_results


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
