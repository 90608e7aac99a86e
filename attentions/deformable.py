"""Deformable attention of DAT (Xia et al., "Vision Transformer with Deformable Attention", CVPR 2022).

Reproduces the CVPR 2022 release of LeapLabTHU/DAT (``DAttentionBaseline``), on NHWC tensors:

1. q = proj_q(x). Per group of channels, an offset network (depthwise conv, kernel
   ``offset_kernel``, stride ``stride``; LayerNorm; GELU; 1×1 conv to 2) predicts offsets on the
   strided grid of reference points.
2. Reference points are cell centres in [-1, 1] (``(i + 0.5) / Hk · 2 - 1``). With
   ``offset_range_factor > 0`` offsets are ``tanh(·) · factor / Hk`` (resp. Wk); with a negative
   factor the deformed points are squashed by tanh instead; 0 leaves them unbounded.
3. ``grid_sample`` (bilinear, align_corners=True, zero padding) samples *x* at the deformed
   points; proj_k / proj_v project the samples. Every one of the H·W queries attends all samples.
4. With ``use_pe``, DAT's relative position bias: a (2h-1)×(2w-1) table per head, sampled
   bilinearly at half the normalised query-to-key displacement. The table is laid out for a
   ``fmap_size`` map; for other input sizes it is interpolated, as in the DAT++ release.
   With ``use_pe`` and ``dwc_pe`` instead, DAT's depthwise-conv encoding: a 3×3 depthwise conv
   over the projected queries q (all heads, the full H×W map) is added to the attention output
   before proj_out, and no bias enters the logits.

Keys and shapes (``proj_q/k/v/out`` as 1×1 convs, ``conv_offset.{0,1.norm,3}``, ``rpe_table`` —
the bias table, or with ``dwc_pe`` the conv, as DAT names both) match DAT's, so its checkpoints load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .core import FLEX_BACKEND, REFERENCE_BACKENDS, conv_nhwc, merge_heads, split_heads
from .errors import AttentionConfigError
from .registry import AttentionModule, MacCount, check_flag, check_number, check_positive_int, register

DWC_PE_KERNEL = 3  # DAT's dwc_pe conv


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (DAT's ``LayerNormProxy``; key ``norm``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply a 1×1 Conv2d to the last (channel) axis of a channels-last tensor."""
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def map_size(name: str, value: object) -> tuple[int, int]:
    """A map size given as one side or as (h, w), each an integer >= 1."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 \
            or any(isinstance(side, bool) or not isinstance(side, int) or side < 1 for side in pair):
        raise AttentionConfigError(f"{name} must be an integer >= 1 or a pair (h, w) of them, got {value!r}")
    return pair[0], pair[1]


def reference_points(height: int, width: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(height, width, 2) cell centres as normalised (y, x) in [-1, 1], DAT's convention."""
    ys = (torch.arange(height, dtype=dtype, device=device) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, dtype=dtype, device=device) + 0.5) / width * 2 - 1
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)


