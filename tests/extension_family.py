"""A researcher's own attention family, registered when this module is imported (as a plugin would be): the
tests check that a later sitting's fresh process, and a Ray worker, import it and see the family too."""

from __future__ import annotations

import torch

from attentions import Backend, register
from test_bench_core import FakeAttention

FAMILY = "scaled_linear"


def halved(y: torch.Tensor) -> torch.Tensor:
    return y / 2


@register
class ScaledLinearAttention(FakeAttention):
    """test_bench_core's one-Linear attention with one backend of this module's own: the output halved."""

    family = FAMILY
    backends = {"torch": Backend("torch", halved, "a Linear, halved")}
