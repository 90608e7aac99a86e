"""Bi-level routing attention (BRA) of BiFormer (Zhu et al., CVPR 2023).

Reproduces the authors' ``BiLevelRoutingAttention`` (rayleizhu/BiFormer, ``ops/bra_legacy.py``):
same constructor options and defaults, same state_dict keys and shapes, same outputs.

1. The NHWC map is cut into n_win × n_win regions (auto_pad pads bottom/right with zeros first).
2. One Linear projects every token to [q | k | v] (qk_dim, qk_dim, dim channels).
3. Region-level routing: q and k are averaged per region (before any kv downsampling); the
   logits (q_r·scale) k_rᵀ pick the top-k key regions of every query region, and the routing
   weights are the softmax over those k logits. Region q/k are detached unless diff_routing;
   param_routing passes both through a Linear ``router.emb`` first.
4. [k | v] of each region is optionally pooled (kv_downsample_mode), then the routed regions are
   gathered: every query region gets a topk-times copy of its key regions' tokens. Soft routing
   scales the gathered k *and* v by the region's routing weight.
5. Token attention of each region's queries over the gathered keys, with heads sharing the
   routing and the same ``scale = qk_scale or qk_dim ** -0.5`` as the routing.
6. LePE (depthwise conv over v at full resolution) is added, then ``wo``; auto_pad crops.

What upstream leaves unimplemented ('fracpool', 'conv', hard differentiable routing) raises
``NotImplementedError`` when the module is built.

More than 400 lines: one file per family, and BRA's backends (reference, SDPA, FlexAttention, the chunked
CPU path) share its routing and region layout; the fused Triton kernels are apart (``bra_triton``).
"""

from __future__ import annotations

import os
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from .core import (check_lepe_kernel, compiled_flex_attention, conv_nhwc, depthwise_conv, explicit_attention,
                   flex_backend, lepe_macs, merge_heads, pad_to_multiple, sdpa_attention, softmax_scale, split_heads)
from .errors import AttentionConfigError
from .registry import AttentionModule, Backend, MacCount, check_choice, check_flag, check_positive_int, register

KV_DOWNSAMPLE_MODES = ("identity", "avgpool", "maxpool", "ada_avgpool", "ada_maxpool")
UNIMPLEMENTED_KV_MODES = ("fracpool", "conv")
PARAM_ATTENTION_MODES = ("qkvo", "qkv")


class QKVLinear(nn.Module):
    """One Linear dim -> [q | k | v] of qk_dim + qk_dim + dim channels (key ``qkv.qkv``)."""

    def __init__(self, dim: int, qk_dim: int) -> None:
        super().__init__()
        self.qk_dim = qk_dim
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns q (qk_dim channels) and the concatenated [k | v]."""
        q, kv = self.qkv(x).split([self.qk_dim, self.qkv.out_features - self.qk_dim], dim=-1)
        return q, kv


class RegionRouter(nn.Module):
    """Top-k region routing; ``emb`` is a Linear with param_routing (key ``router.emb``)."""

    def __init__(self, qk_dim: int, topk: int, scale: float, param_routing: bool, diff_routing: bool) -> None:
        super().__init__()
        self.topk = topk
        self.scale = scale
        self.diff_routing = diff_routing
        self.emb = nn.Linear(qk_dim, qk_dim) if param_routing else nn.Identity()
        self.pinned: Tensor | None = None  # (B, regions, topk) indices routed to instead of the top-k

    def forward(self, region_q: Tensor, region_k: Tensor) -> tuple[Tensor, Tensor]:
        """(B, regions, qk_dim) pair -> routing weights and indices, both (B, regions, topk). With ``pinned``
        indices, those regions are routed to, weighted by the softmax of their logits."""
        if not self.diff_routing:
            region_q, region_k = region_q.detach(), region_k.detach()
        logits = (self.emb(region_q) * self.scale) @ self.emb(region_k).transpose(-2, -1)
        if self.pinned is None:
            top_logits, indices = logits.topk(self.topk, dim=-1)
        else:
            indices = self.pinned
            top_logits = logits.gather(-1, indices)
        return top_logits.softmax(dim=-1), indices


def check_kv_size(name: str, value: object, mode: str, used: bool) -> int | None:
    """A kv downsampling size: an integer >= 1 where ``mode`` uses it (returned as an int); else an integer or
    None, as upstream's configs pass placeholders (-1, None) for the sizes a mode ignores."""
    if used:
        return check_positive_int(name, value)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise AttentionConfigError(
            f"{name} must be an integer or None (kv_downsample_mode {mode!r} does not use it), got {value!r}")
    return value


