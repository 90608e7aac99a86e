"""Session-wide test settings."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # Without CUDA the suite's Triton kernels run under Triton's interpreter, on CPU tensors. It must
    # be on before triton is first imported (FlexAttention imports it with attentions), since
    # triton's own library functions are built for one mode or the other.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from small_results import make_small_results  # noqa: E402  (imports attentions, hence triton)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they do not run
def pytest_collection_modifyitems(config, items):
    """Start the ahead-of-time compile check of tests/test_triton_aot.py now, in the background, with
    one compile process: the rest of the suite runs on one intra-op thread and leaves the second
    core mostly idle, so the check's two minutes of compiling overlap the other tests."""
    if any("aot_results" in getattr(item, "fixturenames", ()) for item in items):
        from test_triton_aot import COMPILE_CHECK, start_compile_check
        config.stash[COMPILE_CHECK] = start_compile_check(Path(tempfile.mkdtemp(prefix="triton-aot-")), workers=1)


def pytest_unconfigure(config):
    """Stop the compile check if the session ended before it did, and remove its folder."""
    from test_triton_aot import COMPILE_CHECK
    check = config.stash.get(COMPILE_CHECK, None)
    if check is not None:
        check.process.kill()
        check.process.wait()
        shutil.rmtree(check.folder, ignore_errors=True)


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
