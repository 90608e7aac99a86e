"""A researcher's own attention family, registered when this module is imported (as a plugin would be): the
tests check that a later sitting's fresh process imports it and sees the family too."""

from __future__ import annotations

import torch
from torch import nn

from attentions import AttentionModule, Backend, MacCount, register

FAMILY = "scaled_linear"


def halved(y: torch.Tensor) -> torch.Tensor:
    return y / 2


@register
class ScaledLinearAttention(AttentionModule):
    """A Linear whose output is halved: a stand-in attention with one backend of its own module."""

    family = FAMILY
    backends = {"torch": Backend("torch", halved, "a Linear, halved")}

    def __init__(self, dim: int, num_heads: int = 1, *, backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.attend(self.proj(x))

    def macs(self, batch: int, height: int, width: int) -> MacCount:
        return MacCount(projections=batch * height * width * self.dim * self.dim)