def kv_pooling(mode: str, kv_per_win: int, ratio: int) -> nn.Module | None:
    """The per-region pooling of [k | v] for a kv_downsample_mode, or None for no pooling."""
    if mode == "ada_avgpool":
        return nn.AdaptiveAvgPool2d(kv_per_win)
    if mode == "ada_maxpool":
        return nn.AdaptiveMaxPool2d(kv_per_win)
    if mode in ("avgpool", "maxpool") and ratio > 1:
        return nn.AvgPool2d(ratio) if mode == "avgpool" else nn.MaxPool2d(ratio)
    return None


def gathered(kernel: Callable[..., tuple[Tensor, Tensor | None]]) -> Callable[..., tuple[Tensor, Tensor | None]]:
    """A backend that gathers the routed K/V (the official algorithm) and runs ``kernel`` on them."""

    def attend(module: "BiLevelRoutingAttention", q: Tensor, kv: Tensor, r_weight: Tensor,
               r_idx: Tensor) -> tuple[Tensor, Tensor | None]:
        routed = module.gather_routed(kv, r_weight, r_idx).flatten(2, 3)
        k, v = routed.split([module.qk_dim, module.dim], dim=-1)
        heads = module.num_heads
        out, weights = kernel(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), module.scale)
        return merge_heads(out), weights

    return attend


CHUNK_ELEMENTS = 1 << 19  # gathered K/V elements per chunk: 2 MB in fp32, cache-sized


def flash_heads(x: Tensor, heads: int, width: int) -> Tensor:
    """(n, L, heads·d) -> (n, heads, L, width): a strided view, zero-padded to ``width`` channels when d is
    smaller (PyTorch's CPU flash kernels want one head size for q, k and v; zero channels add nothing)."""
    x = x.unflatten(-1, (heads, -1))
    if x.shape[-1] < width:
        x = F.pad(x, (0, width - x.shape[-1]))
    return x.transpose(1, 2)


