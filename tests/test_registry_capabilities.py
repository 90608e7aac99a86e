"""``attentions.overridden_capabilities``: the public way for a tool to let backends run where they cannot."""

from __future__ import annotations

import pytest
import torch

import attentions
from attentions import AttentionConfigError


def cuda_only_backends() -> list[tuple[str, str]]:
    """(family, backend) of every registered backend that declares no CPU device."""
    return [(family, name) for family, info in attentions.list_attentions().items()
            for name, spec in info["backends"].items() if "cpu" not in spec["devices"]]


def test_selected_backends_take_the_capabilities_for_the_block_only():
    targets = cuda_only_backends()
    assert targets, "the registry has no CUDA-only backend to override"
    before = attentions.list_attentions()
    selected = {name for _, name in targets}
    with attentions.overridden_capabilities(lambda backend: backend.name in selected, devices=("cpu", "cuda"),
                                            requires=()):
        during = attentions.list_attentions()
        for family, name in targets:
            assert during[family]["backends"][name]["devices"] == ["cpu", "cuda"]
            dtype = getattr(torch, during[family]["backends"][name]["dtypes"][0])
            assert attentions.backend_available(family, name, "cpu", dtype=dtype) == (True, "")
        untouched = [(f, b) for f, info in before.items() for b in info["backends"] if b not in selected]
        assert untouched and all(during[f]["backends"][b] == before[f]["backends"][b] for f, b in untouched)
    assert attentions.list_attentions() == before


def test_the_backends_come_back_when_the_block_raises():
    before = attentions.list_attentions()
    with pytest.raises(RuntimeError, match="inside"):
        with attentions.overridden_capabilities(lambda backend: True, requires=("a_package_nobody_installs",)):
            assert not any(attentions.backend_available(family, backend)[0]
                           for family, info in attentions.list_attentions().items() for backend in info["backends"])
            raise RuntimeError("inside")
    assert attentions.list_attentions() == before


@pytest.mark.parametrize("capabilities, named", [
    ({"attend": print}, "attend"),               # not a capability: what the backend computes
    ({"devices": ("gpu",)}, "devices"),          # validated as a new Backend's would be
    ({"dtypes": ("float16",)}, "dtypes"),
])
def test_bad_capabilities_are_refused_naming_them(capabilities, named):
    before = attentions.list_attentions()
    with pytest.raises(AttentionConfigError, match=named):
        with attentions.overridden_capabilities(lambda backend: True, **capabilities):
            pass
    assert attentions.list_attentions() == before
