"""The fused Triton BRA kernels (backend 'triton') against the float64 naive reference of test_bra.

On a machine without CUDA the kernels run under Triton's interpreter (conftest sets TRITON_INTERPRET=1
before triton is first imported), which executes them on CPU tensors in fp32 and fp16. The shapes
are tiny because the interpreter runs every program in Python, but they reach every code path:
regions of 7×7 (padded, masked) tokens, regions larger than a tile (several row blocks, and a
routed region spread over several column tiles), several small routed regions sharing one tile,
pooled key regions of another size, qk_dim ≠ dim, soft routing with the routing-weight gradient,
and topk = every region. What the interpreter cannot check (a real compile for sm_90 / sm_80) is
tests/test_triton_aot.py's.
"""

from __future__ import annotations

import copy

import pytest
import torch

import attentions
from attentions import AttentionConfigError, BackendUnavailableError
from attentions.bra import triton_backend
from reference_helpers import F64, grads
from test_bra import ROUTINGS, _rel_err as rel_err, make, naive_bra

pytestmark = pytest.mark.cuda
pytest.importorskip("triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Under the interpreter (no CUDA) the larger shapes take seconds each: the slow tier runs them, the fast tier a
# small case of each check. On a GPU every case is fast.
INTERPRETED_SLOW = [pytest.mark.slow] if DEVICE == "cpu" else []


def slow_here(*values, **kwargs):
    """A parameter that is in the slow tier where the kernels are interpreted."""
    return pytest.param(*values, marks=INTERPRETED_SLOW, **kwargs)


@pytest.fixture(scope="module")
def triton_kernels():
    """The kernel module (interpreted on the CPU: conftest sets TRITON_INTERPRET=1 without CUDA)."""
    from attentions import bra_triton
    return bra_triton


def check_triton(shape, dtype, tol_out, tol_grad, seed=0, **opts):
    """Forward and the gradients of the input and of every parameter against the naive reference.

    In fp16 a near-tie of two routing logits may pick another region than in float64; the
    reference then follows the run's own routing (``force_idx``), so only the token attention and
    its gradients are judged."""
    module, o = make(16, opts.pop("num_heads", 2), seed=seed, **opts)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*shape, 16, generator=g, dtype=F64)
    low = copy.deepcopy(module).to(device=DEVICE, dtype=dtype)
    x_low = x.to(device=DEVICE, dtype=dtype).requires_grad_()
    with torch.no_grad():
        _, _, r_idx, _ = low(x_low, ret_attn_mask=True)  # the run's routing, from the torch backend
    low.backend = "triton"
    out = low(x_low)
    assert out.dtype == dtype and out.shape == x.shape
    P = {k: v.detach().double().cpu().requires_grad_() for k, v in low.named_parameters()}
    names = sorted(P)
    x_ref = x_low.detach().double().cpu().requires_grad_()
    ref, *_ = naive_bra(x_ref, P, o, force_idx=r_idx.cpu())
    gout = torch.randn(ref.shape, generator=g, dtype=F64)
    expected = grads(ref, [x_ref] + [P[n] for n in names], gout, allow_unused=True)
    low_params = dict(low.named_parameters())
    got = grads(out, [x_low] + [low_params[n] for n in names], gout.to(device=DEVICE, dtype=dtype),
                allow_unused=True)
    assert rel_err(out, ref) < tol_out, rel_err(out, ref)
    for name, a, b in zip(["input"] + names, got, expected):
        if b.norm() > 0:
            assert rel_err(a, b) < tol_grad, (name, rel_err(a, b))
        else:
            assert a.abs().max() == 0, name


SHAPES = [  # (B, H, W), options: every one reaches a distinct path of the kernels
    ((1, 14, 14), dict(n_win=2, topk=2)),  # 7×7 regions: 49 tokens padded to 64 and masked
    ((2, 6, 6), dict(n_win=3, topk=4, num_heads=4)),  # 2×2 regions: four routed regions per column tile
    ((1, 18, 18), dict(n_win=2, topk=2)),  # 9×9 = 81 tokens: two row blocks, a region over two column tiles
    ((1, 8, 8), dict(n_win=2, topk=3, kv_downsample_mode="avgpool", kv_downsample_ratio=2)),  # 16 q, 4 k tokens
    ((1, 12, 12), dict(n_win=2, topk=2, kv_downsample_mode="ada_maxpool", kv_per_win=3)),  # 36 q, 9 k tokens
    ((1, 6, 6), dict(n_win=3, topk=9, qk_dim=8, param_attention="qkv")),  # every region; qk 4 / v 8 per head
    ((1, 7, 5), dict(n_win=2, topk=2, auto_pad=True, side_dwconv=0)),  # padded map, no LePE
]


@pytest.mark.parametrize("shape, opts", [
    slow_here(*case) if index in (1, 2, 5) else case for index, case in enumerate(SHAPES)])
def test_fp32_forward_and_gradients_match_naive(shape, opts):
    check_triton(shape, torch.float32, 1e-5, 1e-5, **opts)


