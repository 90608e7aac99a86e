"""Helpers shared by the family test files: random parameters, float64 parameter copies, gradients,
and the checks every family runs against its naive reference.

A plain module, not a conftest: tests/ has no ``__init__.py``, so pytest's default (prepend) import
mode puts tests/ on ``sys.path`` and the test files import it as ``from reference_helpers import ...``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

import attentions
from attentions.core import REFERENCE_BACKENDS

F64 = torch.float64
BACKENDS = tuple(REFERENCE_BACKENDS)  # the shared plain-PyTorch backends every family has: 'torch' and 'sdpa'

Naive = Callable[[torch.Tensor, dict], torch.Tensor]


@dataclass(frozen=True)
class CudaCase:
    """How tests/test_cuda.py checks a family's CUDA backends: one small module of the family, its input size and
    its naive float64 reference. A family's test file (tests/test_<family>.py) defines it as ``CUDA_CASE``, so a
    new family brings its own and no shared table names it."""

    size: tuple[int, int, int]  # batch, height, width
    options: dict[str, Any]  # constructor options besides dim and num_heads
    naive: Callable[[attentions.AttentionModule, torch.Tensor], Naive]  # (module as run, its input) -> reference
    overrides: dict[str, float] = field(default_factory=dict)  # random_module's std by parameter prefix
    # options that replace ``options`` for one backend, where it takes less than the family (NATTEN: no bias table)
    backend_options: dict[str, dict[str, Any]] = field(default_factory=dict)


def cuda_case(family: str) -> CudaCase | None:
    """The family's ``CUDA_CASE`` from its test file ``test_<family>``, or None where there is no such file or it
    defines none."""
    try:
        module = importlib.import_module(f"test_{family}")
    except ModuleNotFoundError as exc:
        if exc.name != f"test_{family}":
            raise
        return None
    return getattr(module, "CUDA_CASE", None)


def eager_backends(family: str) -> tuple[str, ...]:
    """The family's backends that run on this CPU in float64 with a backward, from the registry: the eager ones,
    which the naive float64 references check exactly. (FlexAttention and the Triton kernels compile, and have
    neither float64 nor a backward on the CPU: their own tests check them.)"""
    return tuple(backend for backend in attentions.list_attentions()[family]["backends"]
                 if attentions.backend_available(family, backend, "cpu", backward=True, dtype=F64)[0])


def randomize_(module: torch.nn.Module, seed: int, std: float, overrides: Mapping[str, float] | None = None,
               sort_names: bool = False) -> torch.nn.Module:
    """Overwrite every floating parameter (biases, tables, norms included) with seeded ``randn * std``.

    One float64 generator per call, drawn in ``named_parameters()`` order (by name with
    ``sort_names``). ``overrides`` maps a parameter-name prefix to the std used instead (e.g.
    ``{"conv_offset.1": 1.0}`` for a LayerNorm). The draw is cast to the parameter's dtype before
    scaling, so float32 modules get the same numbers they always did.
    """
    gen = torch.Generator().manual_seed(seed)
    named = list(module.named_parameters())
    if sort_names:
        named.sort(key=lambda item: item[0])
    with torch.no_grad():
        for name, p in named:
            scale = next((s for prefix, s in (overrides or {}).items() if name.startswith(prefix)), std)
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64).to(p.dtype) * scale)
    return module


def random_module(family: str, seed: int = 0, dtype: torch.dtype = F64, *, std: float,
                  overrides: Mapping[str, float] | None = None, sort_names: bool = False,
                  **options) -> attentions.AttentionModule:
    """``attentions.build(family, **options)`` in ``dtype`` with ``randomize_``d parameters."""
    module = attentions.build(family, **options).to(dtype)
    return randomize_(module, seed, std, overrides=overrides, sort_names=sort_names)


def ref_params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Independent float64 leaf copies (requiring grad) of the floating entries of the state_dict."""
    return {k: v.detach().clone().to(F64).requires_grad_(True)
            for k, v in module.state_dict().items() if v.is_floating_point()}


def grads(out: torch.Tensor, inputs: list[torch.Tensor], grad_out: torch.Tensor,
          allow_unused: bool = False) -> list[torch.Tensor]:
    """d(out · grad_out)/d(input) for each input; with ``allow_unused``, zeros where one is unused."""
    got = torch.autograd.grad(out, inputs, grad_out, allow_unused=allow_unused)
    return [torch.zeros_like(i) if g is None else g for i, g in zip(inputs, got)]


def run_module(module: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    """Forward and backward through the module: (output, input grad, {parameter name: grad})."""
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    out.backward(grad_out)
    return out.detach(), x.grad.clone(), {n: p.grad.clone() for n, p in module.named_parameters()}


def run_reference(module: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor, naive: Naive):
    """The same through ``naive(x, params)`` on float64 copies of the module's parameters."""
    p = ref_params(module)
    x = x.detach().clone().to(F64).requires_grad_(True)
    out = naive(x, p)
    names = [n for n, _ in module.named_parameters()]
    got = grads(out, [x] + [p[n] for n in names], grad_out.to(F64))
    return out.detach(), got[0], dict(zip(names, got[1:]))


def check_against_reference(module: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor, naive: Naive,
                            atol: float = 1e-10, rtol: float = 1e-10):
    """Output, input gradient and every parameter gradient of the module equal the naive reference's.

    Returns the module's and the reference's parameter gradients for family-specific checks.
    """
    out, gx, gp = run_module(module, x, grad_out)
    rout, rgx, rgp = run_reference(module, x, grad_out, naive)
    assert out.shape == x.shape
    torch.testing.assert_close(out, rout, atol=atol, rtol=rtol)
    torch.testing.assert_close(gx, rgx, atol=atol, rtol=rtol)
    assert set(gp) == set(rgp)
    for name in gp:
        torch.testing.assert_close(gp[name], rgp[name], atol=atol, rtol=rtol, msg=name)
    return gp, rgp


def check_float32_against_reference(module: torch.nn.Module, x: torch.Tensor, naive: Naive,
                                    atol: float, rtol: float) -> None:
    """A float32 module on a float32 input stays float32 and is close to the float64 reference."""
    out = module(x)
    assert out.dtype == torch.float32
    ref = naive(x.double(), ref_params(module))
    torch.testing.assert_close(out.double(), ref, atol=atol, rtol=rtol)


def check_backend_switch(module: attentions.AttentionModule, x: torch.Tensor,
                         atol: float = 1e-12, rtol: float = 1e-12) -> None:
    """torch -> sdpa on a live module keeps every state_dict entry and the output; back to torch
    gives the very same output again."""
    assert module.backend == "torch"
    before = {k: v.clone() for k, v in module.state_dict().items()}
    out_torch = module(x)
    module.backend = "sdpa"
    assert module.backend == "sdpa"
    after = module.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    torch.testing.assert_close(module(x), out_torch, atol=atol, rtol=rtol)
    module.backend = "torch"
    torch.testing.assert_close(module(x), out_torch, atol=0, rtol=0)
