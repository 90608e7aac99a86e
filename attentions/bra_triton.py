"""Fused bi-level routing attention in Triton: routed K/V are read in place, never gathered.

The official BRA copies every query region's top-k key regions into a topk-times larger tensor
before attending. These kernels instead read each routed region straight from the (pooled)
[k | v] tensor through the routing indices, with an online softmax and fp32 accumulation.

* **Tiles.** A program owns one (batch, region, head) and a block of that region's tokens (the
  rows). Its columns run along a *routed axis*: the key tokens of the query region's top-k
  regions, one after another, for the forward and dQ; the query tokens of the regions routed to
  a key region, for dK/dV. Several small regions share one tile of columns (at BiFormer's 28²
  stage four routed regions of 16 keys make one 64-key tile), and a large region spreads over
  several tiles (19×19 tokens: six tiles of 64), so any region size works and no tile is spent
  on another head's keys. ``tile_efficiency`` reports the share of the issued matrix work that
  is useful.
* **Soft routing.** k and v of a routed region are scaled by its routing weight inside the
  kernels: the logits and the region's value contribution are multiplied by the weight, and
  the backward returns the weight's gradient too (diff_routing trains through it).
* **Backward.** dQ (and the routing-weight gradient) runs per query region, like the forward.
  dK/dV run per *key* region over the transposed routing list (the query regions that routed to
  it, built with a stable sort): every gradient element is written by exactly one program, so the
  gradients are deterministic and need no fp32 atomic buffer, at the price of some load imbalance
  between popular and unpopular key regions.
* **Tuning.** Block sizes, warps and pipeline stages come from a small explicit table
  (``default_config``), the same on every machine. With ``BRA_TRITON_TUNE=1`` on CUDA each new
  shape times a few alternatives once and keeps the fastest (``tuned_config``).

Only the token attention is here; pooling, region affinity and top-k stay in PyTorch.
Under ``TRITON_INTERPRET=1`` the kernels run on CPU tensors (fp32 and fp16; no bf16), which is how
the CPU test suite checks them; ``tools.triton_aot`` compiles them for sm_90 and sm_80 without a GPU.

More than 400 lines because the forward and both backward kernels share one tiling of the routed axis
(``RoutedTiling``) and one tuning table: split, each kernel would need the others' constants to be read.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import torch
import triton
import triton.language as tl
from torch import Tensor

MIN_TILE = 16  # the smallest tile side tl.dot accepts
MAX_TILE = 64  # the default tile side: 64-row tiles are what Hopper's wgmma issues
TUNE_ENV = "BRA_TRITON_TUNE"
# Sizes and routing-list strides passed as plain ints: Triton would otherwise compile a variant per
# value class (1, multiple of 16, other) of each, so a sweep over n_win or topk would recompile for
# nothing. Token and channel strides stay specialised: they decide vectorised loads.
RUNTIME_INTS = ("REGIONS", "HEADS", "TOPK", "si_b", "si_r", "si_k", "sw_b", "sw_r", "sw_k")


# ----------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _program_rows(REGIONS, TOKENS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's flat (batch, region) index, batch, region, head, and its block of the region's
    tokens (the tile rows) with their mask; indices in int64."""
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    return pid, pid // REGIONS, pid % REGIONS, tl.program_id(1), rows, rows < TOKENS


