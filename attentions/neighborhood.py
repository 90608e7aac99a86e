"""Neighborhood attention: NAT (Hassani et al., CVPR 2023), DiNAT's dilation and GNA's stride.

Every query attends the ``kernel_size`` × ``kernel_size`` keys around it, as NATTEN defines the window, axis by
axis:

- **Border**: the window is not padded; near an edge it shifts inward, so that every query attends exactly
  k × k real keys (a query at the corner attends the corner's k × k block).
- **Dilation** d (DiNAT): the axis is split into d interleaved sub-sequences (positions with the same i mod d);
  a query's window is taken, as above, inside its own sub-sequence, whose length is ceil((L - i mod d) / d).
- **Stride** s (GNA): the queries of a block of s consecutive positions (of the sub-sequence, with dilation)
  share one window, that of the block's leader, the query at the block's centre (the last query, for a block
  cut short by the end of the axis).
- **Relative position bias** (NAT's ``rpb``, a (heads, 2k-1, 2k-1) table): a query and a key (dy, dx) apart,
  in dilated steps, add ``rpb[h, dy + k - 1, dx + k - 1]`` to their logit. NAT defines it for stride 1.

Keys ``qkv``, ``rpb`` and ``proj`` match NAT's ``NeighborhoodAttention2D``, so its checkpoints load.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import create_block_mask

from .core import (FLEX_CPU_DTYPES, compiled_flex_attention, explicit_attention, flex_backend, merge_heads,
                   sdpa_attention, softmax_scale)
from .errors import AttentionConfigError
from .registry import AttentionModule, Backend, MacCount, check_flag, check_positive_int, register


def window_starts(length: int, kernel_size: int, dilation: int = 1, stride: int = 1,
                  device: torch.device | str = "cpu") -> Tensor:
    """(length,) first key position of each query's window on one axis; its keys are start + dilation · j,
    j < kernel_size (see the module docstring). Needs kernel_size · dilation ≤ length."""
    position = torch.arange(length, device=device)
    group = position % dilation  # the dilated sub-sequence of each position, and its index in it
    index = position // dilation
    group_length = (length - group + dilation - 1) // dilation
    block = index // stride  # GNA: the leader of the query's block of ``stride`` queries
    leader = torch.minimum(block * stride + stride // 2, group_length - 1)
    start = (leader - kernel_size // 2).clamp(min=0)
    start = torch.minimum(start, group_length - kernel_size)
    return start * dilation + group


def axis_neighbors(length: int, kernel_size: int, dilation: int, stride: int, device: torch.device) -> Tensor:
    """(length, kernel_size) positions of each query's keys on one axis."""
    starts = window_starts(length, kernel_size, dilation, stride, device)
    return starts[:, None] + dilation * torch.arange(kernel_size, device=device)


