"""Session-wide test settings."""

from __future__ import annotations

import gc
import importlib
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

import background  # noqa: E402
from small_results import make_small_results  # noqa: E402  (imports attentions, hence triton)

# A researcher's own families and backends: ATTENTION_EXTENSIONS names the modules that register them (separated by
# commas), imported here, before any test module, as a user's wrapper script imports them before bench.cli.main
# (docs/extending.md). The tests that take their families and backends from the registry (tests/registry_cases.py)
# then cover them too: ``ATTENTION_EXTENSIONS=my_attention python -m pytest tests/test_registry.py``.
EXTENSIONS_VARIABLE = "ATTENTION_EXTENSIONS"
for _name in filter(None, (part.strip() for part in os.environ.get(EXTENSIONS_VARIABLE, "").split(","))):
    importlib.import_module(_name)


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected what they do not run
def pytest_collection_modifyitems(config, items):
    """Start, in the background, the real runs that the chosen tests only read (tests/background.py), and the
    ahead-of-time compile check of tests/test_triton_aot.py (the slow tier's, with one compile process): the rest
    of the suite runs on one intra-op thread and leaves the second core mostly idle, so they overlap the other
    tests. Not for --collect-only."""
    if config.option.collectonly:
        return
    background.schedule(config, items)  # the chosen tests' expensive real runs, on the idle core (tests/background.py)
    if any("aot_results" in getattr(item, "fixturenames", ()) for item in items):
        from test_triton_aot import COMPILE_CHECK, start_compile_check
        config.stash[COMPILE_CHECK] = start_compile_check(Path(tempfile.mkdtemp(prefix="triton-aot-")), workers=1)


def pytest_collection_finish(session):
    """Freeze what collection left alive (the imported modules, torch's among them, and the parametrisations) out
    of the garbage collector's reach: the harness collects garbage before every case (``free_memory``), and a full
    collection through the ~500,000 objects of a test process takes 0.2 s, which the suite's hundreds of in-process
    cases paid each time. Objects made by the tests themselves are collected as before."""
    gc.collect()
    gc.freeze()


def pytest_unconfigure(config):
    """Stop the background jobs and the compile check if the session ended before they did, and remove their
    folders."""
    background.unschedule(config)
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
