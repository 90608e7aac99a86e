"""Swin window attention: W-MSA, and SW-MSA with a cyclic shift and its attention mask.

As in Swin (the detection/segmentation variant), the map is zero-padded at the bottom and right
up to a multiple of the window and cropped afterwards; padded tokens take part in attention
unmasked, exactly as there. Tokens that the cyclic shift brings together from different parts of
the map get Swin's -100 additive mask. Keys ``qkv``, ``proj``, ``relative_position_bias_table``
and ``relative_position_index`` match Swin's ``WindowAttention``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import create_block_mask

from .core import (XFORMERS_BACKEND, compiled_flex_attention, explicit_attention, flex_backend, merge_heads,
                   pad_to_multiple, sdpa_attention, softmax_scale, split_heads, xformers_attention)
from .errors import AttentionConfigError
from .registry import AttentionModule, Backend, MacCount, check_flag, check_positive_int, register

SHIFT_MASK_VALUE = -100.0  # Swin's additive mask between tokens of different shifted sub-regions


def relative_position_index(window_size: int) -> Tensor:
    """(w², w²) index into the (2w-1)² bias table for every query/key pair of a window."""
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window_size - 1
    dx = xs[:, None] - xs[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


def shift_region_labels(size: int, window_size: int, shift_size: int) -> Tensor:
    """Label 0/1/2 of each coordinate of the shifted map: which source strip it came from."""
    coords = torch.arange(size)
    return (coords >= size - window_size).long() + (coords >= size - shift_size).long()


def partition_windows(x: Tensor, window_size: int) -> Tensor:
    """(B, H, W, C) -> (B, windows, w², C), windows in row-major order."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, -1, window_size * window_size, channels)


