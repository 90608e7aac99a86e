"""Every backend that runs on CUDA against its family's naive float64 reference, driven by the registry.

With CUDA (``pytest -m cuda`` on a GPU): for every family and every backend whose record lists
"cuda", a small module with random weights on a random input, in bfloat16 and, where the backend
takes it, float32. Its output and, where the backend has a backward there, the gradients of the
input and of every parameter are compared with the family's naive float64 reference (imported
from the family's test file), computed on the CPU from float64 copies of the same weights and
input. The verdict is the harness's rule (``bench.core.accuracy.judge``): each tensor's norm-relative error
from the naive float64 values within max(2 × the family's reference backend's own error in the same
dtype, the dtype's floor).
A backend that cannot run there (xformers not installed, say) skips with the registry's reason, a
call that a kernel refuses (SDPA's flash kernel in float32) with the backend's own refusal.

Without CUDA (CI): only the float32 ``torch`` and ``sdpa`` cases run, on the CPU, in a few
seconds; they check this file's machinery. Every other case skips as "needs CUDA".

FlexAttention compiles once per shape and dtype: one shape per family keeps that to one
compilation per (family, dtype), well under the recompile limit that attentions/core.py sets.
"""

from __future__ import annotations

import copy
from typing import Iterator

import pytest
import torch
from torch import Tensor

import attentions
from attentions import BackendUnavailableError
from bench.core.accuracy import judge as judge_accuracy
from reference_helpers import F64, cuda_case, random_module, ref_params, run_module, run_reference
from registry_cases import is_built_in

pytestmark = pytest.mark.cuda

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CPU_BACKENDS = ("torch", "sdpa")  # what runs without CUDA, in float32: this file's own check in CI
DIM, HEADS = 32, 2
WEIGHT_STD = 0.3  # softmax logits of a few units: peaked enough to matter, not so peaked that bf16 rounding rules


def cuda_backend_cases() -> list:
    """(family, backend, dtype) for every registered backend that lists "cuda": bfloat16 always,
    float32 where the backend declares it."""
    cases = []
    for family, listing in attentions.list_attentions().items():
        for backend, record in listing["backends"].items():
            if "cuda" not in record["devices"]:
                continue
            dtypes = [torch.bfloat16] + ([torch.float32] if "float32" in record["dtypes"] else [])
            cases += [pytest.param(family, backend, dtype, id=f"{family}-{backend}-{dtype_name(dtype)}")
                      for dtype in dtypes]
    return cases


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def skip_reason(family: str, backend: str, dtype: torch.dtype, backward: bool) -> str | None:
    """Why this case cannot run here, or None. On the CPU only the float32 torch and sdpa cases run."""
    if DEVICE == "cpu" and (backend not in CPU_BACKENDS or dtype != torch.float32):
        ok, reason = attentions.backend_available(family, backend, "cpu", backward=backward)
        if ok:
            reason = (f"{backend!r} in {dtype_name(dtype)} is for the GPU; without CUDA only the float32 "
                      f"{' and '.join(map(repr, CPU_BACKENDS))} cases run, to check this file's machinery")
        return f"needs CUDA: {reason}"
    ok, reason = attentions.backend_available(family, backend, DEVICE, backward=backward)
    return None if ok else reason


def judge(got: dict[str, Tensor], reference: dict[str, Tensor], expected: dict[str, Tensor], label: str) -> None:
    """The harness's verdict over the output and the gradients (in that order): ``got`` against the naive
    float64 ``expected``, each tensor within max(2 × the reference backend's own error, the dtype's floor);
    on failure the message gives every tensor's errors and bound."""
    names = list(expected)
    dtype = dtype_name(got["output"].dtype)
    measured = judge_accuracy([got[n].cpu() for n in names], [reference[n].cpu() for n in names],
                              list(expected.values()), names, dtype)
    reason = measured.mismatch_reason()
    assert reason is None, f"{label}: {reason}; per tensor (error, reference's, bound): " + ", ".join(
        f"{name} {e:.1e}/{r:.1e}/{b:.1e}" for name, e, r, b in zip(names, measured.errors, measured.reference_errors,
                                                                    measured.bounds))


@pytest.fixture(autouse=True)
def exact_float32() -> Iterator[None]:
    """float32 is judged at 1e-4 against float64: no TF32 in cuBLAS, nor in cuDNN (whose
    convolutions use it by default)."""
    switches = (torch.backends.cuda.matmul, torch.backends.cudnn)
    before = [switch.allow_tf32 for switch in switches]
    for switch in switches:
        switch.allow_tf32 = False
    yield
    for switch, allowed in zip(switches, before):
        switch.allow_tf32 = allowed


@pytest.mark.parametrize("family, backend, dtype", cuda_backend_cases())
def test_backend_matches_naive_reference(family: str, backend: str, dtype: torch.dtype) -> None:
    """Output and (where the backend has a backward here) every gradient against the naive float64
    reference on the same rounded weights and input."""
    case = cuda_case(family)
    if case is None:
        if is_built_in(family):
            pytest.fail(f"the package's family {family!r} has no CUDA_CASE in tests/test_{family}.py: add one "
                        f"(reference_helpers.CudaCase), with its naive float64 reference")
        pytest.skip(f"{family!r} is a family of one's own (from another module): no CUDA_CASE in a test_{family}.py")
    module = random_module(family, seed=0, std=WEIGHT_STD, overrides=case.overrides, dim=DIM, num_heads=HEADS,
                           backend=backend, **{**case.options, **case.backend_options.get(backend, {})})
    has_backward = module.backends[backend].has_backward(DEVICE)
    reason = skip_reason(family, backend, dtype, backward=has_backward)
    if reason:
        pytest.skip(reason)
    module = module.to(DEVICE, dtype)
    generator = torch.Generator().manual_seed(1)
    x, grad_out = (torch.randn(*case.size, DIM, generator=generator, dtype=F64).to(DEVICE, dtype) for _ in range(2))
    naive = case.naive(module, x)
    exact = copy.deepcopy(module).to("cpu", F64)  # the weights as run (rounded to dtype), in float64
    reference = copy.deepcopy(module)
    reference.backend = module.reference_backend
    try:
        if has_backward:
            got, ref = ({"output": out, "input": grad_x, **grad_params}
                        for out, grad_x, grad_params in (run_module(m, x, grad_out) for m in (module, reference)))
        else:
            with torch.no_grad():
                got, ref = {"output": module(x)}, {"output": reference(x)}
    except BackendUnavailableError as refusal:
        pytest.skip(str(refusal))

    if has_backward:
        out, grad_x, grad_params = run_reference(exact, x.cpu(), grad_out.cpu(), naive)
        expected = {"output": out, "input": grad_x, **grad_params}
    else:
        expected = {"output": naive(x.cpu().to(F64), ref_params(exact)).detach()}
    judge(got, ref, expected, f"{family} '{backend}' in {dtype_name(dtype)} on {DEVICE}")
