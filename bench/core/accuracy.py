"""Accuracy of a pass: its distance from float64 math, judged against the reference backend's own.

- **Exact.** The family's reference backend run in float64 on the *same rounded* weights and inputs as
  the case (a bf16 module's weights and input, converted to float64 exactly), on the case's device.
  This is what the case would compute with no rounding at all, so a distance from it is an error,
  not a disagreement between two rounded computations.
- **Error.** For the output, and for fwd+bwd every gradient: the norm-relative distance from exact,
  ‖got − exact‖ / ‖exact‖. A gradient is judged against its own norm or 1e-3 of the largest gradient
  norm, whichever is larger, so that a gradient that is zero in exact arithmetic (a key bias under
  softmax, say) is not judged on rounding noise alone. ``max_abs_err`` is the largest elementwise
  distance over all of them.
- **Bound.** The reference backend run in the case's dtype is the yardstick of what that dtype costs:
  each tensor's bound is ``ERROR_MULTIPLE`` × the reference's own error on that tensor, or the
  dtype's ``ERROR_FLOOR``, whichever is larger. A case is a mismatch when any tensor exceeds its
  bound. The row reports the *deciding* tensor, the one closest to (or furthest beyond) its bound:
  its name, its error, the reference's error on it and its bound.
- **Non-finite values** (NaN, ±inf) are counted, never compared: one in the case's tensors where the
  exact value is finite makes the case a mismatch, with inf errors; an exact pass with any cannot
  judge anything (``NonFiniteReferenceError``). A reference in low precision that overflows where
  the exact pass does not has an infinite error there, which bounds nothing: that tensor is then
  judged on its finiteness alone.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from bench.core.measure import make_pass, pass_tensor_names, uncompiled

# Identifies the rule below in a run's metadata: a change of the rule or its constants changes it.
ACCURACY_METHOD = "float64-exact, bound max(2 x reference error, dtype floor), per tensor"
ERROR_MULTIPLE = 2.0
# Below this a tensor's error is never a mismatch, however exact the reference happens to be there.
# float64: no rounded reference to learn from (it *is* exact), so the floor is the bound: far above an
# honest reordering of sums (1e-15), far below any bug. The others are a few units of each dtype's
# rounding (bf16 2^-8 = 3.9e-3, fp16 2^-11 = 4.9e-4, fp32 2^-24 = 6e-8), below a 1% error in bf16.
ERROR_FLOOR = {"float64": 1e-10, "float32": 1e-5, "float16": 1e-3, "bfloat16": 5e-3}


class NonFiniteReferenceError(RuntimeError):
    """The float64 reference's own output or gradients hold NaN/inf: there is nothing to judge a case against."""


@dataclass(frozen=True)
class Accuracy:
    """A case's output and gradients against exact (float64) math, beside the reference backend's own.

    Per tensor (in ``names``' order): the case's error, the reference backend's error in the same
    dtype, and the bound. ``nonfinite`` maps each tensor to its count of NaN/inf values where the exact
    value is finite (only tensors that have some); such a tensor's error is inf.
    """

    names: tuple[str, ...]
    errors: tuple[float, ...]
    reference_errors: tuple[float, ...]
    bounds: tuple[float, ...]
    floor: float  # the dtype's ERROR_FLOOR
    max_abs: float
    nonfinite: dict[str, int]

    @property
    def deciding(self) -> int:
        """Index of the tensor closest to, or furthest beyond, its bound (the first such)."""
        def excess(index: int) -> float:  # a non-finite error decides; an infinite bound (see judge) never does
            error, bound = self.errors[index], self.bounds[index]
            return math.inf if not math.isfinite(error) else error / bound if bound > 0 else math.inf
        return max(range(len(self.errors)), key=excess)

    @property
    def rel(self) -> float:
        return self.errors[self.deciding]

    @property
    def reference_rel(self) -> float:
        return self.reference_errors[self.deciding]

    @property
    def bound(self) -> float:
        return self.bounds[self.deciding]

    @property
    def tensor(self) -> str:
        return self.names[self.deciding]

    def mismatch_reason(self) -> str | None:
        """Why the case is a mismatch, or None when every tensor is finite and within its bound."""
        if self.nonfinite:
            return (f"{_total(self.nonfinite)} in the output/gradients where float64 has none "
                    f"({_per_tensor(self.nonfinite)})")
        if not self.rel <= self.bound:  # written so that a NaN could never pass
            return (f"{self.tensor}: rel_err {self.rel:.3g} from float64 > bound {self.bound:.3g} (the reference "
                    f"backend's own {self.reference_rel:.3g} × {ERROR_MULTIPLE:g}, at least {self.floor:g})")
        return None


def nonfinite_counts(names: list[str], tensors: list[torch.Tensor],
                     reference: list[torch.Tensor] | None = None) -> dict[str, int]:
    """Per named tensor, its NaN/inf values (only where ``reference``'s are finite, if given); tensors
    without any are left out."""
    counts: dict[str, int] = {}
    for index, (name, tensor) in enumerate(zip(names, tensors)):
        bad = ~tensor.isfinite()
        if reference is not None:
            bad &= reference[index].isfinite()
        count = int(bad.sum())
        if count:
            counts[name] = count
    return counts


