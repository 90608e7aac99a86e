"""FLOP counting with fvcore, in the papers' convention (1 multiply-add = 1 "FLOP").

fvcore traces the forward with TorchScript and counts matmuls, linears and convs (plus a few
fixed per-element charges). It counts ops it has no handle for as zero, so every attention op the
suite uses gets a handle here: ``F.scaled_dot_product_attention``, and the custom ops (autograd
Functions such as the fused Triton BRA) that backends declare in the registry with their MAC
formulas. Other ops can be taught with ``register_flop_handle``.

Hardware FLOPs are 2 × MACs. For a forward+backward pass the suite uses the usual 3× rule:
the backward costs twice the forward (gradients of the inputs and of the weights).

fvcore is imported when something is counted: where it is not installed (a GPU machine without
network, say), ``count_macs`` raises ``FlopCounterUnavailable`` and the harness falls back to the
families' analytic ``macs()``.
"""

from __future__ import annotations

import logging
from collections import Counter
from math import prod
from typing import Any, Callable

import torch

import attentions
from attentions.registry import MacFormula

Handle = Callable[[list[Any], list[Any]], int]

PHASE_FLOP_FACTOR = {"fwd": 1, "fwd+bwd": 3}
# How rows count work: fvcore's MACs as the papers' FLOPs; hardware FLOPs 2 × MACs, × 3 for fwd+bwd.
FLOP_CONVENTION = "fvcore-macs/hw-2x/fwd+bwd-3x"


class FlopCounterUnavailable(ImportError):
    """fvcore, the FLOP counter, is not installed."""


def get_shape(value: Any) -> list[int]:
    """The shape of a traced tensor value (fvcore's helper)."""
    from fvcore.nn.jit_handles import get_shape as fvcore_get_shape
    return fvcore_get_shape(value)


def sdpa_macs(inputs: list[Any], outputs: list[Any]) -> int:
    """MACs of scaled_dot_product_attention: q kᵀ and p v, i.e. L·S·(E + Ev) per batch and head."""
    q_shape, k_shape, v_shape = (get_shape(v) for v in inputs[:3])
    *lead, queries, qk_channels = q_shape
    keys = k_shape[-2]
    return prod(lead) * queries * keys * (qk_channels + v_shape[-1])


def custom_op_handle(formula: MacFormula) -> Handle:
    """An fvcore handle that feeds a registry MAC formula the shapes of the op's tensors."""

    def handle(inputs: list[Any], outputs: list[Any]) -> int:
        return formula([get_shape(v) for v in inputs], [get_shape(v) for v in outputs])

    return handle


FLOP_HANDLES: dict[str, Handle] = {
    "aten::scaled_dot_product_attention": sdpa_macs,
    # TorchScript records an autograd.Function call as prim::PythonOp.<class name>
    **{f"prim::PythonOp.{op}": custom_op_handle(formula) for op, formula in attentions.custom_op_macs().items()},
}


def register_flop_handle(op_name: str, handle: Handle) -> None:
    """Teach the counter an op fvcore does not know (e.g. 'aten::flex_attention')."""
    FLOP_HANDLES[op_name] = handle


def count_macs(module: torch.nn.Module, x: torch.Tensor) -> tuple[int, Counter]:
    """fvcore MACs of ``module(x)``, and the ops it saw but could not count."""
    try:
        from fvcore.nn import FlopCountAnalysis
    except ImportError as exc:
        raise FlopCounterUnavailable(f"fvcore is not installed ({exc})") from None
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # fvcore logs every uncounted elementwise op
    try:
        with torch.no_grad():
            analysis = FlopCountAnalysis(module, (x,)).set_op_handle(**FLOP_HANDLES)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            return int(analysis.total()), analysis.unsupported_ops()
    finally:
        logging.disable(previous)


def hardware_flops(macs: int, phase: str) -> int:
    """Hardware FLOPs of a measured pass: 2 per MAC, ×3 for forward+backward."""
    return 2 * macs * PHASE_FLOP_FACTOR[phase]
