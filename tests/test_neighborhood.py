"""Tests of the ``neighborhood`` family (NAT / DiNAT / GNA) against a naive float64 reference.

The reference finds each query's keys by listing positions, not by the package's start formula: an axis is split
into its dilated sub-sequences, a query's block of ``stride`` queries picks its leader, and the window is the run
of ``kernel_size`` positions of the sub-sequence nearest the leader's centre. NATTEN's own output is the judge of
that definition (tests/test_natten.py)."""

from __future__ import annotations

import functools

import pytest
import torch

import attentions
from attentions import AttentionConfigError, BackendUnavailableError
from attentions.neighborhood import window_starts
from reference_helpers import (CudaCase, check_against_reference, check_backend_switch, check_float32_against_reference,
                               eager_backends, random_module)

make = functools.partial(random_module, "neighborhood", std=0.3)


def window_keys(length: int, query: int, kernel: int, dilation: int, stride: int) -> list[int]:
    """The key positions of ``query`` on an axis of ``length``, listed from the definition."""
    members = list(range(query % dilation, length, dilation))  # the query's dilated sub-sequence
    index = members.index(query)
    block_start = index - index % stride
    leader = min(block_start + stride // 2, len(members) - 1)
    first = min(max(leader - kernel // 2, 0), len(members) - kernel)
    return members[first:first + kernel]


def naive_neighborhood(x: torch.Tensor, p: dict[str, torch.Tensor], num_heads: int, kernel: int, dilation: int = 1,
                       stride: int = 1, qk_scale: float | None = None) -> torch.Tensor:
    """Neighborhood attention query by query: its keys listed per axis, logits, the bias entry of each pair's
    offset in dilated steps, softmax, weighted values."""
    batch, height, width, dim = x.shape
    head_dim = dim // num_heads
    scale = qk_scale if qk_scale else head_dim ** -0.5
    qkv = x @ p["qkv.weight"].T + (p["qkv.bias"] if "qkv.bias" in p else 0)
    q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
    rows = [window_keys(height, y, kernel, dilation, stride) for y in range(height)]
    cols = [window_keys(width, c, kernel, dilation, stride) for c in range(width)]
    out = torch.zeros_like(x)
    for y in range(height):
        for c in range(width):
            pairs = [(ky, kx) for ky in rows[y] for kx in cols[c]]
            key_y = torch.tensor([ky for ky, _ in pairs])
            key_x = torch.tensor([kx for _, kx in pairs])
            for h in range(num_heads):
                channels = slice(h * head_dim, (h + 1) * head_dim)
                logits = torch.einsum("bd,bnd->bn", q[:, y, c, channels] * scale, k[:, key_y, key_x, channels])
                if "rpb" in p:
                    entries = [((ky - y) // dilation + kernel - 1, (kx - c) // dilation + kernel - 1)
                               for ky, kx in pairs]
                    bias = torch.stack([p["rpb"][h, row, col] for row, col in entries])
                    logits = logits + bias
                weights = torch.softmax(logits, dim=-1)
                out[:, y, c, channels] = torch.einsum("bn,bnd->bd", weights, v[:, key_y, key_x, channels])
    return out @ p["proj.weight"].T + p["proj.bias"]


def naive_for(module: attentions.AttentionModule, qk_scale: float | None = None):
    return lambda x, p: naive_neighborhood(x, p, module.num_heads, module.kernel_size, module.dilation,
                                           module.stride, qk_scale)


# tests/test_cuda.py's case: every CUDA backend against the naive reference, dilated, bias on (NATTEN: off)
CUDA_CASE = CudaCase((2, 14, 13), dict(kernel_size=5, dilation=2), lambda module, x: naive_for(module),
                     backend_options={"natten": {"rel_pos_bias": False}})


# --------------------------------------------------------------------------------------------
# the window, by hand
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("length, kernel, dilation, stride, expected", [
    (5, 3, 1, 1, [0, 0, 1, 2, 2]),                  # shifted inward at both ends, never padded
    (7, 7, 1, 1, [0] * 7),                          # the kernel as wide as the axis: one window for all
    (9, 3, 2, 1, [0, 1, 0, 1, 2, 3, 4, 3, 4]),      # sub-sequences (0 2 4 6 8) and (1 3 5 7), each clamped
    (8, 3, 1, 2, [0, 0, 2, 2, 4, 4, 5, 5]),         # blocks of 2 share the window of their second query
    (7, 3, 1, 3, [0, 0, 0, 3, 3, 3, 4]),            # blocks of 3, the centre leads; the last block cut short
    (10, 3, 2, 2, [0, 1, 0, 1, 4, 5, 4, 5, 4, 5]),  # blocks inside each dilated sub-sequence
])
def test_window_starts_by_hand(length, kernel, dilation, stride, expected):
    assert window_starts(length, kernel, dilation, stride).tolist() == expected
    assert [window_keys(length, i, kernel, dilation, stride)[0] for i in range(length)] == expected


# --------------------------------------------------------------------------------------------
# every eager backend against the naive reference, forward and gradients, float64
# --------------------------------------------------------------------------------------------

CASES = [
    # (H, W, kernel, dilation, stride, extra options)
    (7, 7, 3, 1, 1, {}),                                 # NAT
    (9, 11, 5, 1, 1, {}),                                # odd, non-square
    (9, 7, 7, 1, 1, {"qk_scale": 0.3}),                  # the kernel as wide as the map: one window per row
    (8, 13, 3, 2, 1, {}),                                # DiNAT: sides not divisible by the dilation
    (13, 11, 3, 3, 1, {"qkv_bias": False}),              # dilation 3, sub-sequences of unequal length
    (10, 11, 5, 2, 1, {}),                               # k · d = 10 = the height
    (10, 9, 3, 1, 2, {"rel_pos_bias": False}),           # GNA: blocks of 2 queries share a window
    (11, 9, 5, 1, 3, {"rel_pos_bias": False}),           # stride 3, last block cut short
    (13, 14, 3, 2, 2, {"rel_pos_bias": False}),          # stride and dilation
    (5, 6, 1, 1, 1, {}),                                 # kernel 1: each token attends itself
]


def case_id(case: tuple) -> str:
    height, width, kernel, dilation, stride, extra = case
    return f"{height}x{width}-k{kernel}-d{dilation}-s{stride}" + "".join(f"-{name}" for name in extra)


@pytest.mark.parametrize("backend", eager_backends("neighborhood"))
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_naive_reference_float64(backend, case):
    height, width, kernel, dilation, stride, extra = case
    module = make(seed=kernel * 10 + dilation, dim=8, num_heads=2, kernel_size=kernel, dilation=dilation,
                  stride=stride, backend=backend, **extra)
    generator = torch.Generator().manual_seed(height * 100 + width)
    x, grad_out = (torch.randn(2, height, width, 8, dtype=torch.float64, generator=generator) for _ in range(2))
    gradients, _ = check_against_reference(module, x, grad_out, naive_for(module, extra.get("qk_scale")))
    assert ("rpb" in gradients) == extra.get("rel_pos_bias", True)


@pytest.mark.parametrize("backend", eager_backends("neighborhood"))
def test_float32_close_to_float64_reference(backend):
    module = make(seed=3, dtype=torch.float32, dim=16, num_heads=4, kernel_size=5, dilation=2, backend=backend)
    x = torch.randn(2, 11, 12, 16, generator=torch.Generator().manual_seed(3))
    check_float32_against_reference(module, x, naive_for(module), atol=2e-5, rtol=1e-4)


FLEX_CASES = [(9, 10, 3, 1, 1, {}), (11, 9, 3, 2, 1, {}), (10, 9, 5, 1, 2, {"rel_pos_bias": False})]


@pytest.mark.parametrize("case", FLEX_CASES, ids=case_id)
def test_flex_matches_the_reference(case):
    """Window mask_mod and bias score_mod on the row-major map (forward only on the CPU)."""
    height, width, kernel, dilation, stride, extra = case
    module = make(seed=4, dtype=torch.float32, dim=16, num_heads=4, kernel_size=kernel, dilation=dilation,
                  stride=stride, backend="flex", **extra)
    x = torch.randn(2, height, width, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        check_float32_against_reference(module, x, naive_for(module), atol=2e-5, rtol=1e-4)
    with pytest.raises(BackendUnavailableError, match="no backward on cpu"):
        module(x)


def test_the_reference_tells_the_options_apart():
    """The comparison can fail: dilation, stride and the bias each change the output."""
    x = torch.randn(1, 9, 9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    outputs = {}
    for name, options in {"plain": {}, "dilated": {"dilation": 2}, "strided": {"stride": 2, "rel_pos_bias": False},
                          "unbiased": {"rel_pos_bias": False}}.items():
        module = make(seed=5, dim=8, num_heads=2, kernel_size=3, **options)
        with torch.no_grad():
            outputs[name] = module(x)
    plain = outputs.pop("plain")
    for name, out in outputs.items():
        assert (out - plain).abs().max() > 1e-3, name


def test_the_bias_table_entry_of_a_pair_is_its_offset():
    """Only the entry of the pair's offset moves the output: the corner query (0, 0) of a 3×3 kernel sees keys at
    offsets 0..2 on both axes, entries [k-1 .. 2k-2], never the others."""
    module = make(seed=6, dim=4, num_heads=1, kernel_size=3)
    x = torch.randn(1, 5, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    out = module(x)
    out[0, 0, 0].sum().backward()
    touched = module.rpb.grad[0] != 0
    expected = torch.zeros(5, 5, dtype=torch.bool)
    expected[2:, 2:] = True
    assert torch.equal(touched, expected)


def test_backend_switch_keeps_state_and_output():
    module = make(seed=7, dim=8, num_heads=2, kernel_size=3, dilation=2)
    check_backend_switch(module, torch.randn(2, 7, 8, 8, dtype=torch.float64))


def test_state_dict_keys_are_nats():
    module = attentions.build("neighborhood", dim=64, num_heads=2)
    shapes = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    assert shapes == {"qkv.weight": (192, 64), "qkv.bias": (192,), "rpb": (2, 13, 13), "proj.weight": (64, 64),
                      "proj.bias": (64,)}
    assert "rpb" not in attentions.build("neighborhood", dim=64, num_heads=2, rel_pos_bias=False).state_dict()


def test_macs_hand_count():
    """NAT's convention: projections 4·C² per token, QK and AV k²·C each per token, the bias add none."""
    module = attentions.build("neighborhood", dim=64, num_heads=2, kernel_size=7, dilation=2)
    batch, height, width = 2, 28, 21
    tokens = batch * height * width
    counts = module.macs(batch, height, width)
    assert counts == {"projections": tokens * 4 * 64 * 64, "attention": tokens * 49 * 2 * 64, "positional": 0}


@pytest.mark.parametrize("kernel, dilation, stride", [(3, 1, 1), (5, 2, 1), (3, 1, 2)])
def test_macs_agree_with_fvcore(kernel, dilation, stride):
    fvcore_nn = pytest.importorskip("fvcore.nn")
    module = attentions.build("neighborhood", dim=32, num_heads=2, kernel_size=kernel, dilation=dilation,
                              stride=stride, rel_pos_bias=stride == 1)
    x = torch.randn(2, 11, 10, 32)
    flops = fvcore_nn.FlopCountAnalysis(module, x)
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    assert flops.total() == sum(module.macs(2, 11, 10).values())


# --------------------------------------------------------------------------------------------
# bad options and maps
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, expected", [
    ({"kernel_size": 4}, "kernel_size must be odd"),
    ({"kernel_size": 0}, "kernel_size must be an integer >= 1, got 0"),
    ({"dilation": 0}, "dilation must be an integer >= 1, got 0"),
    ({"stride": 4, "kernel_size": 3, "rel_pos_bias": False}, "stride 4 must be at most kernel_size 3"),
    ({"stride": 2}, "rel_pos_bias needs stride 1"),
])
def test_bad_options(options, expected):
    with pytest.raises(AttentionConfigError, match=expected):
        attentions.build("neighborhood", dim=8, num_heads=2, **options)


@pytest.mark.parametrize("options, height, width, expected", [
    ({"kernel_size": 7}, 6, 9, "height 6 is smaller than kernel_size × dilation = 7 × 1 = 7"),
    ({"kernel_size": 3, "dilation": 3}, 9, 8, "width 8 is smaller than kernel_size × dilation = 3 × 3 = 9"),
])
def test_a_map_smaller_than_the_window_is_refused_at_forward_and_macs(options, height, width, expected):
    module = attentions.build("neighborhood", dim=8, num_heads=2, **options)
    with pytest.raises(AttentionConfigError, match=expected):
        module(torch.randn(1, height, width, 8))
    with pytest.raises(AttentionConfigError, match=expected):
        module.macs(1, height, width)


def test_natten_says_what_it_cannot_take():
    """NATTEN 0.20 dropped relative position bias, and takes power-of-two head dims: its backend says so instead
    of dropping the table or failing inside NATTEN."""
    def reason(**options):
        return attentions.build("neighborhood", num_heads=2, kernel_size=3, backend="natten",
                                **{"dim": 16, **options}).unsupported_reason()

    assert "rel_pos_bias=False" in reason()
    assert "powers of two from 8 to 512, got 12" in reason(dim=24, rel_pos_bias=False)
    assert reason(rel_pos_bias=False) is None