def _total(counts: dict[str, int]) -> str:
    """'3 non-finite values (NaN/inf)': the total of ``counts``, for a status_detail."""
    total = sum(counts.values())
    return f"{total} non-finite value{'' if total == 1 else 's'} (NaN/inf)"


def _per_tensor(counts: dict[str, int]) -> str:
    """'output 3, gradient of proj.weight 1': where the non-finite values are, for a status_detail."""
    return ", ".join(f"{name} {count}" for name, count in counts.items())


def relative_errors(results: list[torch.Tensor], exact: list[torch.Tensor]) -> list[float]:
    """Each tensor's norm-relative distance from ``exact`` (``results[0]``, the output, against its own
    norm; each gradient against its own norm or 1e-3 of the largest gradient norm, whichever is larger);
    inf where either side holds a non-finite value, never NaN."""
    norms = [want.double().norm().item() for want in exact]
    gradient_scale = max(norms[1:], default=0.0)
    errors = []
    for index, (got, want) in enumerate(zip(results, exact)):
        if not (got.isfinite().all() and want.isfinite().all()):
            errors.append(math.inf)
            continue
        floor = 1e-3 * gradient_scale if index else 0.0
        errors.append((got.double() - want.double()).norm().item() / max(norms[index], floor, 1e-300))
    return errors


def max_abs_error(results: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """The largest elementwise distance over matching tensors; inf when either side has a NaN/inf."""
    worst = 0.0
    for got, want in zip(results, exact):
        if not (got.isfinite().all() and want.isfinite().all()):
            return math.inf
        worst = max(worst, (got.double() - want.double()).abs().max().item() if got.numel() else 0.0)
    return worst


def judge(results: list[torch.Tensor], reference: list[torch.Tensor], exact: list[torch.Tensor],
          names: list[str], dtype: str) -> Accuracy:
    """The case's ``results`` and the reference backend's (same dtype) against ``exact``, with each
    tensor's bound (see the module docstring)."""
    errors = relative_errors(results, exact)
    reference_errors = relative_errors(reference, exact)
    bounds = [max(ERROR_MULTIPLE * error, ERROR_FLOOR[dtype]) for error in reference_errors]
    return Accuracy(tuple(names), tuple(errors), tuple(reference_errors), tuple(bounds), ERROR_FLOOR[dtype],
                    max_abs_error(results, exact), nonfinite_counts(names, results, exact))


def on_reference_backend(module: torch.nn.Module) -> torch.nn.Module:
    """The module itself when it runs its family's reference backend, else a copy that does."""
    if module.backend == module.reference_backend:
        return module
    reference = copy.deepcopy(module)
    reference.backend = module.reference_backend
    return reference


def exact_pass(module: torch.nn.Module, x: torch.Tensor, phase: str,
               grad_out: torch.Tensor | None) -> list[torch.Tensor]:
    """The reference backend's pass in float64 on the module's weights and ``x`` as they are (rounded to
    their dtype), on their device (``exact_copy``: with the module's own discrete choices). Raises
    ``NonFiniteReferenceError`` naming the counts when its output or gradients hold NaN/inf."""
    exact = make_pass(module.exact_copy(x), x.double(), phase, None if grad_out is None else grad_out.double())()
    bad = nonfinite_counts(pass_tensor_names(module, phase), exact)
    if bad:
        raise NonFiniteReferenceError(
            f"reference backend '{module.reference_backend}' gives {_total(bad)} in its float64 output/gradients "
            f"({_per_tensor(bad)}): the case cannot be judged")
    return exact


@dataclass(frozen=True)
class ReferencePasses:
    """What a configuration's cases are judged against: the reference backend's pass in their dtype and
    the exact one."""

    rounded: list[torch.Tensor]
    exact: list[torch.Tensor]


def reference_passes(module: torch.nn.Module, x: torch.Tensor, phase: str,
                     grad_out: torch.Tensor | None) -> ReferencePasses:
    """The reference backend's passes on ``module``'s weights and ``x``: exact first (it raises
    ``NonFiniteReferenceError``), then in the case's dtype (the exact one itself in float64)."""
    exact = exact_pass(module, x, phase, grad_out)
    if x.dtype == torch.float64:
        return ReferencePasses(exact, exact)
    return ReferencePasses(make_pass(on_reference_backend(module), x, phase, grad_out)(), exact)


def accuracy(module: torch.nn.Module, x: torch.Tensor, phase: str, grad_out: torch.Tensor | None,
             references: ReferencePasses | None = None) -> Accuracy:
    """The module's pass (on its current backend, compiled or not) judged against float64 (see the module
    docstring); ``references``: the configuration's reference passes when already taken."""
    references = references or reference_passes(uncompiled(module), x, phase, grad_out)
    names = pass_tensor_names(module, phase)
    eager_reference = module.backend == module.reference_backend and uncompiled(module) is module
    got = references.rounded if eager_reference else make_pass(module, x, phase, grad_out)()
    return judge(got, references.rounded, references.exact, names, str(x.dtype).removeprefix("torch."))
