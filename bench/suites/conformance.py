"""The conformance kit: does a family keep the contract every sweep relies on? (``run_bench.py check-attention``)

Run on the CPU, on fresh random inputs, each rule a line of a pass/fail table (docs/plugins.md has the contract):

- **builds**: with its defaults, at dim 32 and 2 heads;
- **nhwc**: an NHWC float32 and float64 input gives an output of the same shape and dtype, finite;
- **seeded**: the same seed builds the same weights, and the same module gives the same output twice;
- **gradients**: a backward reaches the input and every parameter, finite;
- **backend NAME**: each declared backend that runs on this CPU, in float32, forward and (where it has a
  backward here) forward+backward, within the harness's accuracy bound of float64 (``bench.core.accuracy``);
  a backend for another device, or one that refuses the family's defaults (``unsupported_reason``), is skipped,
  said so;
- **macs**: ``macs()`` within 1 % of fvcore's count (skipped without fvcore);
- **bad options** and **bad input**: an option given a value of the wrong kind, dim not divisible by the heads,
  a 3-D input and one with the wrong channel count each raise ``ValueError`` naming what was wrong.

``check_family`` returns the table; ``assert_conforms`` is the same as a pytest helper in a plugin's own tests.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

import attentions
from attentions import AttentionModule
from attentions.errors import error_line
from attentions.plugins import load_plugin
from bench.core.accuracy import accuracy
from bench.core.flops import FlopCounterUnavailable
from bench.suites.attention_rows import FLOP_TOLERANCE
from bench.suites.rows import count_macs_any_backend

DIM, HEADS, BATCH = 32, 2, 2
MAP_SIZES = (14, 16, 28, 32, 56)  # the first that the family's defaults take is the map checked
BAD_KINDS: dict[type, Any] = {int: "x", float: "x", bool: "yes", str: 3, tuple: "x"}  # a value of another kind


@dataclass(frozen=True)
class Verdict:
    """One rule's outcome: 'pass', 'fail' or 'skip', and what was seen."""

    rule: str
    status: str
    detail: str = ""


@dataclass(frozen=True)
class Conformance:
    """A family's verdicts."""

    family: str
    verdicts: tuple[Verdict, ...]

    @property
    def passed(self) -> bool:
        return all(verdict.status != "fail" for verdict in self.verdicts)

    def failures(self) -> list[Verdict]:
        return [verdict for verdict in self.verdicts if verdict.status == "fail"]

    def table(self) -> str:
        """The verdicts as a text table, one rule a line, and a last line with the outcome."""
        width = max(len(verdict.rule) for verdict in self.verdicts)
        lines = [f"{self.family}: conformance on the CPU"]
        lines += [f"  {verdict.status.upper():<4}  {verdict.rule:<{width}}  {verdict.detail}".rstrip()
                  for verdict in self.verdicts]
        failed = self.failures()
        lines.append(f"{self.family}: " + ("conforms" if not failed else
                                           f"{len(failed)} rule(s) broken: {', '.join(v.rule for v in failed)}"))
        return "\n".join(lines)


def _map_size(family: str) -> int | None:
    module = attentions.build(family, dim=DIM, num_heads=HEADS)
    for size in MAP_SIZES:
        try:
            module.check_map_size(size, size)
            return size
        except attentions.AttentionConfigError:
            continue
    return None


