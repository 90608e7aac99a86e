"""Token-attention kernels shared by the families, and small NHWC helpers.

The kernels take ``(q, k, v, scale, bias)`` over tensors of shape (..., L, D): queries
(..., Lq, Dqk), keys (..., Lk, Dqk), values (..., Lk, Dv), and an optional additive bias
broadcastable to (..., Lq, Lk). Each returns ``(out, weights)``, where ``weights`` is the softmax
matrix when the kernel forms one and ``None`` otherwise. Full and deformable attention use them as
their backends directly; window and BRA wrap them (partition, gather), and their flex backends
work on the whole map instead.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import flex_attention

from .errors import AttentionConfigError, BackendUnavailableError
from .registry import FLOAT_DTYPES, Backend, check_number


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, scale: float,
                       bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference: softmax((q·scale) kᵀ + bias) v, with the attention matrix built in memory."""
    logits = (q * scale) @ k.transpose(-2, -1)
    if bias is not None:
        logits = logits + bias
    weights = logits.softmax(dim=-1)
    return weights @ v, weights


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, scale: float,
                   bias: Tensor | None = None) -> tuple[Tensor, None]:
    """The same attention through ``F.scaled_dot_product_attention``; no matrix is returned.

    Without a bias, leading dimensions beyond (batch, heads) are folded into the batch: Inductor's CPU lowering
    of SDPA mis-broadcasts 5-D inputs (``torch.compile`` of BRA's gathered (B, regions, heads, L, D) failed with
    "Attempting to broadcast a dimension of length 64 ... [2, 64, 49] ... [2, 16, 49]"), while eager SDPA takes
    them either way."""
    if bias is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=scale), None
    lead = q.shape[:-3]
    q, k, v = (t.reshape(-1, *t.shape[-3:]) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=scale)
    return out.reshape(*lead, *out.shape[-3:]), None


SDPA_KERNELS = {  # name -> (SDPBackend, devices, dtypes) a user may force
    # PyTorch has a CPU flash kernel too; on CUDA flash takes fp16/bf16 only, which the call reports
    "flash": (SDPBackend.FLASH_ATTENTION, ("cpu", "cuda"), FLOAT_DTYPES),
    "efficient": (SDPBackend.EFFICIENT_ATTENTION, ("cuda",), (torch.float16, torch.bfloat16, torch.float32)),
    "cudnn": (SDPBackend.CUDNN_ATTENTION, ("cuda",), (torch.float16, torch.bfloat16)),
    "math": (SDPBackend.MATH, ("cpu", "cuda"), FLOAT_DTYPES),
}
NO_KERNEL_MESSAGES = ("No available kernel", "No viable backend")


def forced_sdpa(kernel_name: str) -> Backend:
    """An ``sdpa_<kernel>`` backend: SDPA restricted to one kernel, for comparing the kernels themselves.

    When the kernel cannot take the call (head size, bias, layout), the error is a
    BackendUnavailableError naming the kernel, not PyTorch's generic one.
    """
    kernel, devices, dtypes = SDPA_KERNELS[kernel_name]

    def attend(q: Tensor, k: Tensor, v: Tensor, scale: float, bias: Tensor | None = None) -> tuple[Tensor, None]:
        try:
            with sdpa_kernel(kernel):
                return sdpa_attention(q, k, v, scale, bias)
        except RuntimeError as exc:
            if not any(m in str(exc) for m in NO_KERNEL_MESSAGES):
                raise
            raise BackendUnavailableError(
                f"SDPA's {kernel_name} kernel cannot run this call (q {tuple(q.shape)}, {q.dtype}, "
                f"bias {'yes' if bias is not None else 'no'}): {str(exc).splitlines()[0]}") from None

    return Backend(f"sdpa_{kernel_name}", attend, f"F.scaled_dot_product_attention forced to its {kernel_name} kernel",
                   devices=devices, dtypes=dtypes)


_compiled_flex = torch.compile(flex_attention, dynamic=False)
# One compilation per shape a sweep meets. Past torch.compile's default of 8, calls would fall back
# to FlexAttention's slow uncompiled path, and a benchmark would time that instead.
FLEX_RECOMPILE_LIMIT = 64


def compiled_flex_attention(*args, **kwargs) -> Tensor:
    """``flex_attention`` compiled, with room for as many shapes as a sweep brings."""
    with torch._dynamo.config.patch(recompile_limit=FLEX_RECOMPILE_LIMIT):
        return _compiled_flex(*args, **kwargs)


def flex_dense_attention(q: Tensor, k: Tensor, v: Tensor, scale: float,
                         bias: Tensor | None = None) -> tuple[Tensor, None]:
    """The attention through compiled FlexAttention over (B, heads, L, D) tensors; an additive bias
    enters through a score_mod that reads it, so no score matrix is formed outside the kernel."""
    if bias is None:
        return compiled_flex_attention(q, k, v, scale=scale), None
    bias = bias.to(q.dtype).expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])

    def add_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + bias[b, h, q_idx, kv_idx]
    return compiled_flex_attention(q, k, v, score_mod=add_bias, scale=scale), None


