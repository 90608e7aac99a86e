"""Fused bi-level routing attention in Triton: routed K/V are read in place, never gathered.

The official BRA copies every query region's top-k key regions into a topk-times larger tensor
before attending. These kernels instead loop over the routing list and read each routed region
straight from the (pooled) [k | v] tensor, with an online softmax and fp32 accumulation.

* **Tiles.** One program per (batch, region, head group). A tile row is one (head, query token) of
  the region, a tile column one (head, key token) of a routed region; a mask keeps each head to its
  own keys. Regions whose token count is not a power of two (7×7) are padded and masked. Tiny
  regions (2×2 tokens in BiFormer's stage 3) pack several heads into one tile, which is exact
  because every head shares the routing.
* **Soft routing.** k and v of a routed region are scaled by its routing weight inside the
  kernels: the logits and the region's value contribution are multiplied by the weight, and
  the backward returns the weight's gradient too (diff_routing trains through it).
* **Backward.** dQ (and the routing-weight gradient) runs per query region, like the forward.
  dK/dV run per *key* region over the transposed routing list (the query regions that routed to
  it, built with a stable sort): every gradient element is written by exactly one program, so the
  gradients are deterministic and need no fp32 atomic buffer, at the price of some load imbalance
  between popular and unpopular key regions.

Only the token attention is here; pooling, region affinity and top-k stay in PyTorch.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (fp32 and fp16; no bf16), which is how
the CPU test suite checks them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

MIN_TILE = 16  # the smallest tile side tl.dot accepts
MAX_PACKED_ROWS = 64  # heads are packed into one tile while it stays this small


@triton.jit
def _region_tile(ptr, batch, region, stride_b, stride_r, stride_t, stride_c, channel0,
                 head0, TOKENS: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_PER_TILE: tl.constexpr,
                 BLOCK_ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Load the (head, token) × channel tile of one region; padded rows and channels read 0."""
    rows = tl.arange(0, BLOCK_ROWS)
    chans = tl.arange(0, BLOCK_D)
    head = rows // TOKENS
    token = rows % TOKENS
    offsets = (batch * stride_b + region * stride_r + token[:, None] * stride_t
               + (channel0 + (head0 + head[:, None]) * HEAD_DIM + chans[None, :]) * stride_c)
    mask = (rows < HEADS_PER_TILE * TOKENS)[:, None] & (chans < HEAD_DIM)[None, :]
    return tl.load(ptr + offsets, mask=mask, other=0.0), offsets, mask


