"""The shared interface: registry, capabilities, backend switching, errors and FLOP counts."""

from __future__ import annotations

import logging

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

import attentions
from attentions import AttentionConfigError, BackendUnavailableError

FAMILIES = ("full", "window", "deformable", "bra")
# Small but non-trivial options per family, valid on a 14×14 map with dim 32 and 4 heads.
SMALL_OPTIONS = {
    "full": {"side_dwconv": 3},
    "window": {"window_size": 4, "shift_size": 2},
    "deformable": {"n_groups": 2, "stride": 2, "fmap_size": 14},
    "bra": {"n_win": 7, "topk": 3},
}


def small(name: str, backend: str = "torch") -> attentions.AttentionModule:
    torch.manual_seed(0)
    return attentions.build(name, dim=32, num_heads=4, backend=backend, **SMALL_OPTIONS[name])


def test_every_family_is_registered_with_both_reference_backends():
    described = attentions.list_attentions()
    assert set(described) == set(FAMILIES)
    for name, info in described.items():
        assert {"torch", "sdpa"} <= set(info["backends"]), name
        for backend in info["backends"].values():
            assert backend["devices"] and backend["dtypes"] and isinstance(backend["backward"], bool)
            assert "float32" in backend["dtypes"]


def test_list_attentions_reports_constructor_options_with_defaults():
    options = attentions.list_attentions()["bra"]["options"]
    assert options == {
        "n_win": 7, "qk_dim": None, "qk_scale": None, "kv_per_win": 4, "kv_downsample_ratio": 4,
        "kv_downsample_kernel": None, "kv_downsample_mode": "identity", "topk": 4, "param_attention": "qkvo",
        "param_routing": False, "diff_routing": False, "soft_routing": False, "side_dwconv": 3, "auto_pad": False,
    }
    assert attentions.list_attentions()["window"]["options"]["window_size"] == 7
    assert attentions.list_attentions()["deformable"]["options"]["n_groups"] == 1


@pytest.mark.parametrize("name", FAMILIES)
def test_nhwc_in_nhwc_out_and_backend_switch_keeps_weights(name):
    module = small(name).double()
    x = torch.randn(2, 14, 14, 32, dtype=torch.float64)
    reference = module(x)
    assert reference.shape == x.shape
    state = {k: v.clone() for k, v in module.state_dict().items()}
    module.backend = "sdpa"
    assert module.backend == "sdpa"
    torch.testing.assert_close(module(x), reference, rtol=0, atol=1e-10)
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())


@pytest.mark.parametrize("name", FAMILIES)
def test_all_backends_share_one_state_dict_layout(name):
    keys = {backend: {k: v.shape for k, v in small(name, backend).state_dict().items()}
            for backend in attentions.list_attentions()[name]["backends"]}
    assert len({tuple(sorted(k.items())) for k in keys.values()}) == 1


@pytest.mark.parametrize("name", FAMILIES)
def test_analytic_macs_equal_fvcore(name):
    """fvcore (the papers' convention) must count exactly what macs() predicts on the torch backend."""
    module = small(name).eval()
    x = torch.randn(2, 14, 14, 32)
    logging.disable(logging.WARNING)
    try:
        counter = FlopCountAnalysis(module, (x,))
        counter.unsupported_ops_warnings(False)
        counted = counter.total()
    finally:
        logging.disable(logging.NOTSET)
    predicted = module.macs(2, 14, 14)
    assert counted == predicted.total
    assert all(v >= 0 for v in predicted.values()) and predicted["attention"] > 0


def test_bra_macs_match_the_published_fvcore_figure():
    """One BRA layer, 56², C=64, heads 2, n_win 7, topk 4: 156.10 M MACs with fvcore (REFERENCE.md)."""
    module = attentions.build("bra", dim=64, num_heads=2, n_win=7, topk=4)
    assert module.macs(1, 56, 56).total == 156_100_672


def test_backend_available():
    assert attentions.backend_available("bra", "sdpa", "cpu") == (True, "")
    ok, reason = attentions.backend_available("full", "torch", "cuda")
    assert ok == torch.cuda.is_available()
    if not ok:
        assert "CUDA" in reason
    ok, reason = attentions.backend_available("window", "nonexistent", "cpu")
    assert not ok and "'torch'" in reason and "'sdpa'" in reason
    ok, reason = attentions.backend_available("full", "torch", "meta")
    assert not ok and "meta" in reason


def test_unknown_family_option_and_backend_are_named():
    with pytest.raises(AttentionConfigError, match=r"'swin'.*valid: 'full', 'window', 'deformable', 'bra'"):
        attentions.build("swin", dim=32, num_heads=4)
    with pytest.raises(AttentionConfigError, match=r"window_sz.*window_size"):
        attentions.build("window", dim=32, num_heads=4, window_sz=7)
    with pytest.raises(AttentionConfigError, match=r"'cuda_fast'.*'torch', 'sdpa'"):
        attentions.build("full", dim=32, num_heads=4, backend="cuda_fast")
    module = small("bra")
    with pytest.raises(AttentionConfigError, match="'flash'"):
        module.backend = "flash"
    assert module.backend == "torch"


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_inputs_get_clear_errors(name):
    module = small(name)
    with pytest.raises(AttentionConfigError, match=r"NHWC.*\(14, 14, 32\)"):
        module(torch.randn(14, 14, 32))
    with pytest.raises(AttentionConfigError, match=r"16 channels.*dim=32"):
        module(torch.randn(1, 14, 14, 16))
    with pytest.raises(AttentionConfigError, match="NHWC"):
        module([[1.0]])
    with pytest.raises(BackendUnavailableError, match=r"torch.int64"):
        module(torch.randint(0, 5, (1, 14, 14, 32)))
    with pytest.raises(AttentionConfigError, match="dim 30 is not divisible by num_heads 4"):
        attentions.build(name, dim=30, num_heads=4)
    with pytest.raises(AttentionConfigError, match="num_heads must be an integer >= 1, got 0"):
        attentions.build(name, dim=32, num_heads=0)


def test_backend_that_cannot_run_on_the_device_raises_dedicated_error():
    module = small("full")
    module.backends = dict(module.backends)  # instance-level copy: narrow one backend to CUDA only
    module.backends["torch"] = attentions.Backend("torch", module.backends["torch"].attend, "cuda only",
                                                  devices=("cuda",))
    with pytest.raises(BackendUnavailableError, match="runs on cuda, not on cpu"):
        module(torch.randn(1, 14, 14, 32))
    assert issubclass(BackendUnavailableError, ValueError) and issubclass(AttentionConfigError, ValueError)
