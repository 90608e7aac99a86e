"""``maxbra``: bi-level routing attention whose router compares each region's strongest features.

BiFormer's router compares regions by their mean query and mean key. This variant compares them by the
elementwise maximum over each region's tokens, so that one salient token can pull its region into the routing.
Everything else (the token attention over the routed regions, the options, the backends that run it) is BRA's.

An example of a plugin of the benchmark suite: installed, its entry point makes ``run_bench.py`` import this
module, which registers the family ``maxbra``.
"""

from __future__ import annotations

from torch import Tensor

from attentions import BiLevelRoutingAttention, register


@register
class MaxRoutedAttention(BiLevelRoutingAttention):
    """BRA routed on the per-region maximum of q and k; BRA's options and its CPU and GPU token kernels."""

    family = "maxbra"
    backends = {name: BiLevelRoutingAttention.backends[name] for name in ("torch", "sdpa", "chunked", "triton")}

    def region_descriptors(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        return q.amax((2, 3)), k.amax((2, 3))