def gathered(kernel: Callable[..., tuple[Tensor, Tensor | None]]) -> Callable[..., Tensor]:
    """A backend that gathers each query's k × k keys and values into a copy (k² times the keys: the plain,
    unfused way) and attends them with ``kernel``: one query against its own k² keys, the bias looked up per pair."""

    def attend(module: "NeighborhoodAttention", q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        batch, height, width, heads, head_dim = q.shape
        rows, cols = module.neighbors(height, width, q.device)
        keys = (rows[:, None, :, None] * width + cols[None, :, None, :]).reshape(height * width, -1)

        def heads_first(t: Tensor) -> Tensor:  # (B, H, W, heads, d) -> (B, heads, H·W, d)
            return t.reshape(batch, height * width, heads, head_dim).transpose(1, 2)

        q, k, v = heads_first(q)[..., None, :], heads_first(k)[:, :, keys], heads_first(v)[:, :, keys]
        bias = None
        if module.rpb is not None:
            rel_rows, rel_cols = module.bias_indices(rows), module.bias_indices(cols)
            bias = module.rpb[:, rel_rows[:, None, :, None], rel_cols[None, :, None, :]]
            bias = bias.reshape(heads, height * width, 1, -1).to(q.dtype)
        out, _ = kernel(q, k, v, module.scale, bias)  # (B, heads, H·W, 1, d)
        return out[..., 0, :].transpose(1, 2).reshape(batch, height, width, heads * head_dim)

    return attend


def flex_neighborhood(module: "NeighborhoodAttention", q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The neighborhood as a FlexAttention mask_mod over the row-major map and the bias as a score_mod: no
    gathered copies; the block mask skips the 128 × 128 tiles no query's window reaches."""
    batch, height, width, heads, head_dim = q.shape
    tokens = height * width
    span = module.kernel_size * module.dilation
    row_starts = window_starts(height, module.kernel_size, module.dilation, module.stride, q.device)
    col_starts = window_starts(width, module.kernel_size, module.dilation, module.stride, q.device)

    def on_axis(query: Tensor, key: Tensor, starts: Tensor) -> Tensor:
        offset = key - starts[query]
        return (offset >= 0) & (offset < span) & (offset % module.dilation == 0)

    def in_window(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        rows = on_axis(q_idx // width, kv_idx // width, row_starts)
        return rows & on_axis(q_idx % width, kv_idx % width, col_starts)

    last = 2 * module.kernel_size - 2
    rpb = None if module.rpb is None else module.rpb.to(q.dtype)

    def relative(query: Tensor, key: Tensor) -> Tensor:  # clamped: masked-out pairs are scored too
        return ((key - query) // module.dilation + module.kernel_size - 1).clamp(0, last)

    def position_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + rpb[h, relative(q_idx // width, kv_idx // width), relative(q_idx % width, kv_idx % width)]

    score_mod = None if rpb is None else position_bias
    block_mask = create_block_mask(in_window, None, None, tokens, tokens, device=q.device)
    q, k, v = (t.reshape(batch, tokens, heads, head_dim).transpose(1, 2) for t in (q, k, v))
    out = compiled_flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=module.scale)
    return merge_heads(out).reshape(batch, height, width, heads * head_dim)


def natten_neighborhood(module: "NeighborhoodAttention", q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """NATTEN's own ``na2d`` on the (B, H, W, heads, d) tensors it takes: its fused kernels on a GPU where NATTEN
    was built with its CUDA library, else (and on the CPU) its Flex backend, uncompiled. NATTEN has no relative
    position bias (0.20 dropped it)."""
    import natten  # imported on use: an optional dependency

    batch, height, width, heads, head_dim = q.shape
    with warnings.catch_warnings():  # its CPU path calls flex_attention uncompiled, with an argument torch deprecates
        warnings.filterwarnings("ignore", "return_lse is deprecated", FutureWarning)
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile", UserWarning)
        out = natten.na2d(q, k, v, kernel_size=module.kernel_size, dilation=module.dilation, stride=module.stride,
                          is_causal=False, scale=module.scale)
    return out.reshape(batch, height, width, heads * head_dim)


NATTEN_HEAD_DIMS = tuple(2 ** n for n in range(3, 10))  # what NATTEN 0.21's na2d takes
NATTEN_BACKEND = Backend("natten", natten_neighborhood,
                         "NATTEN's na2d: its fused kernels where built with its CUDA library, else its Flex backend "
                         "(no bias table)",
                         dtypes=(torch.float16, torch.bfloat16, torch.float32),
                         device_dtypes=(("cpu", FLEX_CPU_DTYPES),), backward_devices=("cuda",), requires=("natten",))


@register
class NeighborhoodAttention(AttentionModule):
    """NAT / DiNAT neighborhood attention on an NHWC map (see the module docstring for the window).

    Args:
        dim: channels of the input and output.
        num_heads: heads; the scale is head_dim ** -0.5 unless ``qk_scale`` is given.
        kernel_size: odd side of each query's window, in tokens (NAT: 7); at most the map's side.
        dilation: DiNAT's dilation, an integer >= 1; kernel_size · dilation at most the map's side.
        stride: GNA's stride, an integer from 1 to kernel_size: queries share windows in blocks of it.
        rel_pos_bias: NAT's relative position bias table ``rpb`` (needs stride 1).
        qkv_bias: bias in the qkv projection (NAT: True).
        qk_scale: override of the softmax scale, a finite number > 0.
        backend: 'torch' (gathered keys, explicit matrix), 'sdpa' (gathered keys through SDPA), 'flex'
            (window mask_mod, bias score_mod) or 'natten' (NATTEN's na2d; without ``rel_pos_bias``).
    """

    family = "neighborhood"
    backends = {
        "torch": Backend("torch", gathered(explicit_attention),
                         "each query's k×k keys gathered into a copy, explicit attention matrix (unfused)"),
        "sdpa": Backend("sdpa", gathered(sdpa_attention),
                        "each query's k×k keys gathered, attention through F.scaled_dot_product_attention"),
        "flex": flex_backend(flex_neighborhood, "FlexAttention on the map: window mask_mod, bias score_mod"),
        "natten": NATTEN_BACKEND,
    }

    def __init__(self, dim: int, num_heads: int = 8, *, kernel_size: int = 7, dilation: int = 1, stride: int = 1,
                 rel_pos_bias: bool = True, qkv_bias: bool = True, qk_scale: float | None = None,
                 backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend)
        kernel_size = check_positive_int("kernel_size", kernel_size)
        if kernel_size % 2 == 0:
            raise AttentionConfigError(f"kernel_size must be odd (the query sits at the window's centre), "
                                       f"got {kernel_size}")
        self.kernel_size = kernel_size
        self.dilation = check_positive_int("dilation", dilation)
        stride = check_positive_int("stride", stride)
        if stride > kernel_size:
            raise AttentionConfigError(f"stride {stride} must be at most kernel_size {kernel_size}: a wider stride "
                                       f"leaves keys no query attends")
        self.stride = stride
        check_flag("rel_pos_bias", rel_pos_bias)
        check_flag("qkv_bias", qkv_bias)
        if rel_pos_bias and stride > 1:
            raise AttentionConfigError(f"rel_pos_bias needs stride 1 (NAT defines the bias table for it), got "
                                       f"stride {stride}")
        self.scale = softmax_scale(qk_scale, dim // num_heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.rpb = nn.Parameter(torch.zeros(num_heads, 2 * kernel_size - 1, 2 * kernel_size - 1)) \
            if rel_pos_bias else None
        if self.rpb is not None:
            nn.init.trunc_normal_(self.rpb, std=0.02)
        self.proj = nn.Linear(dim, dim)

    def check_map_size(self, height: int, width: int) -> None:
        span = self.kernel_size * self.dilation
        for axis, side in (("height", height), ("width", width)):
            if side < span:
                raise AttentionConfigError(
                    f"map {height}×{width}: its {axis} {side} is smaller than kernel_size × dilation = "
                    f"{self.kernel_size} × {self.dilation} = {span}, which neighborhood attention needs on each side")

    def unsupported_reason(self) -> str | None:
        if self.backend != "natten":
            return None
        head_dim = self.dim // self.num_heads
        if self.rpb is not None:
            return "NATTEN (0.20 and later) has no relative position bias: build with rel_pos_bias=False"
        if head_dim not in NATTEN_HEAD_DIMS:
            return f"NATTEN takes head dims that are powers of two from 8 to 512, got {head_dim}"
        if self.kernel_size < 2:
            return "NATTEN takes kernel_size >= 2, got 1"
        return None

    def neighbors(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(H, k) key rows and (W, k) key columns of every query row and column."""
        return (axis_neighbors(height, self.kernel_size, self.dilation, self.stride, device),
                axis_neighbors(width, self.kernel_size, self.dilation, self.stride, device))

    def bias_indices(self, neighbors: Tensor) -> Tensor:
        """(L, k) index into one axis of ``rpb`` of each query's keys: their offset in dilated steps, + k - 1."""
        queries = torch.arange(neighbors.shape[0], device=neighbors.device)[:, None]
        return (neighbors - queries) // self.dilation + self.kernel_size - 1

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        batch, height, width, channels = x.shape
        qkv = self.qkv(x).reshape(batch, height, width, 3, self.num_heads, channels // self.num_heads)
        out = self.attend(self, *qkv.unbind(dim=3))
        return self.proj(out)

    def count_macs(self, batch: int, height: int, width: int) -> MacCount:
        tokens = batch * height * width
        return MacCount(
            projections=tokens * self.dim * 4 * self.dim,
            attention=tokens * self.kernel_size ** 2 * 2 * self.dim,
            positional=0,
        )

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"stride={self.stride}, rel_pos_bias={self.rpb is not None}")