def _random_input(size: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(BATCH, size, size, DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _seeded(family: str, seed: int, backend: str | None = None) -> AttentionModule:
    """The family with its defaults, weights drawn from ``seed`` (its own initialisation, then every parameter
    redrawn, so that no parameter is left at a constant such as a zero bias)."""
    torch.manual_seed(seed)
    module = attentions.build(family, dim=DIM, num_heads=HEADS)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    if backend is not None:
        module.backend = backend
    return module


def _nhwc(family: str, size: int) -> Verdict:
    for dtype in (torch.float32, torch.float64):
        module = _seeded(family, 0).to(dtype)
        x = _random_input(size, dtype, 1)
        with torch.no_grad():
            out = module(x)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape or out.dtype != dtype:
            got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            return Verdict("nhwc", "fail", f"input {tuple(x.shape)} {dtype} gave {got}: the output must be NHWC, "
                                           f"shaped and typed as the input")
        if not torch.isfinite(out).all():
            return Verdict("nhwc", "fail", f"non-finite values in the {dtype} output")
    return Verdict("nhwc", "pass", f"({BATCH}, {size}, {size}, {DIM}) in float32 and float64")


def _seeded_forward(family: str, size: int) -> Verdict:
    x = _random_input(size, torch.float32, 2)
    first, second = _seeded(family, 5), _seeded(family, 5)
    with torch.no_grad():
        outputs = [first(x), first(x), second(x)]
    if not torch.equal(outputs[0], outputs[1]):
        return Verdict("seeded", "fail", "one module gave two outputs for one input (a forward must not draw "
                                         "random numbers or keep state)")
    if not torch.equal(outputs[0], outputs[2]):
        return Verdict("seeded", "fail", "two modules built from one seed gave different outputs")
    return Verdict("seeded", "pass", "same seed, same output, twice")


def _gradients(family: str, size: int) -> Verdict:
    module = _seeded(family, 7).double()
    x = _random_input(size, torch.float64, 3).requires_grad_()
    module(x).mul(_random_input(size, torch.float64, 4)).sum().backward()
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    if x.grad is None:
        missing.insert(0, "the input")
    nonfinite = [name for name, p in [("the input", x), *module.named_parameters()]
                 if p.grad is not None and not torch.isfinite(p.grad).all()]
    if missing or nonfinite:
        return Verdict("gradients", "fail", "; ".join(filter(None, [
            missing and f"no gradient reaches {', '.join(missing)}",
            nonfinite and f"non-finite gradient of {', '.join(nonfinite)}"])))
    count = sum(1 for p in module.parameters() if p.requires_grad)
    return Verdict("gradients", "pass", f"the input and {count} parameters")


def _backend(family: str, backend: str, size: int) -> Verdict:
    rule = f"backend {backend}"
    phases, unchecked = [], []
    for phase, backward in (("fwd", False), ("fwd+bwd", True)):
        ok, reason = attentions.backend_available(family, backend, "cpu", backward=backward, dtype=torch.float32)
        if ok:
            phases.append(phase)
        elif phase == "fwd":
            return Verdict(rule, "skip", reason)
        else:
            unchecked.append(f"fwd+bwd not checked: {reason}")
    refusal = _seeded(family, 11, backend).unsupported_reason()
    if refusal:  # a backend that cannot express the defaults says so (NATTEN: no bias table), as it must
        return Verdict(rule, "skip", f"not for the family's defaults: {refusal}")
    checked = []
    for phase in phases:
        module = _seeded(family, 11, backend)
        x = _random_input(size, torch.float32, 12)
        grad_out = _random_input(size, torch.float32, 13) if phase == "fwd+bwd" else None
        try:
            judged = accuracy(module, x, phase, grad_out)
        except Exception as exc:  # noqa: BLE001 - a backend that raises fails its rule, in one line
            return Verdict(rule, "fail", f"{phase}: {error_line(exc)}")
        reason = judged.mismatch_reason()
        if reason:
            return Verdict(rule, "fail", f"{phase} against float64: {reason}")
        checked.append(f"{phase} {judged.tensor} error {judged.rel:.1e} (bound {judged.bound:.1e})")
    return Verdict(rule, "pass", "; ".join(["float32", *checked, *unchecked]))


def _macs(family: str, size: int) -> Verdict:
    module = _seeded(family, 0)
    analytic = module.macs(1, size, size).total
    try:
        counted, unsupported, _ = count_macs_any_backend(module, _random_input(size, torch.float32, 0)[:1],
                                                         module.backend)
    except FlopCounterUnavailable as exc:
        return Verdict("macs", "skip", str(exc))
    if analytic <= 0 or abs(counted - analytic) > FLOP_TOLERANCE * analytic:
        return Verdict("macs", "fail", f"macs() {analytic:,} vs fvcore {counted:,} at {size}² "
                                       f"(uncounted ops: {dict(unsupported) or 'none'}); they must agree within "
                                       f"{FLOP_TOLERANCE:.0%}")
    return Verdict("macs", "pass", f"macs() {analytic:,} = fvcore {counted:,} at {size}², batch 1")


def _raises_naming(action: Callable[[], Any], *names: str) -> str | None:
    """None if ``action`` raises a ValueError whose message holds every one of ``names``, else what happened."""
    try:
        action()
    except ValueError as exc:
        missing = [name for name in names if name not in str(exc)]
        return f"the error does not name {', '.join(missing)}: {error_line(exc)}" if missing else None
    except Exception as exc:  # noqa: BLE001
        return f"raised {error_line(exc)}, not a ValueError (attentions.AttentionConfigError)"
    return "accepted"


def _bad_options(family: str) -> Verdict:
    problems = []
    build = attentions.build
    if (why := _raises_naming(lambda: build(family, dim=DIM + 1, num_heads=HEADS), str(DIM + 1))):
        problems.append(f"dim {DIM + 1} with {HEADS} heads: {why}")
    tried = 0
    for option, default in attentions.family_options(family).items():
        bad = BAD_KINDS.get(type(default))
        if bad is None:
            continue
        tried += 1
        if (why := _raises_naming(lambda: build(family, dim=DIM, num_heads=HEADS, **{option: bad}), option)):
            problems.append(f"{option}={bad!r}: {why}")
    if problems:
        return Verdict("bad options", "fail", "; ".join(problems))
    return Verdict("bad options", "pass", f"dim not divisible by the heads, and {tried} options of the wrong kind")


def _bad_input(family: str, size: int) -> Verdict:
    module = _seeded(family, 0)
    problems = []
    for what, x in (("a 3-D input", torch.randn(BATCH, size * size, DIM)),
                    (f"{DIM + 1} channels", torch.randn(BATCH, size, size, DIM + 1))):
        if (why := _raises_naming(lambda: module(x), str(tuple(x.shape)))):
            problems.append(f"{what}: {why}")
    if problems:
        return Verdict("bad input", "fail", "; ".join(problems))
    return Verdict("bad input", "pass", "a 3-D input and a wrong channel count")


def check_family(family: str) -> Conformance:
    """Every rule of the contract on a registered family (see the module docstring)."""
    try:
        size = _map_size(family)
    except Exception as exc:  # noqa: BLE001
        return Conformance(family, (Verdict("builds", "fail", f"with its defaults: {error_line(exc)}"),))
    if size is None:
        return Conformance(family, (Verdict("builds", "fail", f"its defaults take none of the maps {MAP_SIZES}"),))
    verdicts = [Verdict("builds", "pass", f"its defaults, dim {DIM}, {HEADS} heads, map {size}×{size}")]
    rules: list[tuple[str, Callable[[], Verdict]]] = [
        ("nhwc", lambda: _nhwc(family, size)), ("seeded", lambda: _seeded_forward(family, size)),
        ("gradients", lambda: _gradients(family, size)),
        *[(f"backend {backend}", lambda backend=backend: _backend(family, backend, size))
          for backend in attentions.list_attentions()[family]["backends"]],
        ("macs", lambda: _macs(family, size)), ("bad options", lambda: _bad_options(family)),
        ("bad input", lambda: _bad_input(family, size))]
    for name, rule in rules:
        try:
            verdicts.append(rule())
        except Exception as exc:  # noqa: BLE001 - a rule whose check raised is broken by the family, not the kit
            verdicts.append(Verdict(name, "fail", error_line(exc)))
    return Conformance(family, tuple(verdicts))


def families_of(spec: str) -> list[str]:
    """The families ``MODULE:NAME`` names (``MODULE`` alone: every family the module registers). The module is
    loaded as a plugin (its contract checked) unless it is already imported, the package ``attentions`` say."""
    module, _, family = spec.partition(":")
    if module in sys.modules:
        importlib.import_module(module)
        registered = [name for name, cls in attentions.registry._FAMILIES.items()
                      if cls.__module__ == module or cls.__module__.startswith(module + ".")]
    else:
        registered = list(load_plugin(module, "check-attention").families)
    if family:
        if family not in attentions.list_attentions():
            raise attentions.AttentionConfigError(
                f"{spec}: no family {family!r} is registered; {module} registers "
                f"{', '.join(map(repr, registered)) or 'none'}")
        return [family]
    if not registered:
        raise attentions.AttentionConfigError(f"{spec}: {module} registers no family")
    return registered


def assert_conforms(spec: str) -> None:
    """For a plugin's own tests: ``assert_conforms("my_attention:plain")`` fails with the table if a rule is broken."""
    for family in families_of(spec):
        result = check_family(family)
        assert result.passed, "\n" + result.table()
