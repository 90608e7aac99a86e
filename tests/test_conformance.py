"""The conformance kit (``bench.suites.conformance``, ``run_bench.py check-attention``): a family that keeps the
contract passes every rule; each way of breaking it fails the rule that names it, and only that one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import attentions
from attentions import AttentionConfigError, Backend, FullAttention, MacCount
from attentions.core import sdpa_attention
from bench import cli
from bench.suites.conformance import assert_conforms, check_family
from registry_cases import families, registry_kept


def off_by(attend, factor: float):
    """A backend function whose output is ``factor`` times the honest one's."""
    def scaled(*args, **kwargs):
        out, weights = attend(*args, **kwargs)
        return out * factor, weights
    return scaled


class Honest(FullAttention):
    """Full attention under a name of its own: keeps the contract."""

    family = "honest"
    backends = {name: FullAttention.backends[name] for name in ("torch", "sdpa")}


class WrongShape(Honest):
    family = "wrong_shape"

    def forward(self, x):
        return super().forward(x)[:, :, :-1]  # one column of the map lost


class Sloppy(Honest):
    family = "sloppy"
    backends = {**Honest.backends, "sloppy": Backend("sloppy", off_by(sdpa_attention, 1.02), "2 % off")}


class Stateful(Honest):
    family = "stateful"

    def forward(self, x):
        return super().forward(x) + 1e-3 * torch.randn_like(x)  # draws at every call


class DeadWeight(Honest):
    family = "dead_weight"

    def __init__(self, dim: int, num_heads: int = 8, backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend=backend)
        self.unused = torch.nn.Linear(dim, dim)  # in the parameters, never in the forward


class Overcounted(Honest):
    family = "overcounted"

    def count_macs(self, batch, height, width):
        return MacCount({part: count * 11 // 10 for part, count in super().count_macs(batch, height, width).items()})


class Lenient(Honest):
    family = "lenient"

    def __init__(self, dim: int, num_heads: int = 8, *, window: int = 7, backend: str = "torch") -> None:
        super().__init__(dim, num_heads, backend=backend)
        self.window = window  # taken as it is, never checked


BROKEN = {  # family -> the rule it breaks, and what the verdict says
    WrongShape: ("nhwc", "gave (2, 14, 13, 32) torch.float32: the output must be NHWC"),  # (and what needs the shape)
    Sloppy: ("backend sloppy", "fwd against float64: output: rel_err 0.0199 from float64 > bound 1e-05"),
    Stateful: ("seeded", "one module gave two outputs for one input"),
    DeadWeight: ("gradients", "no gradient reaches unused.weight, unused.bias"),
    Overcounted: ("macs", "must agree within 1%"),
    Lenient: ("bad options", "window='x': accepted"),
}


@pytest.fixture
def registered():
    """Registers the given families for one test; afterwards the registry is as before."""
    with registry_kept():
        yield lambda *classes: [attentions.register(cls) for cls in classes]


def test_a_family_that_keeps_the_contract_passes_every_rule(registered):
    registered(Honest)
    result = check_family("honest")
    assert result.passed, result.table()
    assert [v.rule for v in result.verdicts] == ["builds", "nhwc", "seeded", "gradients", "backend torch",
                                                 "backend sdpa", "macs", "bad options", "bad input"]
    assert {v.status for v in result.verdicts} == {"pass"}
    assert result.table().splitlines()[-1] == "honest: conforms"


# A wrong output shape also breaks what runs a backward through it: the gradients and each backend's fwd+bwd
ALSO_BROKEN = {WrongShape: ["gradients", "backend torch", "backend sdpa"]}


@pytest.mark.parametrize("cls", list(BROKEN), ids=lambda cls: cls.family)
def test_each_broken_rule_is_named_and_fails(registered, cls):
    registered(cls)
    rule, said = BROKEN[cls]
    result = check_family(cls.family)
    assert not result.passed
    failed = [failure.rule for failure in result.failures()]
    assert failed == [rule, *ALSO_BROKEN.get(cls, [])], result.table()
    assert said in result.failures()[0].detail, result.table()
    assert result.table().splitlines()[-1] == f"{cls.family}: {len(failed)} rule(s) broken: {', '.join(failed)}"


def test_a_backend_for_another_device_is_skipped_and_said_so(registered):
    cuda_only = dataclasses.replace(FullAttention.backends["sdpa"], name="gpu_only", devices=("cuda",))
    backends = {**Honest.backends, "gpu_only": cuda_only}
    registered(type("CudaToo", (Honest,), {"family": "cuda_too", "backends": backends}))
    result = check_family("cuda_too")
    [skipped] = [v for v in result.verdicts if v.status == "skip"]
    assert result.passed and skipped.rule == "backend gpu_only" and "runs on cuda, not on cpu" in skipped.detail


class Picky(Honest):
    """A family whose 'sdpa' backend refuses its own defaults, and says so: skipped with the reason, not failed."""

    family = "picky"

    def unsupported_reason(self) -> str | None:
        return "this backend takes no defaults" if self.backend == "sdpa" else None


def test_a_backend_that_refuses_the_defaults_is_skipped_and_said_so(registered):
    registered(Picky)
    result = check_family("picky")
    [skipped] = [v for v in result.verdicts if v.status == "skip"]
    assert result.passed and skipped.rule == "backend sdpa"
    assert skipped.detail == "not for the family's defaults: this backend takes no defaults"


@pytest.mark.slow  # every backend of every family, FlexAttention's CPU compiles among them: about 100 s
@pytest.mark.parametrize("family", families())
def test_every_registered_family_conforms(family):
    result = check_family(family)
    assert result.passed, result.table()


def test_assert_conforms_is_the_kit_as_a_pytest_helper(registered):
    registered(Honest, Sloppy)
    assert_conforms("test_conformance:honest")
    with pytest.raises(AssertionError, match=r"FAIL  backend sloppy"):
        assert_conforms("test_conformance:sloppy")


def test_check_attention_exits_0_1_or_2(registered, capsys):
    registered(Honest, WrongShape)
    assert cli.main(["check-attention", "test_conformance:honest"]) == 0
    assert capsys.readouterr().out.strip().endswith("honest: conforms")
    assert cli.main(["check-attention", "test_conformance:wrong_shape"]) == 1
    assert "FAIL  nhwc" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["check-attention", "test_conformance:nothing"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "run_bench.py: error: test_conformance:nothing: no family 'nothing' is registered; test_conformance "
        "registers 'honest', 'wrong_shape'")
    with pytest.raises(SystemExit) as exc:
        cli.main(["check-attention", "no_such_plugin_module"])
    assert exc.value.code == 2 and "plugin 'no_such_plugin_module' (check-attention): does not import" in \
        capsys.readouterr().err


def test_the_kit_refuses_an_option_check_that_is_not_a_value_error(registered):
    """An option checked with a bare assert is refused: the contract asks for a ValueError naming it."""
    class Asserting(Honest):
        family = "asserting"

        def __init__(self, dim: int, num_heads: int = 8, *, window: int = 7, backend: str = "torch") -> None:
            assert isinstance(window, int)
            super().__init__(dim, num_heads, backend=backend)

    registered(Asserting)
    [failure] = check_family("asserting").failures()
    assert failure.rule == "bad options" and "raised AssertionError" in failure.detail
    assert issubclass(AttentionConfigError, ValueError)