def merge_windows(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of ``partition_windows``."""
    batch, _, _, channels = windows.shape
    x = windows.reshape(batch, height // window_size, width // window_size, window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, height, width, channels)


def windowed(kernel: Callable[..., tuple[Tensor, Tensor | None]]) -> Callable[["WindowAttention", Tensor], Tensor]:
    """A backend that works as Swin does: roll, partition into windows, attend with ``kernel``, undo."""

    def attend(module: "WindowAttention", x: Tensor) -> Tensor:
        padded_h, padded_w = x.shape[1:3]
        shift = module.shift_size
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        windows = partition_windows(x, module.window_size)
        q, k, v = (split_heads(t, module.num_heads) for t in module.qkv(windows).chunk(3, dim=-1))
        bias = module.relative_position_bias()
        if shift:
            bias = bias + module.shift_mask(padded_h, padded_w, x.device)[:, None].to(bias.dtype)
        out, _ = kernel(q, k, v, module.scale, bias.to(q.dtype))
        out = merge_windows(module.proj(merge_heads(out)), module.window_size, padded_h, padded_w)
        if shift:
            out = torch.roll(out, shifts=(shift, shift), dims=(1, 2))
        return out

    return attend


def window_layout(height: int, width: int, window_size: int, shift_size: int,
                  device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per token of the padded map, in its own (unrolled, row-major) order: the window it falls in
    after the cyclic shift, its position inside that window, and its shift sub-region label."""
    ys = torch.arange(height, device=device)[:, None].expand(height, width)
    xs = torch.arange(width, device=device)[None, :].expand(height, width)
    rolled_y, rolled_x = (ys - shift_size) % height, (xs - shift_size) % width
    window = (rolled_y // window_size) * (width // window_size) + rolled_x // window_size
    position = (rolled_y % window_size) * window_size + rolled_x % window_size
    rows = shift_region_labels(height, window_size, shift_size).to(device)
    cols = shift_region_labels(width, window_size, shift_size).to(device)
    label = rows[rolled_y] * 3 + cols[rolled_x]
    return window.flatten(), position.flatten(), label.flatten()


def flex_windowed(module: "WindowAttention", x: Tensor) -> Tensor:
    """Windows as a FlexAttention mask_mod on the unpartitioned map, the relative position bias and
    Swin's shift mask as a score_mod: no roll, no partition copies."""
    batch, padded_h, padded_w, channels = x.shape
    tokens = padded_h * padded_w
    window, position, label = window_layout(padded_h, padded_w, module.window_size, module.shift_size, x.device)
    bias = module.relative_position_bias()
    shifted = module.shift_size > 0

    def same_window(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return window[q_idx] == window[kv_idx]

    def position_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        score = score + bias[h, position[q_idx], position[kv_idx]]
        if shifted:
            score = score + (label[q_idx] != label[kv_idx]) * SHIFT_MASK_VALUE
        return score

    block_mask = create_block_mask(same_window, None, None, tokens, tokens, device=x.device)
    q, k, v = (split_heads(t, module.num_heads) for t in module.qkv(x.reshape(batch, tokens, channels)).chunk(3, -1))
    out = compiled_flex_attention(q, k, v, score_mod=position_bias, block_mask=block_mask, scale=module.scale)
    return module.proj(merge_heads(out)).reshape(batch, padded_h, padded_w, channels)


@register
class WindowAttention(AttentionModule):
    """Swin (shifted) window attention on an NHWC map of any size.

    Args:
        dim: channels of the input and output.
        num_heads: heads; the scale is head_dim ** -0.5 unless ``qk_scale`` is given.
        window_size: side of the square window, in tokens (Swin: 7).
        shift_size: cyclic shift in tokens, 0 for W-MSA (Swin's SW-MSA: window_size // 2).
        qkv_bias: bias in the qkv projection (Swin: True).
        qk_scale: override of the softmax scale, a finite number > 0.
        backend: 'torch' (explicit matrix), 'sdpa', 'flex' (no partition or roll copies) or 'xformers'
            (CUDA).
    """

    family = "window"
    backends = {
        "torch": Backend("torch", windowed(explicit_attention),
                         "Swin's algorithm: roll, partition, explicit attention matrix per window"),
        "sdpa": Backend("sdpa", windowed(sdpa_attention),
                        "roll and partition, window attention through F.scaled_dot_product_attention"),
        "flex": flex_backend(flex_windowed, "FlexAttention on the unpartitioned map: window mask_mod, bias and "
                                            "shift mask in a score_mod"),
        "xformers": replace(XFORMERS_BACKEND, attend=windowed(xformers_attention),
                            description="roll and partition, xformers memory_efficient_attention with the bias "
                                        "(and shift mask) materialised per window"),
    }

    def __init__(self, dim: int, num_heads: int = 8, *, window_size: int = 7, shift_size: int = 0,
                 qkv_bias: bool = True, qk_scale: float | None = None, backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend)
        window_size = check_positive_int("window_size", window_size)
        shift_size = check_positive_int("shift_size", shift_size, minimum=0)
        if shift_size >= window_size:
            raise AttentionConfigError(
                f"shift_size {shift_size} must be smaller than window_size {window_size} (0 = no shift)")
        check_flag("qkv_bias", qkv_bias)
        self.window_size = window_size
        self.shift_size = shift_size
        self.scale = softmax_scale(qk_scale, dim // num_heads)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self) -> Tensor:
        """(heads, w², w²) bias looked up from the learned table."""
        area = self.window_size ** 2
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(area, area, self.num_heads).permute(2, 0, 1)

    def shift_mask(self, height: int, width: int, device: torch.device) -> Tensor:
        """(windows, w², w²) additive mask of the shifted, padded map: -100 across sub-regions."""
        rows = shift_region_labels(height, self.window_size, self.shift_size)
        cols = shift_region_labels(width, self.window_size, self.shift_size)
        labels = (rows[:, None] * 3 + cols[None, :]).to(device)
        labels = partition_windows(labels[None, :, :, None], self.window_size)[0, ..., 0]
        different = labels[:, :, None] != labels[:, None, :]
        return torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_VALUE)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        _, height, width, _ = x.shape
        return self.attend(self, pad_to_multiple(x, self.window_size))[:, :height, :width, :]

    def count_macs(self, batch: int, height: int, width: int) -> MacCount:
        window = self.window_size
        tokens = batch * (-(-height // window) * window) * (-(-width // window) * window)
        return MacCount(
            projections=tokens * self.dim * 4 * self.dim,
            attention=tokens * window * window * 2 * self.dim,
            positional=0,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, window_size={self.window_size}, shift_size={self.shift_size}"