@triton.jit
def _tile_offsets(row_offsets, row_mask, stride_c, channel0, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Offsets and mask of a (rows × one head's channels) tile; ``row_offsets`` locate each row's token."""
    chans = tl.arange(0, BLOCK_D)
    offsets = row_offsets[:, None] + (channel0 + chans[None, :]) * stride_c
    return offsets, row_mask[:, None] & (chans < HEAD_D)[None, :]


@triton.jit
def _load_tile(ptr, row_offsets, row_mask, stride_c, channel0, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr):
    """A (rows × one head's channels) tile; padded rows and channels read 0."""
    offsets, mask = _tile_offsets(row_offsets, row_mask, stride_c, channel0, HEAD_D, BLOCK_D)
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _store_tile(ptr, values, row_offsets, row_mask, stride_c, channel0, HEAD_D: tl.constexpr,
                BLOCK_D: tl.constexpr):
    offsets, mask = _tile_offsets(row_offsets, row_mask, stride_c, channel0, HEAD_D, BLOCK_D)
    tl.store(ptr + offsets, values.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _routed_axis(group, block, SPAN: tl.constexpr, ITEM_TOKENS: tl.constexpr, BLOCK: tl.constexpr):
    """Item and token of every column of tile (group, block) of a routed axis (items of
    ITEM_TOKENS tokens, each given SPAN columns), and whether the token exists. A tile holds
    BLOCK // SPAN items when they are small, or one block of a large item."""
    cols = tl.arange(0, BLOCK)
    item = group * (BLOCK // SPAN) + cols // SPAN
    token = block * SPAN + cols % SPAN
    return item, token, token < ITEM_TOKENS


@triton.jit
def _routed_kv_tile(kv_ptr, index_ptr, routing, si_k, batch, skv_b, skv_r, skv_t, skv_c, head, group, block,
                    QK_DIM, TOPK, KEY_TOKENS: tl.constexpr, HEAD_DQ: tl.constexpr, HEAD_DV: tl.constexpr,
                    BLOCK_COLS: tl.constexpr, SPAN: tl.constexpr, BLOCK_DQ: tl.constexpr, BLOCK_DV: tl.constexpr):
    """A query program's key and value tile (group, block) of its routed regions, read from the un-gathered
    [k | v] through the routing indices: each column's routing slot, whether it exists, k and v."""
    slot, token, col_mask = _routed_axis(group, block, SPAN, KEY_TOKENS, BLOCK_COLS)
    col_mask = col_mask & (slot < TOPK)
    routed = tl.load(index_ptr + routing + slot * si_k, mask=col_mask, other=0).to(tl.int64)
    key_rows = batch * skv_b + routed * skv_r + token * skv_t
    k = _load_tile(kv_ptr, key_rows, col_mask, skv_c, head * HEAD_DQ, HEAD_DQ, BLOCK_DQ)
    v = _load_tile(kv_ptr, key_rows, col_mask, skv_c, QK_DIM + head * HEAD_DV, HEAD_DV, BLOCK_DV)
    return slot, col_mask, k, v


@triton.jit
def _stats_offsets(batch, region, head, token, REGIONS, HEADS, QUERY_TOKENS: tl.constexpr):
    """Offsets into a contiguous (B, regions, heads, query tokens) fp32 tensor (lse, delta)."""
    return ((batch * REGIONS + region) * HEADS + head) * QUERY_TOKENS + token


@triton.jit(do_not_specialize=RUNTIME_INTS)
def _routed_forward(q_ptr, kv_ptr, weight_ptr, index_ptr, out_ptr, lse_ptr,
                    sq_b, sq_r, sq_t, sq_c, skv_b, skv_r, skv_t, skv_c, si_b, si_r, si_k,
                    so_b, so_r, so_t, so_c, scale, REGIONS, HEADS, QK_DIM, TOPK,
                    QUERY_TOKENS: tl.constexpr, KEY_TOKENS: tl.constexpr, HEAD_DQ: tl.constexpr,
                    HEAD_DV: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
                    SPAN: tl.constexpr, BLOCKS_PER_ITEM: tl.constexpr, BLOCK_DQ: tl.constexpr,
                    BLOCK_DV: tl.constexpr, SOFT: tl.constexpr, PRECISION: tl.constexpr):
    """out = softmax(q kᵀ·scale) v for one (batch, query region, head) and block of query tokens,
    over the key tokens of the region's routed regions."""
    _, batch, region, head, rows, row_mask = _program_rows(REGIONS, QUERY_TOKENS, BLOCK_ROWS)
    q = _load_tile(q_ptr, batch * sq_b + region * sq_r + rows * sq_t, row_mask, sq_c, head * HEAD_DQ,
                   HEAD_DQ, BLOCK_DQ)
    row_max = tl.full([BLOCK_ROWS], -1.0e30, tl.float32)
    row_sum = tl.zeros([BLOCK_ROWS], tl.float32)
    acc = tl.zeros([BLOCK_ROWS, BLOCK_DV], tl.float32)
    routing = batch * si_b + region * si_r
    for group in range(tl.cdiv(TOPK, BLOCK_COLS // SPAN)):
        for block in range(BLOCKS_PER_ITEM):
            slot, col_mask, k, v = _routed_kv_tile(kv_ptr, index_ptr, routing, si_k, batch, skv_b, skv_r, skv_t,
                                                   skv_c, head, group, block, QK_DIM, TOPK, KEY_TOKENS, HEAD_DQ,
                                                   HEAD_DV, BLOCK_COLS, SPAN, BLOCK_DQ, BLOCK_DV)
            logits = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            if SOFT:
                weight = tl.load(weight_ptr + routing + slot * si_k, mask=col_mask, other=0.0).to(tl.float32)
                logits = logits * weight[None, :]
            logits = tl.where(col_mask[None, :], logits, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(logits, 1))
            rescale = tl.exp(row_max - new_max)
            p = tl.exp(logits - new_max[:, None])
            row_sum = row_sum * rescale + tl.sum(p, 1)
            if SOFT:
                p = p * weight[None, :]
            acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            row_max = new_max
    out_rows = batch * so_b + region * so_r + rows * so_t
    _store_tile(out_ptr, acc / row_sum[:, None], out_rows, row_mask, so_c, head * HEAD_DV, HEAD_DV, BLOCK_DV)
    tl.store(lse_ptr + _stats_offsets(batch, region, head, rows, REGIONS, HEADS, QUERY_TOKENS),
             row_max + tl.log(row_sum), mask=row_mask)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def _routed_backward_query(q_ptr, kv_ptr, weight_ptr, index_ptr, dout_ptr, lse_ptr, delta_ptr, dq_ptr,
                           dweight_ptr, sq_b, sq_r, sq_t, sq_c, skv_b, skv_r, skv_t, skv_c, si_b, si_r, si_k,
                           sd_b, sd_r, sd_t, sd_c, sg_b, sg_r, sg_t, sg_c, scale, REGIONS, HEADS, QK_DIM, TOPK,
                           QUERY_TOKENS: tl.constexpr, KEY_TOKENS: tl.constexpr, HEAD_DQ: tl.constexpr,
                           HEAD_DV: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
                           SPAN: tl.constexpr, BLOCKS_PER_ITEM: tl.constexpr, BLOCK_DQ: tl.constexpr,
                           BLOCK_DV: tl.constexpr, SOFT: tl.constexpr, WEIGHT_GRAD: tl.constexpr,
                           PRECISION: tl.constexpr):
    """dQ of one (batch, query region, head) and block of query tokens, and this block's share of
    the gradient of each routing weight (written per slot, summed in PyTorch)."""
    pid, batch, region, head, rows, row_mask = _program_rows(REGIONS, QUERY_TOKENS, BLOCK_ROWS)
    q = _load_tile(q_ptr, batch * sq_b + region * sq_r + rows * sq_t, row_mask, sq_c, head * HEAD_DQ,
                   HEAD_DQ, BLOCK_DQ)
    dout = _load_tile(dout_ptr, batch * sd_b + region * sd_r + rows * sd_t, row_mask, sd_c, head * HEAD_DV,
                      HEAD_DV, BLOCK_DV)
    stats = _stats_offsets(batch, region, head, rows, REGIONS, HEADS, QUERY_TOKENS)
    lse = tl.load(lse_ptr + stats, mask=row_mask, other=0.0)
    delta = tl.load(delta_ptr + stats, mask=row_mask, other=0.0)
    dq = tl.zeros([BLOCK_ROWS, BLOCK_DQ], tl.float32)
    routing = batch * si_b + region * si_r
    slots_per_tile: tl.constexpr = BLOCK_COLS // SPAN
    tile_slots = tl.arange(0, slots_per_tile)
    dweight_row = ((pid * HEADS + head) * tl.num_programs(2) + tl.program_id(2)) * TOPK
    for group in range(tl.cdiv(TOPK, slots_per_tile)):
        dweight = tl.zeros([slots_per_tile], tl.float32)
        for block in range(BLOCKS_PER_ITEM):
            slot, col_mask, k, v = _routed_kv_tile(kv_ptr, index_ptr, routing, si_k, batch, skv_b, skv_r, skv_t,
                                                   skv_c, head, group, block, QK_DIM, TOPK, KEY_TOKENS, HEAD_DQ,
                                                   HEAD_DV, BLOCK_COLS, SPAN, BLOCK_DQ, BLOCK_DV)
            scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            dp = tl.dot(dout, tl.trans(v), input_precision=PRECISION)
            valid = row_mask[:, None] & col_mask[None, :]
            if SOFT:
                weight = tl.load(weight_ptr + routing + slot * si_k, mask=col_mask, other=0.0).to(tl.float32)
                p = tl.where(valid, tl.exp(scores * weight[None, :] - lse[:, None]), 0.0)
                dlogits = p * (dp * weight[None, :] - delta[:, None])
                dq += tl.dot((dlogits * weight[None, :]).to(k.dtype), k, input_precision=PRECISION)
                if WEIGHT_GRAD:
                    per_column = tl.sum(dlogits * scores + p * dp, 0)
                    in_slot = (slot - group * slots_per_tile)[None, :] == tile_slots[:, None]
                    dweight += tl.sum(tl.where(in_slot, per_column[None, :], 0.0), 1)
            else:
                p = tl.where(valid, tl.exp(scores - lse[:, None]), 0.0)
                dlogits = p * (dp - delta[:, None])
                dq += tl.dot(dlogits.to(k.dtype), k, input_precision=PRECISION)
        if WEIGHT_GRAD:
            group_slots = group * slots_per_tile + tile_slots
            tl.store(dweight_ptr + dweight_row + group_slots, dweight, mask=group_slots < TOPK)
    _store_tile(dq_ptr, dq * scale, batch * sg_b + region * sg_r + rows * sg_t, row_mask, sg_c, head * HEAD_DQ,
                HEAD_DQ, BLOCK_DQ)


@triton.jit(do_not_specialize=RUNTIME_INTS)
def _routed_backward_key(q_ptr, kv_ptr, weight_ptr, dout_ptr, lse_ptr, delta_ptr, dkv_ptr, entry_ptr, start_ptr,
                         sq_b, sq_r, sq_t, sq_c, skv_b, skv_r, skv_t, skv_c, sw_b, sw_r, sw_k,
                         sd_b, sd_r, sd_t, sd_c, sg_b, sg_r, sg_t, sg_c, scale, REGIONS, HEADS, QK_DIM, TOPK,
                         QUERY_TOKENS: tl.constexpr, KEY_TOKENS: tl.constexpr, HEAD_DQ: tl.constexpr,
                         HEAD_DV: tl.constexpr, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr,
                         SPAN: tl.constexpr, BLOCKS_PER_ITEM: tl.constexpr, BLOCK_DQ: tl.constexpr,
                         BLOCK_DV: tl.constexpr, SOFT: tl.constexpr, PRECISION: tl.constexpr):
    """dK and dV of one (batch, key region, head) and block of key tokens, summed over the query
    tokens of every query region routed to it (the columns: routing entries × query tokens)."""
    pid, batch, region, head, rows, row_mask = _program_rows(REGIONS, KEY_TOKENS, BLOCK_ROWS)
    key_rows = batch * skv_b + region * skv_r + rows * skv_t
    k = _load_tile(kv_ptr, key_rows, row_mask, skv_c, head * HEAD_DQ, HEAD_DQ, BLOCK_DQ)
    v = _load_tile(kv_ptr, key_rows, row_mask, skv_c, QK_DIM + head * HEAD_DV, HEAD_DV, BLOCK_DV)
    dk = tl.zeros([BLOCK_ROWS, BLOCK_DQ], tl.float32)
    dv = tl.zeros([BLOCK_ROWS, BLOCK_DV], tl.float32)
    first = tl.load(start_ptr + pid)
    last = tl.load(start_ptr + pid + 1)
    for group_first in range(first, last, BLOCK_COLS // SPAN):
        for block in range(BLOCKS_PER_ITEM):
            entry, token, col_mask = _routed_axis(0, block, SPAN, QUERY_TOKENS, BLOCK_COLS)
            entry = group_first + entry
            col_mask = col_mask & (entry < last)
            routing = tl.load(entry_ptr + entry, mask=col_mask, other=0).to(tl.int64)  # into (B, regions, topk)
            query_region = (routing // TOPK) % REGIONS
            query_rows = batch * sq_b + query_region * sq_r + token * sq_t
            q = _load_tile(q_ptr, query_rows, col_mask, sq_c, head * HEAD_DQ, HEAD_DQ, BLOCK_DQ)
            dout = _load_tile(dout_ptr, batch * sd_b + query_region * sd_r + token * sd_t, col_mask, sd_c,
                              head * HEAD_DV, HEAD_DV, BLOCK_DV)
            stats = _stats_offsets(batch, query_region, head, token, REGIONS, HEADS, QUERY_TOKENS)
            lse = tl.load(lse_ptr + stats, mask=col_mask, other=0.0)
            delta = tl.load(delta_ptr + stats, mask=col_mask, other=0.0)
            scores = tl.dot(k, tl.trans(q), input_precision=PRECISION) * scale  # keys × queries
            dp = tl.dot(v, tl.trans(dout), input_precision=PRECISION)
            valid = row_mask[:, None] & col_mask[None, :]
            if SOFT:
                weight = tl.load(weight_ptr + batch * sw_b + query_region * sw_r + (routing % TOPK) * sw_k,
                                 mask=col_mask, other=0.0).to(tl.float32)
                p = tl.where(valid, tl.exp(scores * weight[None, :] - lse[None, :]), 0.0)
                dlogits = p * (dp * weight[None, :] - delta[None, :])
                dv += tl.dot((p * weight[None, :]).to(dout.dtype), dout, input_precision=PRECISION)
                dk += tl.dot((dlogits * weight[None, :]).to(q.dtype), q, input_precision=PRECISION)
            else:
                p = tl.where(valid, tl.exp(scores - lse[None, :]), 0.0)
                dlogits = p * (dp - delta[None, :])
                dv += tl.dot(p.to(dout.dtype), dout, input_precision=PRECISION)
                dk += tl.dot(dlogits.to(q.dtype), q, input_precision=PRECISION)
    grad_rows = batch * sg_b + region * sg_r + rows * sg_t
    _store_tile(dkv_ptr, dk * scale, grad_rows, row_mask, sg_c, head * HEAD_DQ, HEAD_DQ, BLOCK_DQ)
    _store_tile(dkv_ptr, dv, grad_rows, row_mask, sg_c, QK_DIM + head * HEAD_DV, HEAD_DV, BLOCK_DV)


# ----------------------------------------------------------------------------------------------
# tiling


def tile_side(size: int) -> int:
    """A power of two ≥ size and ≥ the smallest tile tl.dot takes."""
    return max(MIN_TILE, triton.next_power_of_2(size))


@dataclass(frozen=True)
class KernelConfig:
    """Tile shape and launch options of one kernel: rows (a region's tokens) × columns (a routed axis)."""

    block_rows: int
    block_cols: int
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class RoutedTiling:
    """How one kernel cuts its work: blocks of ``row_tokens`` rows (a region's tokens), and a routed
    axis of items of ``item_tokens`` tokens each (routed key regions, or query regions routed to a
    key region) in tiles of ``config.block_cols`` columns."""

    row_tokens: int
    item_tokens: int
    config: KernelConfig

    @property
    def row_blocks(self) -> int:
        return triton.cdiv(self.row_tokens, self.config.block_rows)

    @property
    def span(self) -> int:
        """Columns an item takes: its tokens rounded up to a power of two, or the whole tile."""
        return min(self.config.block_cols, triton.next_power_of_2(self.item_tokens))

    @property
    def items_per_tile(self) -> int:
        return self.config.block_cols // self.span

    @property
    def blocks_per_item(self) -> int:
        return triton.cdiv(self.item_tokens, self.span)

    def issued_columns(self, items: int) -> int:
        """Columns the tiles cover for ``items`` items in one program."""
        return triton.cdiv(items, self.items_per_tile) * self.blocks_per_item * self.config.block_cols

    def constants(self) -> dict:
        return dict(BLOCK_ROWS=self.config.block_rows, BLOCK_COLS=self.config.block_cols, SPAN=self.span,
                    BLOCKS_PER_ITEM=self.blocks_per_item)

    def options(self) -> dict:
        return dict(num_warps=self.config.num_warps, num_stages=self.config.num_stages)


def default_config(kernel: str, row_tokens: int, item_tokens: int, items: int, dtype: torch.dtype) -> KernelConfig:
    """The explicit tuning table: the same answer on every machine, chosen from ahead-of-time
    compiles for sm_90 and sm_80 (``tools.triton_aot``: registers, spills, shared memory).

    Rows: a region's tokens up to one 64-row tile (wgmma's native height on Hopper). Columns:
    enough for the items a program usually meets (``items``: topk) at their power-of-two span,
    between 16 (tl.dot's minimum) and 64. Half precision: two pipeline stages; four warps for a
    64-row tile (eight for dK/dV, which also holds K, V and both gradients: with four, sm_80
    spills), two below. fp32 runs on the FMA units (the exact ``ieee`` path) with fp32 operands in
    registers: 32 columns, eight warps for 64 rows, four below, and no software pipelining, which
    made ptxas spill kilobytes per thread.
    """
    block_rows = min(MAX_TILE, tile_side(row_tokens))
    exact = dtype == torch.float32
    widest = MAX_TILE // 2 if exact else MAX_TILE
    block_cols = max(MIN_TILE, min(widest, triton.next_power_of_2(items * triton.next_power_of_2(item_tokens))))
    if block_rows < MAX_TILE:
        num_warps = 4 if exact else 2
    else:
        num_warps = 8 if exact or kernel == "backward_key" else 4
    return KernelConfig(block_rows, block_cols, num_warps, num_stages=1 if exact else 2)


def candidate_configs(default: KernelConfig) -> list[KernelConfig]:
    """What ``tuned_config`` tries besides the default: other column tiles, warps and stages."""
    candidates = [default]
    for block_cols in (32, 64, 128):
        for num_warps in (2, 4, 8):
            for num_stages in (1, 2, 3):
                config = replace(default, block_cols=block_cols, num_warps=num_warps, num_stages=num_stages)
                if config not in candidates:
                    candidates.append(config)
    return candidates


_TUNED: dict[tuple, KernelConfig] = {}


def tuned_config(key: tuple, default: KernelConfig, launch: Callable[[KernelConfig], object]) -> KernelConfig:
    """The kernel configuration for ``key``: the default, or with ``BRA_TRITON_TUNE=1`` on CUDA the
    fastest of ``candidate_configs`` (timed once per key and process; a candidate that fails to
    compile or launch is skipped)."""
    if os.environ.get(TUNE_ENV) != "1" or not torch.cuda.is_available():
        return default
    if key not in _TUNED:
        timings = {}
        for config in candidate_configs(default):
            try:
                timings[config] = triton.testing.do_bench(lambda: launch(config), warmup=5, rep=20)
            except Exception:  # noqa: BLE001 - out of resources or a compile error: not a candidate
                continue
        _TUNED[key] = min(timings, key=timings.get, default=default)
    return _TUNED[key]


# ----------------------------------------------------------------------------------------------
# accounting of the issued matrix work


@dataclass
class TileWork:
    """Multiply-adds of the tiles' matrix products: those on real tokens and channels, and all issued."""

    useful: int = 0
    issued: int = 0

    @property
    def efficiency(self) -> float:
        return self.useful / self.issued if self.issued else float("nan")


_ACCOUNTS: list[TileWork] = []


@contextlib.contextmanager
def tile_accounting() -> Iterator[TileWork]:
    """Sum the useful and issued multiply-adds of every kernel launched inside the block."""
    work = TileWork()
    _ACCOUNTS.append(work)
    try:
        yield work
    finally:
        _ACCOUNTS.remove(work)


def account(work: Callable[[], TileWork]) -> None:
    """Add a launch's work (computed only when someone is counting) to every open ``tile_accounting``."""
    if _ACCOUNTS:
        done = work()
        for total in _ACCOUNTS:
            total.useful += done.useful
            total.issued += done.issued


# ----------------------------------------------------------------------------------------------
# launches


class RoutedLaunch:
    """Shapes, tilings and the scalar arguments shared by the three kernels of one call."""

    def __init__(self, q: Tensor, kv: Tensor, r_idx: Tensor, num_heads: int, qk_dim: int, scale: float) -> None:
        # plain ints: under torch.jit.trace (fvcore) sizes are tensors, which Triton takes for pointers
        self.batch, self.regions, self.query_tokens, _ = map(int, q.shape)
        self.key_tokens = int(kv.shape[2])
        self.num_heads = num_heads
        self.qk_dim = qk_dim
        self.topk = int(r_idx.shape[-1])
        self.head_dq = qk_dim // num_heads
        self.head_dv = (int(kv.shape[-1]) - qk_dim) // num_heads
        self.dtype = q.dtype
        self.scale = scale
        # fp32 inputs are multiplied in full fp32, as the reference does (Triton would use tf32)
        self.precision = "ieee" if q.dtype == torch.float32 else "tf32"

    def query_tiling(self, kernel: str) -> RoutedTiling:
        """Forward and dQ: rows are a query region's tokens, columns its routed regions' keys."""
        config = default_config(kernel, self.query_tokens, self.key_tokens, self.topk, self.dtype)
        return RoutedTiling(self.query_tokens, self.key_tokens, config)

    def key_tiling(self) -> RoutedTiling:
        """dK/dV: rows are a key region's tokens, columns the queries of the regions routed to it
        (topk of them on average)."""
        config = default_config("backward_key", self.key_tokens, self.query_tokens, self.topk, self.dtype)
        return RoutedTiling(self.key_tokens, self.query_tokens, config)

    def grid(self, tiling: RoutedTiling) -> tuple[int, int, int]:
        return self.batch * self.regions, self.num_heads, tiling.row_blocks

    def scalars(self) -> tuple:
        return self.scale, self.regions, self.num_heads, self.qk_dim, self.topk

    def constants(self, tiling: RoutedTiling) -> dict:
        return dict(QUERY_TOKENS=self.query_tokens, KEY_TOKENS=self.key_tokens, HEAD_DQ=self.head_dq,
                    HEAD_DV=self.head_dv, BLOCK_DQ=tile_side(self.head_dq), BLOCK_DV=tile_side(self.head_dv),
                    PRECISION=self.precision, **tiling.constants(), **tiling.options())

    def tuned(self, kernel: str, tiling: RoutedTiling, launch: Callable[[RoutedTiling], object]) -> RoutedTiling:
        """``tiling`` with the kernel configuration ``tuned_config`` picks for this shape."""
        key = (kernel, self.query_tokens, self.key_tokens, self.topk, self.head_dq, self.head_dv, self.dtype)
        config = tuned_config(key, tiling.config, lambda c: launch(replace(tiling, config=c)))
        return replace(tiling, config=config)

    def matrix_work(self, tiling: RoutedTiling, products: tuple[int, int], items: list[int] | int) -> TileWork:
        """Useful and issued multiply-adds of one kernel over every program. ``products`` counts its
        matrix products over the q/k channels and over the v channels; ``items`` gives the routed
        items of each (batch, region), or one count for all of them."""
        per_region = Counter(items) if isinstance(items, list) else {items: self.batch * self.regions}
        depth_useful = products[0] * self.head_dq + products[1] * self.head_dv
        depth_issued = products[0] * tile_side(self.head_dq) + products[1] * tile_side(self.head_dv)
        rows_issued = tiling.row_blocks * tiling.config.block_rows
        useful = issued = 0
        for count, regions in per_region.items():
            useful += regions * count * tiling.row_tokens * tiling.item_tokens * depth_useful
            issued += regions * tiling.issued_columns(count) * rows_issued * depth_issued
        return TileWork(useful * self.num_heads, issued * self.num_heads)

    def transposed_routing(self, r_idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """For every (batch, key region): the flat (batch, query region, slot) entries routed to it,
        as a stable-sorted entry list, the start of each key region's run (CSR) and the run lengths."""
        key_region = (r_idx + self.regions * torch.arange(self.batch, device=r_idx.device)[:, None, None]).flatten()
        entries = torch.sort(key_region, stable=True).indices.to(torch.int32)
        counts = torch.bincount(key_region, minlength=self.batch * self.regions)
        starts = torch.zeros(self.batch * self.regions + 1, dtype=torch.int32, device=r_idx.device)
        starts[1:] = counts.cumsum(0)
        return entries, starts, counts


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

        def run(tiling: RoutedTiling) -> None:
            _routed_forward[launch.grid(tiling)](
                q, kv, r_weight if soft else r_idx, r_idx, out, lse, *q.stride(), *kv.stride(), *r_idx.stride(),
                *out.stride(), *launch.scalars(), SOFT=soft, **launch.constants(tiling))

        tiling = launch.tuned("forward", launch.query_tiling("forward"), run)
        run(tiling)
        account(lambda: launch.matrix_work(tiling, (1, 1), launch.topk))
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

        def run_query(tiling: RoutedTiling) -> Tensor | None:
            """dQ, and each program's share of every routing weight's gradient (returned, to be summed)."""
            dweight = torch.empty(launch.batch, launch.regions, launch.num_heads, tiling.row_blocks, launch.topk,
                                  dtype=torch.float32, device=q.device) if weight_grad else None
            _routed_backward_query[launch.grid(tiling)](
                q, kv, weight_arg, r_idx, dout, lse, delta, dq, lse if dweight is None else dweight, *q.stride(),
                *kv.stride(), *r_idx.stride(), *dout.stride(), *dq.stride(), *launch.scalars(), SOFT=soft,
                WEIGHT_GRAD=weight_grad, **launch.constants(tiling))
            return dweight

        query_tiling = launch.tuned("backward_query", launch.query_tiling("backward_query"), run_query)
        dweight = run_query(query_tiling)
        account(lambda: launch.matrix_work(query_tiling, (2, 1), launch.topk))

        dkv = torch.empty_like(kv)
        entries, starts, counts = launch.transposed_routing(r_idx)

        def run_key(tiling: RoutedTiling) -> None:
            _routed_backward_key[launch.grid(tiling)](
                q, kv, weight_arg, dout, lse, delta, dkv, entries, starts, *q.stride(), *kv.stride(),
                *weight_strides, *dout.stride(), *dkv.stride(), *launch.scalars(), SOFT=soft,
                **launch.constants(tiling))

        key_tiling = launch.tuned("backward_key", launch.key_tiling(), run_key)
        run_key(key_tiling)
        account(lambda: launch.matrix_work(key_tiling, (2, 2), counts.tolist()))  # a device sync, only if counting
        dr_weight = dweight.sum((2, 3)).to(r_weight.dtype) if weight_grad else None
        return dq, dkv, dr_weight, None, None, None, None


def routed_attention(q: Tensor, kv: Tensor, r_weight: Tensor | None, r_idx: Tensor, num_heads: int,
                     qk_dim: int, scale: float) -> Tensor:
    """Fused BRA token attention; see ``RoutedAttention`` for the shapes."""
    return RoutedAttention.apply(q, kv, r_weight, r_idx, num_heads, qk_dim, scale)