# What PyTorch's CPU FlexAttention lacks: a backward, and float64 (Inductor's CPU template refuses it).
FLEX_CPU_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FLEX_CUDA_ONLY = "backward and float64 on CUDA only"


def flex_backend(attend: Callable[..., Any], description: str) -> Backend:
    """A 'flex' backend record: every dtype and a backward on CUDA; forward in fp16/bf16/fp32 on the CPU."""
    return Backend("flex", attend, f"{description} ({FLEX_CUDA_ONLY})", backward_devices=("cuda",),
                   device_dtypes=(("cpu", FLEX_CPU_DTYPES),))


FLEX_BACKEND = flex_backend(flex_dense_attention, "compiled FlexAttention; a bias enters through a score_mod")

XFORMERS_BIAS_ALIGNMENT = 8  # xformers reads a bias tensor's rows as aligned vectors: row stride a multiple of 8


def xformers_bias(bias: Tensor, lead: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """The additive bias as xformers takes it: one (heads, queries, keys) slice per folded batch
    entry (it broadcasts nothing), with rows padded in memory to an aligned stride."""
    *_, heads, queries, keys = bias.shape
    padded_keys = -(-keys // XFORMERS_BIAS_ALIGNMENT) * XFORMERS_BIAS_ALIGNMENT
    storage = bias.new_empty(*lead, heads, queries, padded_keys, dtype=dtype)
    aligned = storage[..., :keys]
    aligned.copy_(bias.expand(*lead, heads, queries, keys))
    return aligned.flatten(0, len(lead) - 1)


def xformers_attention(q: Tensor, k: Tensor, v: Tensor, scale: float,
                       bias: Tensor | None = None) -> tuple[Tensor, None]:
    """The attention through xformers' ``memory_efficient_attention`` (CUDA only: it has no CPU
    operator). Leading dims (batch, windows) are folded into its batch; it wants (B, L, heads, d)."""
    from xformers.ops import memory_efficient_attention  # imported on use: an optional dependency

    *lead, heads, queries, _ = q.shape

    def to_xformers(t: Tensor) -> Tensor:
        return t.reshape(-1, heads, *t.shape[-2:]).transpose(1, 2)

    attn_bias = None if bias is None else xformers_bias(bias, tuple(lead), q.dtype)
    out = memory_efficient_attention(to_xformers(q), to_xformers(k), to_xformers(v), attn_bias=attn_bias,
                                     scale=scale)
    return out.transpose(1, 2).reshape(*lead, heads, queries, v.shape[-1]), None


XFORMERS_BACKEND = Backend("xformers", xformers_attention,
                           "xformers memory_efficient_attention; a bias is materialised per batch entry, "
                           "as xformers needs", devices=("cuda",),
                           dtypes=(torch.float16, torch.bfloat16, torch.float32), requires=("xformers",))

REFERENCE_BACKENDS: dict[str, Backend] = {
    "torch": Backend("torch", explicit_attention,
                     "plain PyTorch reference: explicit attention matrix and softmax"),
    "sdpa": Backend("sdpa", sdpa_attention,
                    "token attention through F.scaled_dot_product_attention, no explicit matrix"),
}


def depthwise_conv(kernel_size: int, channels: int) -> nn.Conv2d | None:
    """The LePE depthwise conv of BiFormer (odd kernel, 'same' padding), or None when 0."""
    if kernel_size == 0:
        return None
    return nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)


def conv_nhwc(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply a Conv2d to an NHWC tensor and return NHWC."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(..., L, heads·d) -> (..., heads, L, d)."""
    *lead, length, channels = x.shape
    return x.reshape(*lead, length, num_heads, channels // num_heads).transpose(-3, -2)


def merge_heads(x: Tensor) -> Tensor:
    """(..., heads, L, d) -> (..., L, heads·d)."""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad an NHWC tensor at the bottom and right up to a multiple of ``multiple``."""
    pad_h = -x.shape[1] % multiple
    pad_w = -x.shape[2] % multiple
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def check_lepe_kernel(side_dwconv: object) -> None:
    """LePE kernels must be 0 (off) or odd, so that 'same' padding keeps the map size."""
    if isinstance(side_dwconv, bool) or not isinstance(side_dwconv, int) or side_dwconv < 0 \
            or (side_dwconv > 0 and side_dwconv % 2 == 0):
        raise AttentionConfigError(
            f"side_dwconv must be 0 (no LePE) or an odd kernel size, got {side_dwconv!r}")


def softmax_scale(qk_scale: float | None, channels: int) -> float:
    """The logits' scale: ``qk_scale`` if given (a finite number > 0: 0 is refused, not taken for
    the default), else channels ** -0.5."""
    if qk_scale is None:
        return channels ** -0.5
    return check_number("qk_scale", qk_scale, positive=True)


def lepe_macs(side_dwconv: int, tokens: int, channels: int) -> int:
    """Multiply-adds of a depthwise LePE conv over ``tokens`` positions."""
    return tokens * channels * side_dwconv ** 2