@triton.jit
def _pair_mask(QUERY_TOKENS: tl.constexpr, KEY_TOKENS: tl.constexpr, HEADS_PER_TILE: tl.constexpr,
               BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr):
    """Which (query row, key column) pairs are real tokens of the same head."""
    rows = tl.arange(0, BLOCK_Q)
    cols = tl.arange(0, BLOCK_K)
    same_head = (rows // QUERY_TOKENS)[:, None] == (cols // KEY_TOKENS)[None, :]
    return same_head & (rows < HEADS_PER_TILE * QUERY_TOKENS)[:, None] & (cols < HEADS_PER_TILE * KEY_TOKENS)[None, :]


@triton.jit
def _row_stats_offsets(batch, region, head0, REGIONS, HEADS, QUERY_TOKENS: tl.constexpr,
                       HEADS_PER_TILE: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Offsets into a contiguous (B, regions, heads, query tokens) fp32 tensor (lse, delta)."""
    rows = tl.arange(0, BLOCK_Q)
    offsets = ((batch * REGIONS + region) * HEADS + head0 + rows // QUERY_TOKENS) * QUERY_TOKENS + rows % QUERY_TOKENS
    return offsets, rows < HEADS_PER_TILE * QUERY_TOKENS


@triton.jit
def _program_region(REGIONS):
    """This program's flat (batch, region) index, its batch and its region, in int64."""
    pid = tl.program_id(0).to(tl.int64)
    return pid, pid // REGIONS, pid % REGIONS


@triton.jit
def _routed_region(kv_ptr, index_ptr, weight_ptr, batch, region, slot, skv_b, skv_r, skv_t, skv_c, si_b, si_r, si_k,
                   head0, QK_DIM, KEY_TOKENS: tl.constexpr, HEAD_DQ: tl.constexpr, HEAD_DV: tl.constexpr,
                   HEADS_PER_TILE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DQ: tl.constexpr,
                   BLOCK_DV: tl.constexpr, SOFT: tl.constexpr):
    """K and V tiles of the ``slot``-th region routed from ``region``, and its routing weight (1 without
    soft routing). Weights share the routing indices' strides."""
    offset = batch * si_b + region * si_r + slot * si_k
    routed = tl.load(index_ptr + offset).to(tl.int64)
    k, _, _ = _region_tile(kv_ptr, batch, routed, skv_b, skv_r, skv_t, skv_c, 0, head0, KEY_TOKENS, HEAD_DQ,
                           HEADS_PER_TILE, BLOCK_K, BLOCK_DQ)
    v, _, _ = _region_tile(kv_ptr, batch, routed, skv_b, skv_r, skv_t, skv_c, QK_DIM, head0, KEY_TOKENS, HEAD_DV,
                           HEADS_PER_TILE, BLOCK_K, BLOCK_DV)
    weight = 1.0
    if SOFT:
        weight = tl.load(weight_ptr + offset).to(tl.float32)
    return k, v, weight


@triton.jit
def _routed_forward(q_ptr, kv_ptr, weight_ptr, index_ptr, out_ptr, lse_ptr,
                    sq_b, sq_r, sq_t, sq_c, skv_b, skv_r, skv_t, skv_c, si_b, si_r, si_k,
                    so_b, so_r, so_t, so_c, scale, REGIONS, HEADS, QK_DIM, TOPK,
                    QUERY_TOKENS: tl.constexpr, KEY_TOKENS: tl.constexpr, HEAD_DQ: tl.constexpr,
                    HEAD_DV: tl.constexpr, HEADS_PER_TILE: tl.constexpr, BLOCK_Q: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
                    SOFT: tl.constexpr, PRECISION: tl.constexpr):
    """out = softmax(q kᵀ·scale) v over the routed regions of one (batch, query region, head group)."""
    _, batch, region = _program_region(REGIONS)
    head0 = tl.program_id(1) * HEADS_PER_TILE
    q, _, _ = _region_tile(q_ptr, batch, region, sq_b, sq_r, sq_t, sq_c, 0, head0, QUERY_TOKENS, HEAD_DQ,
                           HEADS_PER_TILE, BLOCK_Q, BLOCK_DQ)
    valid = _pair_mask(QUERY_TOKENS, KEY_TOKENS, HEADS_PER_TILE, BLOCK_Q, BLOCK_K)
    row_max = tl.full([BLOCK_Q], -1.0e30, tl.float32)
    row_sum = tl.zeros([BLOCK_Q], tl.float32)
    acc = tl.zeros([BLOCK_Q, BLOCK_DV], tl.float32)
    for slot in range(TOPK):
        k, v, weight = _routed_region(kv_ptr, index_ptr, weight_ptr, batch, region, slot, skv_b, skv_r, skv_t, skv_c,
                                      si_b, si_r, si_k, head0, QK_DIM, KEY_TOKENS, HEAD_DQ, HEAD_DV, HEADS_PER_TILE,
                                      BLOCK_K, BLOCK_DQ, BLOCK_DV, SOFT)
        logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (scale * weight)
        logits = tl.where(valid, logits, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(logits, 1))
        rescale = tl.exp(row_max - new_max)
        p = tl.exp(logits - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(p, 1)
        values = tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        if SOFT:
            values = values * weight
        acc = acc * rescale[:, None] + values
        row_max = new_max
    safe_sum = tl.where(row_sum > 0, row_sum, 1.0)
    _, out_offsets, out_mask = _region_tile(out_ptr, batch, region, so_b, so_r, so_t, so_c, 0, head0,
                                            QUERY_TOKENS, HEAD_DV, HEADS_PER_TILE, BLOCK_Q, BLOCK_DV)
    tl.store(out_ptr + out_offsets, (acc / safe_sum[:, None]).to(out_ptr.dtype.element_ty), mask=out_mask)
    stat_offsets, stat_mask = _row_stats_offsets(batch, region, head0, REGIONS, HEADS, QUERY_TOKENS,
                                                 HEADS_PER_TILE, BLOCK_Q)
    tl.store(lse_ptr + stat_offsets, row_max + tl.log(safe_sum), mask=stat_mask)


@triton.jit
def _routed_backward_query(q_ptr, kv_ptr, weight_ptr, index_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr,
                           dweight_ptr, sq_b, sq_r, sq_t, sq_c, skv_b, skv_r, skv_t, skv_c, si_b, si_r, si_k,
                           sd_b, sd_r, sd_t, sd_c, sg_b, sg_r, sg_t, sg_c, scale, REGIONS, HEADS, QK_DIM, TOPK,
                           QUERY_TOKENS: tl.constexpr, KEY_TOKENS: tl.constexpr, HEAD_DQ: tl.constexpr,
                           HEAD_DV: tl.constexpr, HEADS_PER_TILE: tl.constexpr, BLOCK_Q: tl.constexpr,
                           BLOCK_K: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
                           SOFT: tl.constexpr, WEIGHT_GRAD: tl.constexpr, PRECISION: tl.constexpr):
    """dQ of one (batch, query region, head group), and its share of the routing-weight gradient."""
    _, batch, region = _program_region(REGIONS)
    group = tl.program_id(1)
    head0 = group * HEADS_PER_TILE
    q, _, _ = _region_tile(q_ptr, batch, region, sq_b, sq_r, sq_t, sq_c, 0, head0, QUERY_TOKENS, HEAD_DQ,
                           HEADS_PER_TILE, BLOCK_Q, BLOCK_DQ)
    dout, _, _ = _region_tile(dout_ptr, batch, region, sd_b, sd_r, sd_t, sd_c, 0, head0, QUERY_TOKENS,
                              HEAD_DV, HEADS_PER_TILE, BLOCK_Q, BLOCK_DV)
    stat_offsets, stat_mask = _row_stats_offsets(batch, region, head0, REGIONS, HEADS, QUERY_TOKENS,
                                                 HEADS_PER_TILE, BLOCK_Q)
    lse = tl.load(lse_ptr + stat_offsets, mask=stat_mask, other=0.0)
    delta = tl.load(delta_ptr + stat_offsets, mask=stat_mask, other=0.0)
    valid = _pair_mask(QUERY_TOKENS, KEY_TOKENS, HEADS_PER_TILE, BLOCK_Q, BLOCK_K)
    dq = tl.zeros([BLOCK_Q, BLOCK_DQ], tl.float32)
    for slot in range(TOPK):
        k, v, weight = _routed_region(kv_ptr, index_ptr, weight_ptr, batch, region, slot, skv_b, skv_r, skv_t, skv_c,
                                      si_b, si_r, si_k, head0, QK_DIM, KEY_TOKENS, HEAD_DQ, HEAD_DV, HEADS_PER_TILE,
                                      BLOCK_K, BLOCK_DQ, BLOCK_DV, SOFT)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        p = tl.where(valid, tl.exp(scores * weight - lse[:, None]), 0.0)
        dp_unweighted = tl.dot(dout, tl.trans(v), input_precision=PRECISION)
        dlogits = p * (dp_unweighted * weight - delta[:, None])
        dq += tl.dot(dlogits.to(k.dtype), k, input_precision=PRECISION) * (scale * weight)
        if WEIGHT_GRAD:
            dweight = tl.sum(tl.sum(dlogits * scores + p * dp_unweighted, 1), 0)
            tl.store(dweight_ptr + ((batch * REGIONS + region) * tl.num_programs(1) + group) * TOPK + slot, dweight)
    _, dq_offsets, dq_mask = _region_tile(dq_ptr, batch, region, sg_b, sg_r, sg_t, sg_c, 0, head0, QUERY_TOKENS,
                                          HEAD_DQ, HEADS_PER_TILE, BLOCK_Q, BLOCK_DQ)
    tl.store(dq_ptr + dq_offsets, dq.to(dq_ptr.dtype.element_ty), mask=dq_mask)


@triton.jit
def _routed_backward_key(q_ptr, kv_ptr, weight_ptr, dout_ptr, lse_ptr, delta_ptr, dkv_ptr, entry_ptr, start_ptr,
                         sq_b, sq_r, sq_t, sq_c, skv_b, skv_r, skv_t, skv_c, sw_b, sw_r, sw_k,
                         sd_b, sd_r, sd_t, sd_c, sg_b, sg_r, sg_t, sg_c, scale, REGIONS, HEADS, QK_DIM, TOPK,
                         QUERY_TOKENS: tl.constexpr, KEY_TOKENS: tl.constexpr, HEAD_DQ: tl.constexpr,
                         HEAD_DV: tl.constexpr, HEADS_PER_TILE: tl.constexpr, BLOCK_Q: tl.constexpr,
                         BLOCK_K: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr,
                         SOFT: tl.constexpr, PRECISION: tl.constexpr):
    """dK and dV of one (batch, key region, head group), summed over the query regions routed to it."""
    pid, batch, region = _program_region(REGIONS)
    head0 = tl.program_id(1) * HEADS_PER_TILE
    k, _, _ = _region_tile(kv_ptr, batch, region, skv_b, skv_r, skv_t, skv_c, 0, head0, KEY_TOKENS, HEAD_DQ,
                           HEADS_PER_TILE, BLOCK_K, BLOCK_DQ)
    v, _, _ = _region_tile(kv_ptr, batch, region, skv_b, skv_r, skv_t, skv_c, QK_DIM, head0, KEY_TOKENS,
                           HEAD_DV, HEADS_PER_TILE, BLOCK_K, BLOCK_DV)
    valid = _pair_mask(QUERY_TOKENS, KEY_TOKENS, HEADS_PER_TILE, BLOCK_Q, BLOCK_K)
    dk = tl.zeros([BLOCK_K, BLOCK_DQ], tl.float32)
    dv = tl.zeros([BLOCK_K, BLOCK_DV], tl.float32)
    first = tl.load(start_ptr + pid)
    last = tl.load(start_ptr + pid + 1)
    for entry in range(first, last):
        routing = tl.load(entry_ptr + entry).to(tl.int64)  # flat index into (B, regions, topk)
        query_region = (routing // TOPK) % REGIONS
        slot = routing % TOPK
        q, _, _ = _region_tile(q_ptr, batch, query_region, sq_b, sq_r, sq_t, sq_c, 0, head0, QUERY_TOKENS,
                               HEAD_DQ, HEADS_PER_TILE, BLOCK_Q, BLOCK_DQ)
        dout, _, _ = _region_tile(dout_ptr, batch, query_region, sd_b, sd_r, sd_t, sd_c, 0, head0, QUERY_TOKENS,
                                  HEAD_DV, HEADS_PER_TILE, BLOCK_Q, BLOCK_DV)
        stat_offsets, stat_mask = _row_stats_offsets(batch, query_region, head0, REGIONS, HEADS, QUERY_TOKENS,
                                                     HEADS_PER_TILE, BLOCK_Q)
        lse = tl.load(lse_ptr + stat_offsets, mask=stat_mask, other=0.0)
        delta = tl.load(delta_ptr + stat_offsets, mask=stat_mask, other=0.0)
        weight = 1.0
        if SOFT:
            weight = tl.load(weight_ptr + batch * sw_b + query_region * sw_r + slot * sw_k).to(tl.float32)
        logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * (scale * weight)
        p = tl.where(valid, tl.exp(logits - lse[:, None]), 0.0)
        dlogits = p * (tl.dot(dout, tl.trans(v), input_precision=PRECISION) * weight - delta[:, None])
        dv += tl.dot(tl.trans(p).to(dout.dtype), dout, input_precision=PRECISION) * weight
        dk += tl.dot(tl.trans(dlogits).to(q.dtype), q, input_precision=PRECISION) * (scale * weight)
    _, dk_offsets, dk_mask = _region_tile(dkv_ptr, batch, region, sg_b, sg_r, sg_t, sg_c, 0, head0, KEY_TOKENS,
                                          HEAD_DQ, HEADS_PER_TILE, BLOCK_K, BLOCK_DQ)
    tl.store(dkv_ptr + dk_offsets, dk.to(dkv_ptr.dtype.element_ty), mask=dk_mask)
    _, dv_offsets, dv_mask = _region_tile(dkv_ptr, batch, region, sg_b, sg_r, sg_t, sg_c, QK_DIM, head0,
                                          KEY_TOKENS, HEAD_DV, HEADS_PER_TILE, BLOCK_K, BLOCK_DV)
    tl.store(dkv_ptr + dv_offsets, dv.to(dkv_ptr.dtype.element_ty), mask=dv_mask)


def tile_side(size: int) -> int:
    """A power of two ≥ size and ≥ the smallest tile tl.dot takes."""
    return max(MIN_TILE, triton.next_power_of_2(size))


def heads_per_tile(num_heads: int, query_tokens: int, key_tokens: int) -> int:
    """How many heads share a tile: the most (a power of two dividing num_heads) that keep both the
    query and the key side within MAX_PACKED_ROWS; 1 for regions of that size or more."""
    group = 1
    while (num_heads % (2 * group) == 0
           and 2 * group * max(query_tokens, key_tokens) <= MAX_PACKED_ROWS):
        group *= 2
    return group


class RoutedLaunch:
    """Tile sizes and the scalar arguments shared by the three kernels of one call."""

    def __init__(self, q: Tensor, kv: Tensor, r_idx: Tensor, num_heads: int, qk_dim: int, scale: float) -> None:
        # plain ints: under torch.jit.trace (fvcore) sizes are tensors, which Triton takes for pointers
        self.batch, self.regions, self.query_tokens, _ = map(int, q.shape)
        self.key_tokens = int(kv.shape[2])
        self.num_heads = num_heads
        self.qk_dim = qk_dim
        self.topk = int(r_idx.shape[-1])
        self.head_dq = qk_dim // num_heads
        self.head_dv = (int(kv.shape[-1]) - qk_dim) // num_heads
        self.group = heads_per_tile(num_heads, self.query_tokens, self.key_tokens)
        self.grid = (self.batch * self.regions, num_heads // self.group)
        self.scale = scale
        # fp32 inputs are multiplied in full fp32, as the reference does (Triton would use tf32)
        self.precision = "ieee" if q.dtype == torch.float32 else "tf32"

    def scalars(self) -> tuple:
        return self.scale, self.regions, self.num_heads, self.qk_dim, self.topk

    def constants(self) -> dict:
        return dict(QUERY_TOKENS=self.query_tokens, KEY_TOKENS=self.key_tokens, HEAD_DQ=self.head_dq,
                    HEAD_DV=self.head_dv, HEADS_PER_TILE=self.group,
                    BLOCK_Q=tile_side(self.group * self.query_tokens), BLOCK_K=tile_side(self.group * self.key_tokens),
                    BLOCK_DQ=tile_side(self.head_dq), BLOCK_DV=tile_side(self.head_dv), PRECISION=self.precision)

    def transposed_routing(self, r_idx: Tensor) -> tuple[Tensor, Tensor]:
        """For every (batch, key region): the flat (batch, query region, slot) entries routed to it,
        as a stable-sorted entry list and the start of each key region's run (CSR)."""
        key_region = (r_idx + self.regions * torch.arange(self.batch, device=r_idx.device)[:, None, None]).flatten()
        entries = torch.sort(key_region, stable=True).indices.to(torch.int32)
        counts = torch.bincount(key_region, minlength=self.batch * self.regions)
        starts = torch.zeros(self.batch * self.regions + 1, dtype=torch.int32, device=r_idx.device)
        starts[1:] = counts.cumsum(0)
        return entries, starts


class RoutedAttention(torch.autograd.Function):
    """Token attention of BRA over the routed regions of un-gathered K/V (forward and backward).

    q: (B, regions, query tokens, qk_dim); kv: (B, regions, key tokens, qk_dim + dim), the pooled
    [k | v]; r_weight: (B, regions, topk) routing weights, or None for hard routing; r_idx: the
    routed region indices (B, regions, topk). Returns (B, regions, query tokens, dim).
    """

    @staticmethod
    def forward(ctx, q: Tensor, kv: Tensor, r_weight: Tensor | None, r_idx: Tensor, num_heads: int,
                qk_dim: int, scale: float) -> Tensor:
        launch = RoutedLaunch(q, kv, r_idx, num_heads, qk_dim, scale)
        out = q.new_empty(q.shape[:-1] + (kv.shape[-1] - qk_dim,))
        lse = torch.empty(launch.batch, launch.regions, num_heads, launch.query_tokens,
                          dtype=torch.float32, device=q.device)
        soft = r_weight is not None
        _routed_forward[launch.grid](
            q, kv, r_weight if soft else r_idx, r_idx, out, lse, *q.stride(), *kv.stride(), *r_idx.stride(),
            *out.stride(), *launch.scalars(), SOFT=soft, **launch.constants())
        ctx.save_for_backward(q, kv, r_weight, r_idx, out, lse)
        ctx.launch = launch
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, kv, r_weight, r_idx, out, lse = ctx.saved_tensors
        launch: RoutedLaunch = ctx.launch
        soft = r_weight is not None
        weight_grad = soft and ctx.needs_input_grad[2]
        dout = dout.contiguous()
        delta = (dout.float() * out.float()).unflatten(-1, (launch.num_heads, launch.head_dv)).sum(-1)
        delta = delta.transpose(2, 3).contiguous()  # (B, regions, heads, query tokens), as lse
        weight_arg = r_weight if soft else r_idx
        weight_strides = r_weight.stride() if soft else r_idx.stride()
        dq = torch.empty_like(q)
        dweight = torch.empty(launch.batch, launch.regions, launch.grid[1], launch.topk, dtype=torch.float32,
                              device=q.device) if weight_grad else lse
        _routed_backward_query[launch.grid](
            q, kv, weight_arg, r_idx, dout, lse, delta, dq, dweight, *q.stride(), *kv.stride(), *r_idx.stride(),
            *dout.stride(), *dq.stride(), *launch.scalars(), SOFT=soft, WEIGHT_GRAD=weight_grad,
            **launch.constants())
        dkv = torch.empty_like(kv)
        entries, starts = launch.transposed_routing(r_idx)
        _routed_backward_key[launch.grid](
            q, kv, weight_arg, dout, lse, delta, dkv, entries, starts, *q.stride(), *kv.stride(), *weight_strides,
            *dout.stride(), *dkv.stride(), *launch.scalars(), SOFT=soft, **launch.constants())
        dr_weight = dweight.sum(2).to(r_weight.dtype) if weight_grad else None
        return dq, dkv, dr_weight, None, None, None, None


def routed_attention(q: Tensor, kv: Tensor, r_weight: Tensor | None, r_idx: Tensor, num_heads: int,
                     qk_dim: int, scale: float) -> Tensor:
    """Fused BRA token attention; see ``RoutedAttention`` for the shapes."""
    return RoutedAttention.apply(q, kv, r_weight, r_idx, num_heads, qk_dim, scale)