@pytest.mark.parametrize("routing", ["soft", "soft_diff_param"])
@pytest.mark.parametrize("shape, n_win, topk", [((1, 8, 8), 2, 3), slow_here((1, 18, 18), 2, 3),
                                                slow_here((1, 6, 6), 3, 5)])
def test_soft_routing_inside_the_kernels(routing, shape, n_win, topk):
    """soft_diff_param trains the routing through the weights: router.emb's gradient comes from the
    kernels' routing-weight gradient alone, summed per slot over the column tiles a routed region
    spans (81 tokens: two) or shares (2×2 regions: several slots per tile, topk 5 leaving one
    partly empty)."""
    check_triton(shape, torch.float32, 1e-5, 1e-5, n_win=n_win, topk=topk, **ROUTINGS[routing])


@pytest.mark.parametrize("shape, opts", [SHAPES[0], slow_here(*SHAPES[1]), SHAPES[3]])
def test_fp16(shape, opts):
    check_triton(shape, torch.float16, 5e-3, 2e-2, **opts)


@pytest.mark.skipif(DEVICE == "cpu", reason="Triton's interpreter has no bf16")
def test_bf16_on_cuda():
    check_triton((2, 14, 14), torch.bfloat16, 3e-2, 6e-2, n_win=2, topk=2)


@pytest.mark.slow if DEVICE == "cpu" else pytest.mark.cuda  # interpreted: about 3 s
def test_backward_is_deterministic():
    module, _ = make(16, 2, seed=3, backend="triton", n_win=3, topk=3, soft_routing=True, diff_routing=True)
    module = module.float().to(DEVICE)
    x = torch.randn(1, 6, 6, 16, device=DEVICE, requires_grad=True)
    gout = torch.randn(1, 6, 6, 16, device=DEVICE)
    first = grads(module(x), [x, *module.parameters()], gout)
    second = grads(module(x), [x, *module.parameters()], gout)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_routed_tiling(triton_kernels):
    """Items (routed regions, or query regions routed to a key region) share a column tile when small,
    spread over several when large; the tile sides follow the default table."""
    tiling, config = triton_kernels.RoutedTiling, triton_kernels.default_config
    bf16, fp32 = torch.bfloat16, torch.float32
    stage2 = tiling(16, 16, config("forward", 16, 16, 4, bf16))  # BiFormer's 28²: 4×4 tokens, topk 4
    assert (stage2.config.block_rows, stage2.config.block_cols) == (16, 64)
    assert (stage2.span, stage2.items_per_tile, stage2.blocks_per_item) == (16, 4, 1)
    assert stage2.issued_columns(4) == 64 and stage2.issued_columns(5) == 128
    stage3 = tiling(4, 4, config("forward", 4, 4, 16, bf16))  # 14²: 2×2 tokens, topk 16
    assert (stage3.config.block_rows, stage3.span, stage3.items_per_tile) == (16, 4, 16)
    large = tiling(361, 361, config("forward", 361, 361, 1, bf16))  # 19×19 tokens (512 px model suite)
    assert (large.row_blocks, large.span, large.blocks_per_item) == (6, 64, 6)
    assert large.issued_columns(1) == 384
    pooled = tiling(49, 9, config("backward_key", 49, 9, 4, fp32))  # 7×7 queries, 3×3 pooled keys, fp32
    assert (pooled.config.block_cols, pooled.span, pooled.items_per_tile) == (32, 16, 2)
    assert pooled.config.num_stages == 1


def stub_kernels(monkeypatch, triton_kernels):
    """Launches that do nothing: the tile accounting runs on the real tiles and routing without the
    kernels (slow when interpreted)."""
    class Stub:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None
    for name in ("_routed_forward", "_routed_backward_query", "_routed_backward_key"):
        monkeypatch.setattr(triton_kernels, name, Stub())


EFFICIENCY_SHAPES = [  # (resolution, dim, heads, n_win, topk): BiFormer's stages, 8×8-token regions at 112²/224²
    (56, 64, 2, 7, 1), (28, 128, 4, 7, 4), (14, 256, 8, 7, 16), (112, 64, 2, 14, 4), slow_here(224, 64, 2, 28, 4)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])  # bf16 tiles as fp16
