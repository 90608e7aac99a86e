"""A throwaway attention family, registered when this module is imported, as a researcher's own module would be:
docs/extending.md's minimal family ('plain': global multi-head attention without extras) under a name of its own.
tests/test_new_family_is_covered.py shows that the sweep, the report and the registry-driven tests take it up
without any project file naming it."""

from __future__ import annotations

import torch
from torch import nn

from attentions import AttentionModule, MacCount, register
from attentions.core import REFERENCE_BACKENDS, merge_heads, softmax_scale, split_heads
from attentions.registry import check_flag

FAMILY = "throwaway"


@register
class ThrowawayAttention(AttentionModule):
    """Global multi-head attention without extras: docs/extending.md's minimal family."""

    family = FAMILY
    backends = {**REFERENCE_BACKENDS}  # 'torch' (explicit matrix, the reference) and 'sdpa'

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = True, backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend)
        check_flag("qkv_bias", qkv_bias)
        self.scale = softmax_scale(None, dim // num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(tokens).chunk(3, dim=-1))
        out, _ = self.attend(q, k, v, self.scale)
        return self.proj(merge_heads(out).reshape(batch, height, width, channels))

    def count_macs(self, batch: int, height: int, width: int) -> MacCount:
        tokens = batch * height * width
        return MacCount(projections=tokens * self.dim * 4 * self.dim,
                        attention=tokens * height * width * 2 * self.dim)
