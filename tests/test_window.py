"""Tests of the ``window`` family (Swin W-MSA / SW-MSA) against a naive loop reference."""

from __future__ import annotations

import functools

import pytest
import torch

import attentions
from attentions import AttentionConfigError
from reference_helpers import (CudaCase, check_against_reference, check_backend_switch, eager_backends,
                               check_float32_against_reference, random_module, ref_params)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

make = functools.partial(random_module, "window", std=0.3)


def region_label(r: int, size: int, ws: int, shift: int) -> int:
    """Sub-region label of coordinate r of the rolled, padded map of side ``size``."""
    if r < size - ws:
        return 0
    if r < size - shift:
        return 1
    return 2


def ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def naive_window(x: torch.Tensor, p: dict[str, torch.Tensor], num_heads: int, ws: int, shift: int,
                 qk_scale: float | None = None) -> torch.Tensor:
    """Swin (S)W-MSA with explicit loops over windows and query/key pairs.

    The rolled padded map is never materialised: token (r, c) of the rolled map is the padded
    map's pixel ((r + shift) % Hp, (c + shift) % Wp), which is x there or zero in the padding.
    Its output goes back to that same pixel (the roll back), and padding is cropped.
    """
    batch, height, width, dim = x.shape
    hd = dim // num_heads
    scale = qk_scale if qk_scale else hd ** -0.5
    hp, wp = ceil_to(height, ws), ceil_to(width, ws)
    table = p["relative_position_bias_table"]
    w_qkv, b_qkv = p["qkv.weight"], p.get("qkv.bias")
    zero = torch.zeros(dim, dtype=x.dtype)
    results = []
    for b in range(batch):
        out_pixels: dict[tuple[int, int], torch.Tensor] = {}
        for wy in range(hp // ws):
            for wx in range(wp // ws):
                coords = [(wy * ws + a, wx * ws + c) for a in range(ws) for c in range(ws)]   # rolled coords
                sources = [((r + shift) % hp, (c + shift) % wp) for r, c in coords]           # padded coords
                tokens = torch.stack([x[b, sr, sc] if sr < height and sc < width else zero
                                      for sr, sc in sources])
                qkv = tokens @ w_qkv.T
                if b_qkv is not None:
                    qkv = qkv + b_qkv
                q, k, v = qkv[:, :dim], qkv[:, dim:2 * dim], qkv[:, 2 * dim:]
                n = len(coords)
                index = [[0] * n for _ in range(n)]
                mask = [[0.0] * n for _ in range(n)]
                for i, (ri, ci) in enumerate(coords):
                    yi, xi = ri - wy * ws, ci - wx * ws
                    for j, (rj, cj) in enumerate(coords):
                        yj, xj = rj - wy * ws, cj - wx * ws
                        index[i][j] = (yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1)
                        if shift > 0:
                            reg_i = (region_label(ri, hp, ws, shift), region_label(ci, wp, ws, shift))
                            reg_j = (region_label(rj, hp, ws, shift), region_label(cj, wp, ws, shift))
                            mask[i][j] = -100.0 if reg_i != reg_j else 0.0
                index_t = torch.tensor(index)
                mask_t = torch.tensor(mask, dtype=x.dtype)
                heads = []
                for h in range(num_heads):
                    sl = slice(h * hd, (h + 1) * hd)
                    logits = (q[:, sl] * scale) @ k[:, sl].T + table[index_t, h] + mask_t
                    logits = logits - logits.max(dim=-1, keepdim=True).values
                    weights = logits.exp()
                    weights = weights / weights.sum(dim=-1, keepdim=True)
                    heads.append(weights @ v[:, sl])
                out = torch.cat(heads, dim=-1) @ p["proj.weight"].T + p["proj.bias"]
                for t, (sr, sc) in enumerate(sources):
                    out_pixels[(sr, sc)] = out[t]
        results.append(torch.stack([torch.stack([out_pixels[(i, j)] for j in range(width)])
                                    for i in range(height)]))
    return torch.stack(results)


def naive_for(module, qk_scale: float | None = None):
    """``naive_window`` as ``(x, params) -> out`` with the module's heads, window and shift."""
    return lambda x, p: naive_window(x, p, module.num_heads, module.window_size, module.shift_size, qk_scale)


# tests/test_cuda.py's case: every CUDA backend against naive_window, shifted
CUDA_CASE = CudaCase((2, 14, 14), dict(window_size=7, shift_size=3), lambda module, x: naive_for(module))


def naive_shift_mask(hp: int, wp: int, ws: int, shift: int) -> torch.Tensor:
    """(windows, ws², ws²) mask of the rolled padded map, windows row-major, tokens row-major."""
    windows = []
    for wy in range(hp // ws):
        for wx in range(wp // ws):
            coords = [(wy * ws + a, wx * ws + c) for a in range(ws) for c in range(ws)]
            labels = [(region_label(r, hp, ws, shift), region_label(c, wp, ws, shift)) for r, c in coords]
            windows.append([[-100.0 if li != lj else 0.0 for lj in labels] for li in labels])
    return torch.tensor(windows)


# --------------------------------------------------------------------------------------------
# correctness vs the naive reference
# --------------------------------------------------------------------------------------------

CASES = [
    # (H, W, window_size, shift_size, extra options)
    (6, 6, 3, 0, {}),                      # divisible, W-MSA
    (6, 6, 3, 1, {}),                      # divisible, SW-MSA
    (6, 9, 3, 2, {"qkv_bias": False}),     # non-square, larger shift
    (7, 5, 3, 0, {}),                      # padding + crop, no shift
    (7, 5, 3, 1, {}),                      # padding + crop, shift
    (5, 8, 4, 2, {"qk_scale": 0.4}),       # padding, even window, custom scale
    (2, 2, 3, 0, {}),                      # map smaller than the window
    (2, 1, 3, 1, {}),                      # map smaller than the window, shifted
    (4, 4, 1, 0, {}),                      # 1×1 windows
]


@pytest.mark.parametrize("backend", eager_backends("window"))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-ws{c[2]}-s{c[3]}-{'-'.join(c[4])}")
def test_matches_naive_reference_float64(backend, case):
    height, width, ws, shift, extra = case
    torch.manual_seed(100 + height * 10 + width)
    dim, heads = 8, 2
    module = make(seed=ws * 10 + shift, dim=dim, num_heads=heads, window_size=ws, shift_size=shift,
                  backend=backend, **extra)
    x = torch.randn(2, height, width, dim, dtype=torch.float64)
    g = torch.randn(2, height, width, dim, dtype=torch.float64)
    gp, _ = check_against_reference(module, x, g, naive_for(module, extra.get("qk_scale")), atol=1e-10, rtol=1e-10)
    assert "relative_position_bias_table" in gp


@pytest.mark.parametrize("backend", eager_backends("window"))
def test_float32_close_to_float64_reference(backend):
    torch.manual_seed(3)
    dim, heads = 16, 4
    module = make(seed=3, dtype=torch.float32, dim=dim, num_heads=heads, window_size=3, shift_size=1,
                  backend=backend)
    x = torch.randn(2, 7, 8, dim)
    check_float32_against_reference(module, x, lambda x64, p: naive_window(x64, p, heads, 3, 1),
                                    atol=2e-5, rtol=1e-4)


def test_reference_is_sensitive_to_shift_and_mask():
    """Sanity check that the comparison can fail: shift 0 vs 1 give different outputs."""
    torch.manual_seed(4)
    shifted = make(seed=4, dim=8, num_heads=2, window_size=3, shift_size=1)
    x = torch.randn(1, 6, 6, 8, dtype=torch.float64)
    p = ref_params(shifted)
    assert (naive_window(x, p, 2, 3, 0) - shifted(x)).abs().max() > 1e-3
    torch.testing.assert_close(naive_window(x, p, 2, 3, 1), shifted(x), atol=1e-10, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# shifted-window mask
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hp,wp,ws,shift", [(6, 6, 3, 1), (6, 9, 3, 2), (8, 4, 4, 2), (3, 3, 3, 1), (10, 5, 5, 4)])
def test_shift_mask_matches_independent(hp, wp, ws, shift):
    module = attentions.build("window", dim=4, num_heads=1, window_size=ws, shift_size=shift)
    mask = module.shift_mask(hp, wp, torch.device("cpu"))
    expected = naive_shift_mask(hp, wp, ws, shift)
    assert mask.shape == (hp // ws * wp // ws, ws * ws, ws * ws)
    assert torch.equal(mask.to(torch.float64), expected.to(torch.float64))
    # only the last window row / column mixes sub-regions; the others are unmasked
    if hp // ws > 1 and wp // ws > 1:
        assert (mask[0] == 0).all()
    assert (mask[-1] == -100).any()


def test_shift_mask_hand_entries():
    """6×6 padded map, ws=3, shift=1: labels per coordinate are [0, 0, 0, 1, 1, 2]."""
    module = attentions.build("window", dim=4, num_heads=1, window_size=3, shift_size=1)
    mask = module.shift_mask(6, 6, torch.device("cpu"))
    last = mask[3]  # bottom-right window: rolled rows/cols 3..5
    # token 0 = (3, 3) region (1, 1); token 4 = (4, 4) region (1, 1); token 8 = (5, 5) region (2, 2)
    assert last[0, 4] == 0 and last[0, 8] == -100 and last[8, 0] == -100
    # token 2 = (3, 5) region (1, 2); token 5 = (4, 5) region (1, 2); token 6 = (5, 3) region (2, 1)
    assert last[2, 5] == 0 and last[2, 6] == -100 and last[2, 0] == -100
    # bottom-left window (rows 3..5, cols 0..2): column labels all 0, so only rows matter
    bl = mask[2]
    assert bl[0, 3] == 0 and bl[0, 6] == -100 and bl[6, 7] == 0


def test_shifted_attention_ignores_other_sub_regions_end_to_end():
    """6×6 map, ws=3, shift=1: original pixel (4, 4) is rolled token (3, 3) of the bottom-right
    window; original (0, 0) lands in that window at (5, 5) but in another sub-region, while
    original (5, 5) is at (4, 4), same sub-region."""
    torch.manual_seed(5)
    module = make(seed=5, dim=8, num_heads=2, window_size=3, shift_size=1)
    x = torch.randn(1, 6, 6, 8, dtype=torch.float64)
    base = module(x)

    def perturbed(i, j):
        y = x.clone()
        y[0, i, j] += 5 * torch.randn(8, dtype=torch.float64)
        return module(y)

    other_region = perturbed(0, 0)
    same_region = perturbed(5, 5)
    other_window = perturbed(1, 1)
    assert (other_region[0, 4, 4] - base[0, 4, 4]).abs().max() < 1e-20  # weight ~exp(-100)
    assert (same_region[0, 4, 4] - base[0, 4, 4]).abs().max() > 1e-3
    assert torch.equal(other_window[0, 4, 4], base[0, 4, 4])
    # without the shift, (0, 0) and (4, 4) are in different windows, (4, 4) and (5, 5) in the same
    unshifted = make(seed=5, dim=8, num_heads=2, window_size=3, shift_size=0)
    ub = unshifted(x)
    y = x.clone()
    y[0, 5, 5] += 1.0
    assert (unshifted(y)[0, 4, 4] - ub[0, 4, 4]).abs().max() > 1e-3
    y = x.clone()
    y[0, 0, 0] += 1.0
    assert torch.equal(unshifted(y)[0, 4, 4], ub[0, 4, 4])


def test_padded_tokens_take_part_unmasked():
    """A 4×4 map with ws=3 pads to 6×6; the window holding pixel (3, 3) sees it plus 8 zero
    pixels, exactly like a 1×1 map padded to 3×3 (padding is bottom/right, unmasked)."""
    torch.manual_seed(6)
    module = make(seed=6, dim=8, num_heads=2, window_size=3)
    x = torch.randn(1, 4, 4, 8, dtype=torch.float64)
    out = module(x)
    single = module(x[:, 3:4, 3:4])
    torch.testing.assert_close(out[:, 3, 3], single[:, 0, 0], atol=1e-12, rtol=1e-12)
    # if padding were masked the token would attend only to itself: out = proj(v(x))
    v = (x[0, 3, 3] @ module.qkv.weight.T + module.qkv.bias)[16:]
    self_only = v @ module.proj.weight.T + module.proj.bias
    assert (out[0, 3, 3] - self_only).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------
# relative position index / bias
# --------------------------------------------------------------------------------------------

def test_relative_position_index_ws3():
    ws = 3
    module = attentions.build("window", dim=4, num_heads=2, window_size=ws)
    index = module.relative_position_index
    assert index.shape == (9, 9) and not index.is_floating_point()
    expected = torch.empty(9, 9, dtype=torch.long)
    for i in range(9):
        yi, xi = divmod(i, ws)
        for j in range(9):
            yj, xj = divmod(j, ws)
            expected[i, j] = (yi - yj + ws - 1) * (2 * ws - 1) + (xi - xj + ws - 1)
    assert torch.equal(index, expected)
    # hand-checked entries
    assert index[0, 8] == 0                      # query (0,0), key (2,2): offset (-2,-2)
    assert index[8, 0] == 24                     # offset (+2,+2): last table row
    for i in range(9):
        assert index[i, i] == 12 == (ws - 1) * (2 * ws - 1) + (ws - 1)
    assert index[1, 0] == 13                     # query (0,1), key (0,0): offset (0,+1)
    assert index[3, 0] == 17                     # query (1,0), key (0,0): offset (+1,0)
    assert index[0, 5] == 1 * 5 + 0              # query (0,0), key (1,2): offset (-1,-2)
    assert "relative_position_index" in module.state_dict()
    assert "relative_position_index" not in dict(module.named_parameters())


def test_relative_position_bias_lookup():
    ws, heads = 3, 2
    module = attentions.build("window", dim=4, num_heads=heads, window_size=ws)
    assert module.relative_position_bias_table.shape == ((2 * ws - 1) ** 2, heads)
    with torch.no_grad():
        rows = torch.arange(25, dtype=torch.float32)[:, None]
        module.relative_position_bias_table.copy_(rows + 1000 * torch.arange(heads)[None])
    bias = module.relative_position_bias()
    assert bias.shape == (heads, 9, 9)
    for h in range(heads):
        for i in range(9):
            for j in range(9):
                dy = i // ws - j // ws
                dx = i % ws - j % ws
                assert bias[h, i, j] == 1000 * h + (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)


# --------------------------------------------------------------------------------------------
# backends, macs
# --------------------------------------------------------------------------------------------

def test_backend_switch_keeps_state_and_output():
    torch.manual_seed(7)
    module = make(seed=7, dim=8, num_heads=2, window_size=3, shift_size=1)
    x = torch.randn(2, 7, 5, 8, dtype=torch.float64)
    check_backend_switch(module, x, atol=1e-12, rtol=1e-12)


def test_macs_hand_count_on_padded_map():
    module = attentions.build("window", dim=8, num_heads=2, window_size=3, shift_size=1)
    # 5×7 pads to 6×9: 54 tokens per image, 108 for batch 2
    macs = module.macs(2, 5, 7)
    assert macs["projections"] == 2 * 6 * 9 * 8 * 4 * 8 == 27648
    assert macs["attention"] == 2 * 6 * 9 * 9 * 2 * 8 == 15552
    assert macs["positional"] == 0
    assert macs.total == 27648 + 15552


# --------------------------------------------------------------------------------------------
# bad options (the generic bad inputs of every family are in test_registry.py)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ws", [0, -1])
def test_bad_window_size(ws):
    with pytest.raises(AttentionConfigError, match=rf"window_size.*got {ws}"):
        attentions.build("window", dim=8, num_heads=2, window_size=ws)


@pytest.mark.parametrize("ws,shift", [(3, 3), (3, 4), (1, 1)])
def test_shift_not_smaller_than_window(ws, shift):
    with pytest.raises(AttentionConfigError, match=rf"shift_size {shift}.*window_size {ws}"):
        attentions.build("window", dim=8, num_heads=2, window_size=ws, shift_size=shift)


def test_negative_shift():
    with pytest.raises(AttentionConfigError, match=r"shift_size.*got -1"):
        attentions.build("window", dim=8, num_heads=2, window_size=3, shift_size=-1)


@pytest.mark.parametrize("height, width, ws, shift", [(7, 8, 3, 1), (6, 6, 3, 0)])
def test_flex_on_the_unpartitioned_map_matches_the_reference(height, width, ws, shift):
    """Window mask_mod + bias/shift score_mod (forward only on the CPU), padded maps included."""
    torch.manual_seed(3)
    module = make(seed=3, dtype=torch.float32, dim=16, num_heads=4, window_size=ws, shift_size=shift,
                  backend="flex")
    x = torch.randn(2, height, width, 16)
    with torch.no_grad():
        check_float32_against_reference(module, x, lambda x64, p: naive_window(x64, p, 4, ws, shift),
                                        atol=2e-5, rtol=1e-4)
    with pytest.raises(attentions.BackendUnavailableError, match="no backward on cpu"):
        module(x)
