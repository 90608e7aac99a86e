"""The shared interface: registry, capabilities, backend switching, errors and FLOP counts."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from fvcore.nn import FlopCountAnalysis

import attentions
from attentions import AttentionConfigError, BackendUnavailableError
from reference_helpers import BACKENDS
from registry_cases import BUILT_IN_FAMILIES, cpu_backends, families

FAMILIES = families()  # every registered family, a researcher's own included (conftest.py's ATTENTION_EXTENSIONS)
# Small but non-trivial options per family, valid on a 14×14 map with dim 32 and 4 heads; a family without an entry
# is built with its defaults.
SMALL_OPTIONS = {
    "full": {"side_dwconv": 3},
    "window": {"window_size": 4, "shift_size": 2},
    "deformable": {"n_groups": 2, "stride": 2, "fmap_size": 14},
    "bra": {"n_win": 7, "topk": 3},
}


def small(name: str, backend: str = "torch") -> attentions.AttentionModule:
    torch.manual_seed(0)
    return attentions.build(name, dim=32, num_heads=4, backend=backend, **SMALL_OPTIONS.get(name, {}))


def cpu_cases() -> list:
    """(family, backend) for every registered backend that runs on this CPU."""
    return [pytest.param(name, backend, id=f"{name}-{backend}") for name in FAMILIES for backend in cpu_backends(name)]


def test_every_family_is_registered_with_both_reference_backends():
    described = attentions.list_attentions()
    assert set(BUILT_IN_FAMILIES) <= set(described)  # the package's own, whatever else is registered
    for name, info in described.items():
        assert {"torch", "sdpa"} <= set(info["backends"]), name
        for backend in info["backends"].values():
            assert backend["devices"] and backend["dtypes"] and set(backend["backward"]) <= set(backend["devices"])
        reference = info["backends"][info["reference_backend"]]
        assert set(reference["dtypes"]) == {"float16", "bfloat16", "float32", "float64"}
        assert reference["devices"] == reference["backward"] == ["cpu", "cuda"]


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


@pytest.mark.parametrize("name", FAMILIES)
def test_backend_available(name):
    for backend in BACKENDS:
        assert attentions.backend_available(name, backend, "cpu") == (True, "")
        ok, reason = attentions.backend_available(name, backend, "cuda")
        assert ok is torch.cuda.is_available()
        if not ok:
            assert "CUDA" in reason
        ok, reason = attentions.backend_available(name, backend, "meta")
        assert not ok and "meta" in reason
    ok, reason = attentions.backend_available(name, "nope", "cpu")
    assert not ok and "'nope'" in reason and "'torch'" in reason and "'sdpa'" in reason


def test_unknown_family_is_named():
    valid = ", ".join(map(repr, FAMILIES))
    assert valid.startswith("'full', 'window', 'deformable', 'bra'")  # registration order: the package's first
    with pytest.raises(AttentionConfigError, match=rf"'swin'.*valid: {re.escape(valid)}$"):
        attentions.build("swin", dim=32, num_heads=4)


@pytest.mark.parametrize("name,option,valid", [
    ("full", "window_size", "side_dwconv"),           # another family's option
    ("window", "window_sz", "window_size"),           # a misspelling
    ("window", "side_dwconv", "window_size"),
    ("deformable", "offset_range", "offset_range_factor"),  # a prefix of a valid one
    ("bra", "bogus_option", "n_win"),
])
def test_unknown_option_is_named_with_the_valid_ones(name, option, valid):
    with pytest.raises(AttentionConfigError, match=rf"{option}.*valid: .*{valid}") as info:
        attentions.build(name, dim=32, num_heads=4, **{option: 7})
    listed = str(info.value).split("valid: ")[1]
    assert all(o in listed for o in attentions.list_attentions()[name]["options"])


@pytest.mark.parametrize("name", FAMILIES)
def test_unknown_backend_is_named_with_the_valid_ones(name):
    for bad in ("cuda_fast", "flash", "cutlass", "cuda"):
        with pytest.raises(AttentionConfigError, match=rf"'{bad}'.*valid: 'torch', 'sdpa'"):
            attentions.build(name, dim=32, num_heads=4, backend=bad)
    module = small(name)
    with pytest.raises(AttentionConfigError, match=r"'flash'.*'torch'.*'sdpa'"):
        module.backend = "flash"
    assert module.backend == "torch"
    module.backend = "sdpa"
    with pytest.raises(AttentionConfigError, match=r"'nope'.*'torch'.*'sdpa'"):
        module.backend = "nope"
    assert module.backend == "sdpa"


@pytest.mark.parametrize("name", FAMILIES)
def test_bad_head_counts(name):
    with pytest.raises(AttentionConfigError, match="dim 30 is not divisible by num_heads 4"):
        attentions.build(name, dim=30, num_heads=4)
    with pytest.raises(AttentionConfigError, match="num_heads must be an integer >= 1, got 0"):
        attentions.build(name, dim=32, num_heads=0)


@pytest.mark.parametrize("shape", [(14, 14, 32), (1, 2, 14, 14, 32), (32,)], ids=["3d", "5d", "1d"])
@pytest.mark.parametrize("name", FAMILIES)
def test_input_not_4d_is_named(name, shape):
    with pytest.raises(AttentionConfigError, match=r"NHWC.*" + re.escape(str(shape))):
        small(name)(torch.randn(shape))


@pytest.mark.parametrize("shape,channels", [
    ((1, 14, 14, 16), 16),
    ((1, 14, 14, 48), 48),
    ((1, 32, 14, 14), 14),  # NCHW by mistake
], ids=["fewer", "more", "nchw"])
@pytest.mark.parametrize("name", FAMILIES)
def test_wrong_channels_are_named(name, shape, channels):
    with pytest.raises(AttentionConfigError, match=rf"{channels} channels.*dim=32"):
        small(name)(torch.randn(shape))


@pytest.mark.parametrize("name", FAMILIES)
def test_non_tensor_input_is_named(name):
    with pytest.raises(AttentionConfigError, match="NHWC.*list"):
        small(name)([[1.0]])


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize("name, backend", cpu_cases())
def test_non_floating_input_is_backend_unavailable(name, backend, dtype):
    with pytest.raises(BackendUnavailableError, match=re.escape(str(dtype))):
        small(name, backend)(torch.ones(1, 14, 14, 32, dtype=dtype))


@pytest.mark.parametrize("name, backend", cpu_cases())
def test_input_on_an_unsupported_device_is_backend_unavailable(name, backend):
    with pytest.raises(BackendUnavailableError, match="meta"):
        small(name, backend)(torch.empty(1, 14, 14, 32, device="meta"))


def test_backend_that_cannot_run_on_the_device_raises_dedicated_error():
    module = small("full")
    module.backends = dict(module.backends)  # instance-level copy: narrow one backend to CUDA only
    module.backends["torch"] = attentions.Backend("torch", module.backends["torch"].attend, "cuda only",
                                                  devices=("cuda",))
    with pytest.raises(BackendUnavailableError, match="runs on cuda, not on cpu"):
        module(torch.randn(1, 14, 14, 32))
    assert issubclass(BackendUnavailableError, ValueError) and issubclass(AttentionConfigError, ValueError)


@pytest.mark.parametrize("name", FAMILIES)
def test_inputs_are_validated_once_per_kind_of_call(name, monkeypatch):
    """A forward like one already validated runs no checks (the timed pass is the computation); another
    shape, dtype, backend, grad mode or a converted module is validated afresh, so bad input still raises."""
    module = small(name)
    validated = []
    monkeypatch.setattr(module, "validate_input", lambda x: (validated.append(tuple(x.shape)),
                                                             type(module).validate_input(module, x))[-1])
    x = torch.randn(1, 14, 14, 32)
    with torch.no_grad():
        module(x)
        module(x.clone())
    assert validated == [(1, 14, 14, 32)]
    module(x)  # grad enabled: a backward is wanted now
    module.backend = "sdpa"
    with torch.no_grad():
        module(x)
        module(torch.randn(2, 14, 14, 32))
    assert len(validated) == 4
    module.double()
    with pytest.raises(AttentionConfigError, match="module.to"):  # float32 input, float64 weights
        module(x)
    with pytest.raises(AttentionConfigError, match="channels"):
        module(torch.randn(1, 14, 14, 16))


def test_a_cached_validation_still_sees_parameters_unfrozen():
    """flex has no backward on the CPU: with frozen parameters and no input gradient it runs under grad mode;
    once a parameter is trainable again the same call is refused, not let through from the cache."""
    module = small("full", "flex").requires_grad_(False)
    x = torch.randn(1, 14, 14, 32)
    module.validate_input(x)
    module.check_input(x)
    module.proj.weight.requires_grad_(True)
    with pytest.raises(BackendUnavailableError, match="no backward on cpu"):
        module.check_input(x)