@register
class DeformableAttention(AttentionModule):
    """DAT deformable multi-head attention on an NHWC map.

    Args:
        dim: channels of the input and output.
        num_heads: heads; the scale is head_dim ** -0.5.
        n_groups: offset groups; must divide num_heads (DAT-T: 3 and 6 at 12 and 24 heads).
        stride: stride of the offset network, i.e. of the sampled grid (DAT: 1).
        offset_range_factor: a finite number: > 0 bounds the offsets to that many reference-grid cells
            (DAT-T: 2), < 0 squashes the points by tanh, 0 leaves them free.
        offset_kernel: odd kernel of the offset network's depthwise conv (DAT: 9/7/5/3 per stage).
        use_pe: a position encoding: DAT's relative position bias, or with ``dwc_pe`` its depthwise conv.
        fmap_size: map side (int or (h, w)) the bias table is laid out for.
        dwc_pe: with ``use_pe``, DAT's 3×3 depthwise conv over q added to the attention output instead
            of the bias (as in DAT, it needs ``use_pe``).
        backend: 'torch' (explicit matrix), 'sdpa', or 'flex' (the bias through a score_mod).
    """

    family = "deformable"
    backends = {**REFERENCE_BACKENDS, "flex": FLEX_BACKEND}

    def __init__(self, dim: int, num_heads: int = 8, *, n_groups: int = 1, stride: int = 1,
                 offset_range_factor: float = 2.0, offset_kernel: int = 5, use_pe: bool = True,
                 fmap_size: int | tuple[int, int] = 14, dwc_pe: bool = False, backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend)
        n_groups = check_positive_int("n_groups", n_groups)
        if num_heads % n_groups:
            raise AttentionConfigError(f"n_groups {n_groups} must divide num_heads {num_heads}")
        stride = check_positive_int("stride", stride)
        offset_kernel = check_positive_int("offset_kernel", offset_kernel)
        if offset_kernel % 2 == 0:
            raise AttentionConfigError(f"offset_kernel must be odd, got {offset_kernel}")
        table_h, table_w = map_size("fmap_size", fmap_size)
        check_flag("use_pe", use_pe)
        check_flag("dwc_pe", dwc_pe)
        if dwc_pe and not use_pe:
            raise AttentionConfigError("dwc_pe=True with use_pe=False: dwc_pe chooses the kind of position "
                                       "encoding, as in DAT; pass use_pe=True, or dwc_pe=False for none")
        self.n_groups = n_groups
        self.stride = stride
        self.offset_range_factor = check_number("offset_range_factor", offset_range_factor)
        self.offset_kernel = offset_kernel
        self.use_pe = use_pe
        self.dwc_pe = dwc_pe
        self.fmap_size = (table_h, table_w)
        self.scale = (dim // num_heads) ** -0.5
        group_channels = dim // n_groups
        self.conv_offset = nn.Sequential(
            nn.Conv2d(group_channels, group_channels, offset_kernel, stride, offset_kernel // 2,
                      groups=group_channels),
            ChannelLayerNorm(group_channels),
            nn.GELU(),
            nn.Conv2d(group_channels, 2, 1, bias=False),
        )
        self.proj_q, self.proj_k, self.proj_v, self.proj_out = (nn.Conv2d(dim, dim, 1) for _ in range(4))
        self.rpe_table: nn.Parameter | nn.Conv2d | None = None
        if dwc_pe:
            self.rpe_table = nn.Conv2d(dim, dim, DWC_PE_KERNEL, padding=DWC_PE_KERNEL // 2, groups=dim)
        elif use_pe:
            self.rpe_table = nn.Parameter(torch.zeros(num_heads, 2 * table_h - 1, 2 * table_w - 1))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)

    @property
    def has_bias_table(self) -> bool:
        """Whether the relative position bias enters the logits (use_pe without dwc_pe)."""
        return self.use_pe and not self.dwc_pe

    def sampled_grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Side lengths of the offset network's output: ceil(H / stride) × ceil(W / stride)."""
        return -(-height // self.stride), -(-width // self.stride)

    def sampling_points(self, q: Tensor) -> Tensor:
        """Deformed points, (B·groups, Hk, Wk, 2) normalised (y, x), from projected queries."""
        batch, height, width, _ = q.shape
        grouped = q.permute(0, 3, 1, 2).reshape(batch * self.n_groups, -1, height, width)
        offset = self.conv_offset(grouped).permute(0, 2, 3, 1)
        grid_h, grid_w = offset.shape[1:3]
        if self.offset_range_factor > 0:
            cell = torch.tensor([1.0 / grid_h, 1.0 / grid_w], dtype=offset.dtype, device=offset.device)
            offset = offset.tanh() * cell * self.offset_range_factor
        points = offset + reference_points(grid_h, grid_w, q.dtype, q.device)
        return points.tanh() if self.offset_range_factor < 0 else points

    def sample(self, x: Tensor, points: Tensor) -> Tensor:
        """Bilinear samples of each group's channels of x at its points: (B, Hk·Wk, C)."""
        batch, height, width, channels = x.shape
        # contiguous: with one group the reshape is a channels-last view, and torch 2.13's CPU grid_sample
        # returns NaN for whole batch items (fp16) or wrong values (bf16) on such an input
        grouped = x.permute(0, 3, 1, 2).reshape(batch * self.n_groups, -1, height, width).contiguous()
        samples = F.grid_sample(grouped, points.flip(-1), mode="bilinear", align_corners=True)
        return samples.reshape(batch, channels, -1).transpose(1, 2)

    def position_bias(self, points: Tensor, height: int, width: int) -> Tensor:
        """(B, heads, H·W, Hk·Wk) bias: the table sampled at half the query-key displacement."""
        groups_batch = points.shape[0]
        queries = reference_points(height, width, points.dtype, points.device).reshape(1, -1, 1, 2)
        displacement = (queries - points.reshape(groups_batch, 1, -1, 2)) * 0.5
        table = self.rpe_table.to(points.dtype).reshape(self.n_groups, -1, *self.rpe_table.shape[1:])
        table = table.repeat(groups_batch // self.n_groups, 1, 1, 1)
        bias = F.grid_sample(table, displacement.flip(-1), mode="bilinear", align_corners=True)
        return bias.reshape(groups_batch // self.n_groups, self.num_heads, height * width, -1)

    def check_map_size(self, height: int, width: int) -> None:
        if self.stride > min(height, width):
            raise AttentionConfigError(
                f"stride {self.stride} does not fit a {height}×{width} map: it must be <= {min(height, width)}")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        batch, height, width, channels = x.shape
        q = pointwise(self.proj_q, x)
        points = self.sampling_points(q)
        samples = self.sample(x, points)
        k = split_heads(pointwise(self.proj_k, samples), self.num_heads)
        v = split_heads(pointwise(self.proj_v, samples), self.num_heads)
        heads_q = split_heads(q.reshape(batch, height * width, channels), self.num_heads)
        bias = self.position_bias(points, height, width) if self.has_bias_table else None
        out, _ = self.attend(heads_q, k, v, self.scale, bias)
        out = merge_heads(out).reshape(batch, height, width, channels)
        if self.dwc_pe:
            out = out + conv_nhwc(self.rpe_table, q)
        return pointwise(self.proj_out, out)

    def count_macs(self, batch: int, height: int, width: int) -> MacCount:
        grid_h, grid_w = self.sampled_grid_size(height, width)
        queries, samples = batch * height * width, batch * grid_h * grid_w
        dim = self.dim
        return MacCount(
            projections=2 * queries * dim * dim + 2 * samples * dim * dim,
            # depthwise conv + LayerNorm (5/element, fvcore) + 1×1 conv to 2 + bilinear sampling (4/output)
            offsets=samples * dim * (self.offset_kernel ** 2 + 5 + 2 + 4),
            attention=queries * grid_h * grid_w * 2 * dim,
            positional=self.positional_macs(queries, grid_h * grid_w),
        )

    def positional_macs(self, queries: int, samples: int) -> int:
        """The depthwise conv's k² per query channel (dwc_pe), or the bias table's bilinear sampling
        (4 per logit, fvcore's count), or 0."""
        if self.dwc_pe:
            return queries * self.dim * DWC_PE_KERNEL ** 2
        return 4 * queries * samples * self.num_heads if self.use_pe else 0

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_groups={self.n_groups}, stride={self.stride}, "
                f"offset_range_factor={self.offset_range_factor}, offset_kernel={self.offset_kernel}, "
                f"use_pe={self.use_pe}, dwc_pe={self.dwc_pe}, fmap_size={self.fmap_size}")