def merge_flash_heads(x: Tensor, channels: int) -> Tensor:
    """(n, heads, L, width) -> (n, L, heads·d) with d = channels / heads: the inverse of ``flash_heads``."""
    return x.transpose(1, 2)[..., :channels // x.shape[1]].flatten(2)


class ChunkedRoutedAttention(torch.autograd.Function):
    """Token attention of every query region over its routed key regions, a cache-sized chunk of query
    regions at a time, through PyTorch's CPU flash-attention kernels.

    q (N, L, qk_dim) and kv (N, M, qk_dim + dim) are region-major (N = batch · regions) and may be strided
    views of the qkv projection: the kernels read heads in place, so no head-major copy of the map is
    made. routed (N, topk) indexes kv's regions for every query region; weights (N, topk) scale a routed
    region's k and v (soft routing) or are None. Each chunk gathers its own routed K/V (the official
    algorithm's copy, a chunk of it at a time, never the whole map's); the backward gathers again, runs
    the flash backward from the saved log-sum-exp and adds the K/V gradients into one buffer.
    """

    @staticmethod
    def routed_kv(kv: Tensor, weights: Tensor | None, routed: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
        """A chunk's gathered [k | v] (count, topk, M, channels), and the same weighted and flattened to
        (count, topk · M, channels) for attention."""
        count, topk = routed[rows].shape
        gathered = kv.index_select(0, routed[rows].flatten()).view(count, topk, kv.shape[1], -1)
        weighted = gathered if weights is None else gathered * weights[rows, :, None, None]
        return gathered, weighted.flatten(1, 2)

    @staticmethod
    def forward(ctx, q: Tensor, kv: Tensor, weights: Tensor | None, routed: Tensor, heads: int, scale: float,
                step: int) -> Tensor:
        qk_dim = q.shape[-1]
        dim = kv.shape[-1] - qk_dim
        width = max(qk_dim, dim) // heads
        out = q.new_empty(q.shape[:2] + (dim,))
        log_sum_exp = []
        for start in range(0, len(q), step):
            rows = slice(start, start + step)
            k, v = ChunkedRoutedAttention.routed_kv(kv, weights, routed, rows)[1].split([qk_dim, dim], dim=-1)
            chunk_out, chunk_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                flash_heads(q[rows], heads, width), flash_heads(k, heads, width), flash_heads(v, heads, width),
                scale=scale)
            out[rows] = merge_flash_heads(chunk_out, dim)
            log_sum_exp.append(chunk_lse)
        ctx.save_for_backward(q, kv, weights, routed, out, torch.cat(log_sum_exp))
        ctx.heads, ctx.width, ctx.scale, ctx.step = heads, width, scale, step
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, kv, weights, routed, out, log_sum_exp = ctx.saved_tensors
        heads, width, qk_dim, dim = ctx.heads, ctx.width, q.shape[-1], out.shape[-1]
        dq, dkv = q.new_empty(q.shape), kv.new_zeros(kv.shape)
        dweights = torch.empty_like(weights) if ctx.needs_input_grad[2] else None
        for start in range(0, len(q), ctx.step):
            rows = slice(start, start + ctx.step)
            gathered, weighted = ChunkedRoutedAttention.routed_kv(kv, weights, routed, rows)
            k, v = weighted.split([qk_dim, dim], dim=-1)
            dq_chunk, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                *(flash_heads(t, heads, width) for t in (dout[rows], q[rows], k, v, out[rows])),
                log_sum_exp[rows], 0.0, False, scale=ctx.scale)
            dq[rows] = merge_flash_heads(dq_chunk, qk_dim)
            dgathered = torch.cat([merge_flash_heads(dk, qk_dim), merge_flash_heads(dv, dim)], dim=-1)
            dgathered = dgathered.view(gathered.shape)
            if dweights is not None:
                dweights[rows] = (dgathered * gathered).sum((2, 3))
            if weights is not None:
                dgathered = dgathered * weights[rows, :, None, None]
            dkv.index_add_(0, routed[rows].flatten(), dgathered.flatten(0, 1))
        return dq, dkv, dweights, None, None, None, None


