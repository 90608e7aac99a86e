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
"""

from __future__ import annotations

import os
from typing import Callable

import torch
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

    def forward(self, region_q: Tensor, region_k: Tensor) -> tuple[Tensor, Tensor]:
        """(B, regions, qk_dim) pair -> routing weights and indices, both (B, regions, topk)."""
        if not self.diff_routing:
            region_q, region_k = region_q.detach(), region_k.detach()
        logits = (self.emb(region_q) * self.scale) @ self.emb(region_k).transpose(-2, -1)
        top_logits, indices = logits.topk(self.topk, dim=-1)
        return top_logits.softmax(dim=-1), indices


def check_kv_size(name: str, value: object, mode: str, used: bool) -> None:
    """A kv downsampling size: an integer >= 1 where ``mode`` uses it; else an integer or None, as
    upstream's configs pass placeholders (-1, None) for the sizes a mode ignores."""
    if used:
        check_positive_int(name, value)
    elif value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise AttentionConfigError(
            f"{name} must be an integer or None (kv_downsample_mode {mode!r} does not use it), got {value!r}")


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


CHUNK_SCORES = 1 << 19  # score-matrix elements per chunk: 2 MB in fp32, cache-sized


def head_major_blocks(x: Tensor, heads: int) -> Tensor:
    """(B, regions, tokens, heads·d) -> (B·heads·regions, tokens, d): one contiguous block per
    (batch, head, region), so that a routed region is one row of an index_select."""
    batch, regions, tokens, channels = x.shape
    blocks = x.reshape(batch, regions, tokens, heads, channels // heads).permute(0, 3, 1, 2, 4)
    return blocks.reshape(batch * heads * regions, tokens, channels // heads)


class ChunkedRoutedAttention(torch.autograd.Function):
    """Token attention of head-major blocks over their routed blocks, a chunk of query blocks at a time.

    q_blocks (N, L, dq), k_blocks (N, M, dq), v_blocks (N, M, dv); routed (N, topk) indexes the
    key blocks of every query block; weights (N, topk) scale a routed block's k and v (soft
    routing) or are None. The backward recomputes each chunk's scores instead of keeping them and
    adds the chunk's K/V gradients into one buffer, so the gathered copy never exists in either pass.
    """

    @staticmethod
    def chunk(scaled_q: Tensor, k_blocks: Tensor, v_blocks: Tensor, weights: Tensor | None, routed: Tensor,
              rows: slice) -> tuple[Tensor, ...]:
        """One chunk's routed K/V (unweighted and weighted) and attention probabilities. The queries come
        scaled, so that no pass over the (topk times larger) score matrix applies the scale."""
        index = routed[rows].flatten()
        count, topk = routed[rows].shape
        raw_keys = k_blocks.index_select(0, index).view(count, topk, k_blocks.shape[1], -1)
        raw_values = v_blocks.index_select(0, index).view(count, topk, v_blocks.shape[1], -1)
        keys, values = raw_keys, raw_values
        if weights is not None:
            keys, values = raw_keys * weights[rows, :, None, None], raw_values * weights[rows, :, None, None]
        keys, values = keys.flatten(1, 2), values.flatten(1, 2)
        probs = torch.bmm(scaled_q[rows], keys.transpose(1, 2)).softmax(dim=-1)
        return raw_keys, raw_values, keys, values, probs

    @staticmethod
    def forward(ctx, q_blocks: Tensor, k_blocks: Tensor, v_blocks: Tensor, weights: Tensor | None, routed: Tensor,
                scale: float, step: int) -> Tensor:
        out = q_blocks.new_empty(q_blocks.shape[:2] + (v_blocks.shape[-1],))
        scaled_q = q_blocks * scale
        for start in range(0, len(q_blocks), step):
            rows = slice(start, start + step)
            *_, values, probs = ChunkedRoutedAttention.chunk(scaled_q, k_blocks, v_blocks, weights, routed, rows)
            torch.bmm(probs, values, out=out[rows])
        ctx.save_for_backward(scaled_q, k_blocks, v_blocks, weights, routed, out)
        ctx.scale, ctx.step = scale, step
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        scaled_q, k_blocks, v_blocks, weights, routed, out = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(scaled_q), torch.zeros_like(k_blocks), torch.zeros_like(v_blocks)
        dweights = torch.empty_like(weights) if ctx.needs_input_grad[3] else None
        delta = (dout * out).sum(-1, keepdim=True)  # rowsum(dO ∘ O): the softmax backward's correction
        for start in range(0, len(scaled_q), ctx.step):
            rows = slice(start, start + ctx.step)
            raw_keys, raw_values, keys, values, probs = ChunkedRoutedAttention.chunk(
                scaled_q, k_blocks, v_blocks, weights, routed, rows)
            dlogits = probs * (torch.bmm(dout[rows], values.transpose(1, 2)) - delta[rows])  # d(scaled logits)
            dq[rows] = torch.bmm(dlogits, keys)
            dkeys = torch.bmm(dlogits.transpose(1, 2), scaled_q[rows]).view(raw_keys.shape)
            dvalues = torch.bmm(probs.transpose(1, 2), dout[rows]).view(raw_values.shape)
            if dweights is not None:
                dweights[rows] = (dkeys * raw_keys).sum((2, 3)) + (dvalues * raw_values).sum((2, 3))
            if weights is not None:
                dkeys, dvalues = dkeys * weights[rows, :, None, None], dvalues * weights[rows, :, None, None]
            index = routed[rows].flatten()
            dk.index_add_(0, index, dkeys.flatten(0, 1))
            dv.index_add_(0, index, dvalues.flatten(0, 1))
        return dq.mul_(ctx.scale), dk, dv, dweights, None, None, None


def chunked_gathered(module: "BiLevelRoutingAttention", q: Tensor, kv: Tensor, r_weight: Tensor,
                     r_idx: Tensor) -> tuple[Tensor, None]:
    """The official gather and explicit attention, over cache-sized chunks of query blocks.

    K/V are laid out head-major once, so each chunk gathers its routed blocks with one
    index_select into the layout the batched matmuls want, and the chunk's gathered K/V and score
    matrix are freed before the next. The topk-times copy of the whole map never exists: on a CPU,
    moving that copy and the full score matrix through memory costs more than the math.
    """
    batch, regions, query_tokens, _ = q.shape
    heads, topk, key_tokens = module.num_heads, r_idx.shape[-1], kv.shape[2]
    k, v = kv.split([module.qk_dim, module.dim], dim=-1)
    # the (batch, head, routed region) block of every (batch, head, query region, slot)
    first_block = (torch.arange(batch * heads, device=q.device) * regions).view(batch, heads, 1, 1)
    routed = (first_block + r_idx[:, None]).flatten(0, 2)
    weights = r_weight[:, None].expand(batch, heads, regions, topk).flatten(0, 2) if module.soft_routing else None
    # a plain int: under torch.jit.trace (fvcore) sizes are tensors, and a tensor step would be an op input
    step = max(1, CHUNK_SCORES // int(query_tokens * topk * key_tokens))
    out = ChunkedRoutedAttention.apply(head_major_blocks(q, heads), head_major_blocks(k, heads),
                                       head_major_blocks(v, heads), weights, routed, module.scale, step)
    out = out.view(batch, heads, regions, query_tokens, -1)
    return out.permute(0, 2, 3, 1, 4).reshape(batch, regions, query_tokens, module.dim), None


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
    """MACs of ``ChunkedRoutedAttention``: every query block meets topk key blocks on q·k and p·v."""
    (blocks, query_tokens, qk_channels), (_, key_tokens, _), (_, _, v_channels) = inputs[:3]
    topk = inputs[-1][-1]  # routed (blocks, topk) is the last tensor input
    return blocks * query_tokens * topk * key_tokens * (qk_channels + v_channels)


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
            'chunked' (the gather and explicit attention a cache-sized chunk at a time, CPU).
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
                           "the official gather and explicit attention over cache-sized chunks of query regions "
                           "(the CPU fast path)", devices=("cpu",),
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
        check_positive_int("qk_dim", qk_dim)
        if qk_dim % num_heads:
            raise AttentionConfigError(f"qk_dim {qk_dim} is not divisible by num_heads {num_heads}")
        check_positive_int("n_win", n_win)
        if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= n_win ** 2:
            raise AttentionConfigError(f"topk must be an integer in 1..n_win² = 1..{n_win ** 2}, got {topk!r}")
        if kv_downsample_mode in UNIMPLEMENTED_KV_MODES:
            raise NotImplementedError(
                f"kv_downsample_mode {kv_downsample_mode!r} is unimplemented upstream (BiFormer); "
                f"implemented: {', '.join(KV_DOWNSAMPLE_MODES)}")
        check_choice("kv_downsample_mode", kv_downsample_mode, KV_DOWNSAMPLE_MODES)
        check_kv_size("kv_per_win", kv_per_win, kv_downsample_mode, kv_downsample_mode.startswith("ada_"))
        check_kv_size("kv_downsample_ratio", kv_downsample_ratio, kv_downsample_mode,
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
        if ret_attn_mask and self.backend != self.reference_backend:
            raise AttentionConfigError(
                f"ret_attn_mask=True needs the attention weights, which backend {self.backend!r} never "
                f"forms; use backend='torch'")
        _, height, width, _ = x.shape
        padded_h, padded_w = self.padded_size(height, width)
        if (padded_h, padded_w) != (height, width):
            x = pad_to_multiple(x, self.n_win)
        q, kv = self.qkv(self.to_regions(x))
        batch, regions, region_h, region_w, _ = q.shape

        r_weight, r_idx = self.router(q.mean((2, 3)), kv[..., :self.qk_dim].mean((2, 3)))
        out, attn_weight = self.attend(self, q.flatten(2, 3), self.pool_kv(kv), r_weight, r_idx)
        out = self.from_regions(out.reshape(batch, regions, region_h, region_w, self.dim))
        if self.lepe is not None:
            out = out + conv_nhwc(self.lepe, self.from_regions(kv[..., self.qk_dim:]))
        out = self.wo(out)[:, :height, :width]
        if ret_attn_mask:
            return out, r_weight, r_idx, attn_weight.flatten(0, 1)
        return out

    def macs(self, batch: int, height: int, width: int) -> MacCount:
        padded_h, padded_w = self.padded_size(height, width)
        regions = self.n_win ** 2
        region_h, region_w = padded_h // self.n_win, padded_w // self.n_win
        pooled_h, pooled_w = self.pooled_region_side(region_h, region_w)
        tokens = batch * padded_h * padded_w
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
