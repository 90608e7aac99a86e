"""Full (global) multi-head self-attention over all H·W tokens, as in ViT.

With ``side_dwconv > 0`` it is BiFormer's ``AttentionLePE`` (the last stage of BiFormer): a
depthwise conv over the attention *input* is added before the output projection. The
state_dict keys (``qkv``, ``proj``, ``lepe``) are those of timm's and BiFormer's modules.
"""

from __future__ import annotations

from torch import Tensor, nn

from .core import (FLEX_BACKEND, REFERENCE_BACKENDS, SDPA_KERNELS, XFORMERS_BACKEND, check_lepe_kernel, conv_nhwc,
                   depthwise_conv, forced_sdpa, lepe_macs, merge_heads, softmax_scale, split_heads)
from .registry import AttentionModule, MacCount, check_flag, register


@register
class FullAttention(AttentionModule):
    """ViT multi-head self-attention on an NHWC map, optionally with BiFormer's LePE.

    Args:
        dim: channels of the input and output.
        num_heads: heads; the scale is head_dim ** -0.5 unless ``qk_scale`` is given.
        qkv_bias: bias in the qkv projection (ViT: True; BiFormer's last stage: False).
        qk_scale: override of the softmax scale, a finite number > 0.
        side_dwconv: LePE kernel size, 0 for none (BiFormer's last stage uses 5).
        backend: 'torch' (explicit matrix), 'sdpa', or SDPA forced to one kernel: 'sdpa_flash',
            'sdpa_efficient', 'sdpa_cudnn' (CUDA) or 'sdpa_math'; 'flex' (compiled FlexAttention);
            'xformers' (memory_efficient_attention, CUDA).
    """

    family = "full"
    backends = {**REFERENCE_BACKENDS, **{f"sdpa_{k}": forced_sdpa(k) for k in SDPA_KERNELS}, "flex": FLEX_BACKEND,
                "xformers": XFORMERS_BACKEND}

    def __init__(self, dim: int, num_heads: int = 8, *, qkv_bias: bool = True,
                 qk_scale: float | None = None, side_dwconv: int = 0, backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend)
        check_flag("qkv_bias", qkv_bias)
        check_lepe_kernel(side_dwconv)
        self.side_dwconv = side_dwconv
        self.scale = softmax_scale(qk_scale, dim // num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.lepe = depthwise_conv(side_dwconv, dim)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(tokens).chunk(3, dim=-1))
        out, _ = self.attend(q, k, v, self.scale)
        out = merge_heads(out).reshape(batch, height, width, channels)
        if self.lepe is not None:
            out = out + conv_nhwc(self.lepe, x)
        return self.proj(out)

    def count_macs(self, batch: int, height: int, width: int) -> MacCount:
        tokens = batch * height * width
        return MacCount(
            projections=tokens * self.dim * 4 * self.dim,
            attention=tokens * height * width * 2 * self.dim,
            positional=lepe_macs(self.side_dwconv, tokens, self.dim),
        )