def chunked_gathered(module: "BiLevelRoutingAttention", q: Tensor, kv: Tensor, r_weight: Tensor,
                     r_idx: Tensor) -> tuple[Tensor, None]:
    """The official gather and attention over cache-sized chunks of query regions (the CPU fast path).

    On a CPU, moving the topk-times copy of the whole map through memory costs more than the math:
    here each chunk's routed K/V are gathered and consumed while they are in cache, and the heads are
    read in place from the qkv projection.
    """
    batch, regions, query_tokens, _ = q.shape
    topk, key_tokens = r_idx.shape[-1], kv.shape[2]
    first_region = (torch.arange(batch, device=q.device) * regions).view(batch, 1, 1)
    routed = (first_region + r_idx).flatten(0, 1)  # the kv row of every (batch, query region, slot)
    weights = r_weight.flatten(0, 1) if module.soft_routing else None
    # a plain int: under torch.jit.trace (fvcore) sizes are tensors, and a tensor step would be an op input
    step = max(1, CHUNK_ELEMENTS // int(topk * key_tokens * kv.shape[-1]))
    out = ChunkedRoutedAttention.apply(q.flatten(0, 1), kv.flatten(0, 1), weights, routed, module.num_heads,
                                       module.scale, step)
    return out.view(batch, regions, query_tokens, module.dim), None


FLEX_BLOCK = 128  # FlexAttention's default block: every tile of its CUDA kernels, forward and backward, divides it


def flex_block(device: torch.device, query_tokens: int, key_tokens: int) -> tuple[int, int]:
    """Block sides of the routed mask: one region each on the CPU (exact: no listed block holds an
    unrouted pair); FLEX_BLOCK tokens on CUDA, whose FlexAttention kernels take only blocks their
    tiles divide (64 or 128 tokens at BiFormer's head size; read from torch's Inductor source), which
    2×2-, 4×4- and 7×7-token regions are not."""
    return (query_tokens, key_tokens) if device.type == "cpu" else (FLEX_BLOCK, FLEX_BLOCK)


def region_blocks(regions: int, tokens: int, block: int, device: torch.device) -> Tensor:
    """(regions, blocks) float: 1 where a region's tokens (region-major order) meet a block."""
    first = torch.arange(regions, device=device) * tokens
    blocks = torch.arange(-(-regions * tokens // block), device=device) * block
    return ((blocks[None, :] < first[:, None] + tokens) & (first[:, None] < blocks[None, :] + block)).float()


def routed_block_mask(r_idx: Tensor, query_tokens: int, key_tokens: int, block: tuple[int, int]) -> BlockMask:
    """A FlexAttention block mask of the routing, in blocks of ``block`` (query, key) tokens.

    Tokens are in region-major order. A (query block, key block) pair is listed when a query region
    with tokens in the first routes to a key region with tokens in the second; inside the listed
    blocks the routing itself, given as the mask_mod, keeps each query to its routed regions' keys
    (with blocks of one region each, nothing is left for it to mask). Heads share the routing, so
    the mask has one head. FlexAttention's uncompiled path reads only the mask_mod.
    """
    batch, regions, topk = r_idx.shape
    routed = torch.zeros(batch, regions, regions, dtype=torch.bool, device=r_idx.device)
    routed.scatter_(2, r_idx, True)
    query_blocks = region_blocks(regions, query_tokens, block[0], r_idx.device)
    key_blocks = region_blocks(regions, key_tokens, block[1], r_idx.device)
    pairs = query_blocks.T @ routed.float() @ key_blocks > 0  # (B, query blocks, key blocks)
    counts = pairs.sum(-1, dtype=torch.int32)
    indices = torch.argsort(pairs.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)

    def same_routing(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return routed[b, q_idx // query_tokens, kv_idx // key_tokens]

    return BlockMask.from_kv_blocks(counts[:, None], indices[:, None], BLOCK_SIZE=block, mask_mod=same_routing,
                                    seq_lengths=(regions * query_tokens, regions * key_tokens))


def flex_routed_attention(module: "BiLevelRoutingAttention", q: Tensor, kv: Tensor, r_weight: Tensor,
                          r_idx: Tensor) -> tuple[Tensor, None]:
    """Token attention straight from the un-gathered pooled K/V through a routed block mask."""
    batch, regions, query_tokens, _ = q.shape
    key_tokens = kv.shape[2]
    k, v = kv.split([module.qk_dim, module.dim], dim=-1)
    heads = module.num_heads
    out = compiled_flex_attention(
        split_heads(q.reshape(batch, regions * query_tokens, -1), heads),
        split_heads(k.reshape(batch, regions * key_tokens, -1), heads),
        split_heads(v.reshape(batch, regions * key_tokens, -1), heads),
        block_mask=routed_block_mask(r_idx, query_tokens, key_tokens, flex_block(q.device, query_tokens, key_tokens)),
        scale=module.scale)
    return merge_heads(out).reshape(batch, regions, query_tokens, module.dim), None


def triton_routed_attention(module: "BiLevelRoutingAttention", q: Tensor, kv: Tensor, r_weight: Tensor,
                            r_idx: Tensor) -> tuple[Tensor, None]:
    """The suite's fused Triton kernels: routed regions read in place, soft routing inside."""
    from .bra_triton import routed_attention  # imported on use: triton is an optional dependency

    weights = r_weight if module.soft_routing else None
    return routed_attention(q, kv, weights, r_idx, module.num_heads, module.qk_dim, module.scale), None


def routed_attention_macs(inputs: list[tuple[int, ...]], outputs: list[tuple[int, ...]]) -> int:
    """MACs of the fused token attention: every query meets topk pooled regions on q·k and p·v."""
    (batch, regions, query_tokens, _), (_, _, key_tokens, kv_channels) = inputs[0], inputs[1]
    topk = inputs[-1][-1]  # r_idx (B, regions, topk) is the last tensor input
    return batch * regions * query_tokens * topk * key_tokens * kv_channels


def chunked_attention_macs(inputs: list[tuple[int, ...]], outputs: list[tuple[int, ...]]) -> int:
    """MACs of ``ChunkedRoutedAttention``: every query meets topk key regions on q·k and p·v."""
    (regions, query_tokens, _), (_, key_tokens, kv_channels) = inputs[:2]
    topk = inputs[-1][-1]  # routed (regions, topk) is the last tensor input
    return regions * query_tokens * topk * key_tokens * kv_channels


def triton_tile_metrics(run_pass: Callable[[], object]) -> dict[str, float]:
    """The share of the kernels' issued matrix multiply-adds that is useful, over one pass."""
    from .bra_triton import tile_accounting

    with tile_accounting() as work:
        run_pass()
    return {"tile_efficiency": work.efficiency}


def triton_backend() -> Backend:
    """The 'triton' backend record. Its kernels run on CUDA; under Triton's interpreter
    (TRITON_INTERPRET=1 before the kernels are first imported) they also run on CPU tensors,
    slowly and without bf16: that is how the CPU test suite checks them."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return Backend(
        "triton", triton_routed_attention,
        "fused Triton kernels (forward and backward): online softmax over the routed regions of un-gathered K/V",
        devices=("cuda", "cpu") if interpreted else ("cuda",),
        dtypes=(torch.float16, torch.float32) if interpreted else (torch.float16, torch.bfloat16, torch.float32),
        requires=("triton",), custom_ops=(("RoutedAttention", routed_attention_macs),),
        pass_metrics=triton_tile_metrics)


@register
class BiLevelRoutingAttention(AttentionModule):
    """BiFormer's bi-level routing attention on an NHWC map; options as upstream.

    Args:
        dim: channels of the input, of v and of the output.
        num_heads: heads; they share the routing.
        n_win: regions per side (n_win² regions in all).
        qk_dim: channels of q and k (None: dim).
        qk_scale: scale of routing and attention logits, a finite number > 0 (None: qk_dim ** -0.5, the
            whole qk_dim).
        kv_per_win: side of the pooled region for 'ada_avgpool' / 'ada_maxpool'; at most the region's
            side (known at forward: H / n_win), since adaptive pooling would upsample the keys.
        kv_downsample_ratio: kernel and stride for 'avgpool' / 'maxpool' (1: no pooling); at most the
            region's side.
        kv_downsample_kernel: accepted for compatibility; unused, as upstream.
        kv_downsample_mode: one of identity, avgpool, maxpool, ada_avgpool, ada_maxpool.
        topk: routed key regions per query region, 1..n_win².
        param_attention: 'qkvo' (output Linear ``wo``) or 'qkv' (none).
        param_routing: a Linear before routing; needs diff_routing.
        diff_routing: let gradients flow into the routing (needs soft_routing, as upstream).
        soft_routing: scale gathered k and v by their region's routing weight.
        side_dwconv: LePE kernel, 0 for none.
        auto_pad: pad H, W up to multiples of n_win and crop the output.
        backend: 'torch' (the official gather, explicit matrix), 'sdpa' (gathered K/V through SDPA),
            'flex' (a routed block mask, nothing gathered), 'triton' (the suite's fused kernels, CUDA) or
            'chunked' (the gather a cache-sized chunk at a time, through PyTorch's CPU flash kernels).
    """

    family = "bra"
    backends = {
        "torch": Backend("torch", gathered(explicit_attention),
                         "official algorithm: topk-times gathered K/V, explicit attention matrix"),
        "sdpa": Backend("sdpa", gathered(sdpa_attention),
                        "gathered K/V, token attention through F.scaled_dot_product_attention"),
        "flex": flex_backend(flex_routed_attention, "FlexAttention with a block mask built from the routing: one "
                                                    "block per region, nothing gathered"),
        "triton": triton_backend(),
        "chunked": Backend("chunked", chunked_gathered,
                           "the official gather, a cache-sized chunk of query regions at a time, through "
                           "PyTorch's CPU flash-attention kernels (the CPU fast path)", devices=("cpu",),
                           custom_ops=(("ChunkedRoutedAttention", chunked_attention_macs),)),
    }

    def __init__(self, dim: int, num_heads: int = 8, n_win: int = 7, qk_dim: int | None = None,
                 qk_scale: float | None = None, kv_per_win: int = 4, kv_downsample_ratio: int = 4,
                 kv_downsample_kernel: int | None = None, kv_downsample_mode: str = "identity", topk: int = 4,
                 param_attention: str = "qkvo", param_routing: bool = False, diff_routing: bool = False,
                 soft_routing: bool = False, side_dwconv: int = 3, auto_pad: bool = False, *,
                 backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend)
        if qk_dim is None:
            qk_dim = dim
        qk_dim = check_positive_int("qk_dim", qk_dim)
        if qk_dim % num_heads:
            raise AttentionConfigError(f"qk_dim {qk_dim} is not divisible by num_heads {num_heads}")
        n_win = check_positive_int("n_win", n_win)
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= n_win ** 2:
            raise AttentionConfigError(f"topk must be an integer in 1..n_win² = 1..{n_win ** 2}, got {topk!r}")
        if kv_downsample_mode in UNIMPLEMENTED_KV_MODES:
            raise NotImplementedError(
                f"kv_downsample_mode {kv_downsample_mode!r} is unimplemented upstream (BiFormer); "
                f"implemented: {', '.join(KV_DOWNSAMPLE_MODES)}")
        check_choice("kv_downsample_mode", kv_downsample_mode, KV_DOWNSAMPLE_MODES)
        kv_per_win = check_kv_size("kv_per_win", kv_per_win, kv_downsample_mode,
                                   kv_downsample_mode.startswith("ada_"))
        kv_downsample_ratio = check_kv_size("kv_downsample_ratio", kv_downsample_ratio, kv_downsample_mode,
                                            kv_downsample_mode in ("avgpool", "maxpool"))
        check_kv_size("kv_downsample_kernel", kv_downsample_kernel, kv_downsample_mode, used=False)
        check_choice("param_attention", param_attention, PARAM_ATTENTION_MODES)
        for name, flag in (("param_routing", param_routing), ("diff_routing", diff_routing),
                           ("soft_routing", soft_routing), ("auto_pad", auto_pad)):
            check_flag(name, flag)
        if param_routing and not diff_routing:
            raise AttentionConfigError("param_routing=True needs diff_routing=True: a learned routing "
                                       "projection gets no gradient through non-differentiable routing")
        if diff_routing and not soft_routing:
            raise NotImplementedError("diff_routing=True without soft_routing is 'hard differentiable "
                                      "routing', unimplemented upstream; set soft_routing=True")
        check_lepe_kernel(side_dwconv)

        self.n_win = n_win
        self.qk_dim = qk_dim
        self.scale = softmax_scale(qk_scale, qk_dim)
        self.topk = topk
        self.kv_per_win = kv_per_win
        self.kv_downsample_ratio = kv_downsample_ratio
        self.kv_downsample_kernel = kv_downsample_kernel
        self.kv_downsample_mode = kv_downsample_mode
        self.param_attention = param_attention
        self.param_routing = param_routing
        self.diff_routing = diff_routing
        self.soft_routing = soft_routing
        self.side_dwconv = side_dwconv
        self.auto_pad = auto_pad

        self.lepe = depthwise_conv(side_dwconv, dim)
        self.router = RegionRouter(qk_dim, topk, self.scale, param_routing, diff_routing)
        self.qkv = QKVLinear(dim, qk_dim)
        self.wo = nn.Linear(dim, dim) if param_attention == "qkvo" else nn.Identity()
        self.kv_down = kv_pooling(kv_downsample_mode, kv_per_win, kv_downsample_ratio)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The map size the regions are cut from; without auto_pad both must divide by n_win."""
        if self.auto_pad:
            return -(-height // self.n_win) * self.n_win, -(-width // self.n_win) * self.n_win
        if height % self.n_win or width % self.n_win:
            raise AttentionConfigError(
                f"H={height} and W={width} must be divisible by n_win={self.n_win}; "
                f"pass auto_pad=True to pad the input instead")
        return height, width

    def pooled_region_side(self, region_h: int, region_w: int) -> tuple[int, int]:
        """Side lengths of a region's [k | v] after kv downsampling. A pooled side larger than the
        region's is refused: upstream's adaptive pooling would silently upsample the keys."""
        if self.kv_down is None:
            return region_h, region_w
        ada = self.kv_downsample_mode.startswith("ada_")
        name, size = ("kv_per_win", self.kv_per_win) if ada else ("kv_downsample_ratio", self.kv_downsample_ratio)
        if size > min(region_h, region_w):
            raise AttentionConfigError(
                f"{name} {size} exceeds the {region_h}×{region_w} region ({self.n_win}×{self.n_win} regions); "
                f"it must be <= {min(region_h, region_w)} here")
        return (size, size) if ada else (region_h // size, region_w // size)

    def check_map_size(self, height: int, width: int) -> None:
        padded_h, padded_w = self.padded_size(height, width)
        self.pooled_region_side(padded_h // self.n_win, padded_w // self.n_win)

    def to_regions(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B, n_win², h, w, C), regions in row-major order."""
        batch, height, width, channels = x.shape
        n = self.n_win
        x = x.reshape(batch, n, height // n, n, width // n, channels)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, n * n, height // n, width // n, channels)

    def from_regions(self, x: Tensor) -> Tensor:
        """Inverse of ``to_regions``."""
        batch, _, region_h, region_w, channels = x.shape
        n = self.n_win
        x = x.reshape(batch, n, n, region_h, region_w, channels)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(batch, n * region_h, n * region_w, channels)

    def pool_kv(self, kv: Tensor) -> Tensor:
        """(B, regions, h, w, c) -> (B, regions, pooled tokens, c)."""
        batch, regions, region_h, region_w, channels = kv.shape
        if self.kv_down is not None:
            pooled = self.kv_down(kv.reshape(batch * regions, region_h, region_w, channels).permute(0, 3, 1, 2))
            kv = pooled.permute(0, 2, 3, 1)
        return kv.reshape(batch, regions, -1, channels)

    def gather_routed(self, kv: Tensor, r_weight: Tensor, r_idx: Tensor) -> Tensor:
        """Copy each query region's routed key regions: (B, regions, topk, tokens, c)."""
        batch_index = torch.arange(kv.shape[0], device=kv.device)[:, None, None]
        routed = kv[batch_index, r_idx]
        if self.soft_routing:
            routed = routed * r_weight[..., None, None]
        return routed

    def unsupported_reason(self) -> str | None:
        if self.backend == "flex" and self.soft_routing:
            return ("soft_routing scales each routed region's values by its routing weight, which a "
                    "FlexAttention score_mod cannot express; use 'torch' or 'sdpa'")
        return None

    def forward(self, x: Tensor, ret_attn_mask: bool = False):
        """NHWC -> NHWC; with ret_attn_mask also (r_weight, r_idx, attn_weight), as upstream."""
        self.check_input(x)
        check_flag("ret_attn_mask", ret_attn_mask)  # a truthy "no" would return a tuple
        if ret_attn_mask and self.backend != self.reference_backend:
            raise AttentionConfigError(
                f"ret_attn_mask=True needs the attention weights, which backend {self.backend!r} never "
                f"forms; use backend='torch'")
        _, height, width, _ = x.shape
        q, kv, r_weight, r_idx = self.route(x)
        batch, regions, region_h, region_w, _ = q.shape
        out, attn_weight = self.attend(self, q.flatten(2, 3), self.pool_kv(kv), r_weight, r_idx)
        out = self.from_regions(out.reshape(batch, regions, region_h, region_w, self.dim))
        if self.lepe is not None:
            out = out + conv_nhwc(self.lepe, self.from_regions(kv[..., self.qk_dim:]))
        out = self.wo(out)[:, :height, :width]
        if ret_attn_mask:
            return out, r_weight, r_idx, attn_weight.flatten(0, 1)
        return out

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The forward up to the routing: q (B, regions, h, w, qk_dim) and [k | v] by region of the (padded)
        map, and the routing weights and indices (B, regions, topk)."""
        padded_h, padded_w = self.padded_size(x.shape[1], x.shape[2])
        if (padded_h, padded_w) != tuple(x.shape[1:3]):
            x = pad_to_multiple(x, self.n_win)
        q, kv = self.qkv(self.to_regions(x))
        r_weight, r_idx = self.router(*self.region_descriptors(q, kv[..., :self.qk_dim]))
        return q, kv, r_weight, r_idx

    def region_descriptors(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """The region-level query and key the router compares, from q and k by region (B, regions, h, w, qk_dim):
        each region's mean, as BiFormer. A variant that routes on another summary overrides this."""
        return q.mean((2, 3)), k.mean((2, 3))

    def exact_copy(self, x: Tensor) -> BiLevelRoutingAttention:
        """The float64 copy routes to the regions this module picks on ``x``: in low precision a near-tie
        of two routing logits may be broken the other way than in float64, which would compare two
        different computations rather than measure rounding."""
        exact = super().exact_copy(x)
        with torch.no_grad():
            exact.router.pinned = self.route(x)[3]
        return exact

    def count_macs(self, batch: int, height: int, width: int) -> MacCount:
        return self._macs(batch, height, width, padded=True)

    def count_useful_macs(self, batch: int, height: int, width: int) -> MacCount:
        """The projections, LePE and token attention of the real tokens (each real query still attends its
        routed regions whole); the routing between regions as it runs."""
        return self._macs(batch, height, width, padded=False)

    def _macs(self, batch: int, height: int, width: int, padded: bool) -> MacCount:
        padded_h, padded_w = self.padded_size(height, width)
        regions = self.n_win ** 2
        region_h, region_w = padded_h // self.n_win, padded_w // self.n_win
        pooled_h, pooled_w = self.pooled_region_side(region_h, region_w)
        tokens = batch * (padded_h * padded_w if padded else height * width)
        qk, dim = self.qk_dim, self.dim
        routing = batch * regions * regions * qk
        if self.param_routing:
            routing += 2 * batch * regions * qk * qk
        if self.kv_downsample_mode == "ada_avgpool":  # fvcore counts one per pooled input element
            routing += tokens * (qk + dim)
        return MacCount(
            projections=tokens * dim * (2 * qk + dim) + (tokens * dim * dim if self.param_attention == "qkvo" else 0),
            routing=routing,
            attention=tokens * self.topk * pooled_h * pooled_w * (qk + dim),
            positional=lepe_macs(self.side_dwconv, tokens, dim),
        )

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, n_win={self.n_win}, qk_dim={self.qk_dim}, topk={self.topk}, "
                f"kv_downsample_mode={self.kv_downsample_mode!r}, param_attention={self.param_attention!r}, "
                f"soft_routing={self.soft_routing}, diff_routing={self.diff_routing}, "
                f"side_dwconv={self.side_dwconv}, auto_pad={self.auto_pad}")