@pytest.mark.parametrize("resolution, dim, heads, n_win, topk", EFFICIENCY_SHAPES)
def test_tile_efficiency_at_the_target_shapes(monkeypatch, triton_kernels, dtype, resolution, dim, heads, n_win,
                                              topk):
    """Useful ÷ issued multiply-adds of the real launches (tile sides, routing of a random input):
    ≥ 75% at BiFormer's 56² and 28² stages and the 8×8-token 112²/224² maps, forward and
    forward+backward; at 14² the forward is bounded at 25% by 4 query tokens per region and head
    against tl.dot's 16 rows."""
    stub_kernels(monkeypatch, triton_kernels)
    module = attentions.build("bra", dim=dim, num_heads=heads, n_win=n_win, topk=topk, backend="triton")
    module = module.to(DEVICE, dtype)
    x = torch.randn(1, resolution, resolution, dim, dtype=dtype, device=DEVICE)
    with triton_kernels.tile_accounting() as forward, torch.no_grad():
        module(x)
    with triton_kernels.tile_accounting() as both:
        x.requires_grad_()
        module(x).backward(torch.randn_like(x))
    tokens = resolution ** 2
    assert forward.useful == tokens * topk * (resolution // n_win) ** 2 * dim * 2  # q·kᵀ and p·v, every head
    if resolution == 14:
        assert forward.efficiency == 0.25 and 0.15 < both.efficiency < 0.25
    else:
        assert forward.efficiency == 1.0 and both.efficiency >= 0.75


def test_tile_efficiency_of_padded_regions(monkeypatch, triton_kernels):
    """7×7 regions, topk 2, fp16: 49 of 64 rows, and each routed region's 49 keys in a 64-column tile."""
    stub_kernels(monkeypatch, triton_kernels)
    module = attentions.build("bra", dim=32, num_heads=1, n_win=2, topk=2, backend="triton").to(DEVICE, torch.float16)
    with triton_kernels.tile_accounting() as work, torch.no_grad():
        module(torch.randn(1, 14, 14, 32, dtype=torch.float16, device=DEVICE))
    assert work.efficiency == pytest.approx((49 / 64) ** 2)


def test_transposed_routing_lists_each_key_regions_routers(triton_kernels):
    r_idx = torch.tensor([[[1, 2], [2, 0], [2, 1]], [[0, 1], [0, 2], [1, 0]]])  # B 2, 3 regions, topk 2
    q, kv = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 16)
    launch = triton_kernels.RoutedLaunch(q, kv, r_idx, num_heads=2, qk_dim=8, scale=1.0)
    entries, starts, counts = launch.transposed_routing(r_idx)
    assert counts.tolist() == [1, 2, 3, 3, 2, 1]
    flat = r_idx.flatten()
    for batch in range(2):
        for region in range(3):
            key = batch * 3 + region
            listed = entries[starts[key]:starts[key + 1]].tolist()
            expected = [e for e in range(batch * 6, batch * 6 + 6) if flat[e] == region]
            assert listed == expected  # stable: in (query region, slot) order


def test_fvcore_counts_the_fused_op():
    """Without its handle fvcore would count the fused attention as zero."""
    pytest.importorskip("fvcore")
    from bench.core.flops import count_macs
    module, _ = make(16, 2, backend="triton", n_win=2, topk=3, kv_downsample_mode="avgpool", kv_downsample_ratio=2)
    module = module.float().to(DEVICE)
    counted, uncounted = count_macs(module, torch.randn(1, 8, 8, 16, device=DEVICE))
    assert counted == module.macs(1, 8, 8).total
    assert not any("RoutedAttention" in op for op in uncounted)


def test_unavailable_without_cuda_or_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    ok, reason = triton_backend().availability("cpu")
    assert not ok and "runs on cuda, not on cpu" in reason


def test_refusals():
    module, _ = make(16, 2, backend="triton", n_win=2, topk=2)
    with torch.no_grad(), pytest.raises(AttentionConfigError, match="ret_attn_mask.*'triton'"):
        module.float().to(DEVICE)(torch.randn(1, 8, 8, 16, device=DEVICE), ret_attn_mask=True)
    if DEVICE == "cpu":
        with torch.no_grad(), pytest.raises(BackendUnavailableError, match="bfloat16"):
            module.bfloat16()(torch.randn(1, 8, 8, 16, dtype=torch.bfloat16))
    assert "triton" in attentions.list_attentions()["bra"]["backends"]


def test_tuning_is_the_default_table_unless_asked_for_on_cuda(monkeypatch, triton_kernels):
    """Without BRA_TRITON_TUNE=1 or without CUDA the explicit table decides, the same everywhere; with
    both, the fastest candidate that launches wins, once per key (timings stand in for do_bench)."""
    default = triton_kernels.default_config("forward", 16, 16, 4, torch.bfloat16)
    candidates = triton_kernels.candidate_configs(default)
    assert candidates[0] == default and len(set(candidates)) == len(candidates)
    launched = []
    assert triton_kernels.tuned_config(("k", 1), default, launched.append) == default and not launched
    monkeypatch.setenv(triton_kernels.TUNE_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert triton_kernels.tuned_config(("k", 2), default, launched.append) == default and not launched
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fastest, broken = candidates[5], candidates[3]

    def fake_bench(run, warmup, rep):
        run()
        config = launched[-1]
        if config == broken:
            raise RuntimeError("out of resources: shared memory")
        return 1.0 if config == fastest else 2.0 + candidates.index(config)

    monkeypatch.setattr(triton_kernels.triton.testing, "do_bench", fake_bench)
    monkeypatch.setattr(triton_kernels, "_TUNED", {})
    assert triton_kernels.tuned_config(("k", 3), default, launched.append) == fastest
    assert len(launched) == len(candidates)
    assert triton_kernels.tuned_config(("k", 3), default, launched.append) == fastest  # once per key
    assert len(launched) == len(candidates)
